"""Record the digits demo build's manifest as the golden file that tests/test_golden.py compares against.

Run only when a change is meant to alter artifacts or manifest keys (say why in the commit):
    .venv/bin/python tools/record_golden.py
The host's INT8 dot-product flags are fixed (VNNI present) so the recipe's "auto" choices do not depend on
the CPU that records or replays it.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from edgekit import hostinfo

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "data" / "golden" / "digits_manifest.json"
FIXED_CPU = {"model": "golden", "machine": "x86_64", "cores": 2, "isa": ["avx2", "avx512f", "avx512_vnni"]}


def golden_build(out: Path) -> dict:
    """The demo config built into ``out`` with the fixed CPU flags; returns the manifest as written."""
    from edgekit.cli.commands import demo_config
    from edgekit.config import parse_config
    from edgekit.pipeline import BuildOptions, build

    hostinfo.cpu = lambda: dict(FIXED_CPU)  # noqa: E731 - replay must see the same flags
    build(parse_config(demo_config(), Path.cwd()), BuildOptions(out=out))
    return json.loads((out / "manifest.json").read_text())


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        manifest = golden_build(Path(tmp) / "out")
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
