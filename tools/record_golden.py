"""Record the digits demo build's manifest as the golden file that tests/test_golden.py compares against.

Run only when a change is meant to alter artifacts or manifest keys (say why in the commit):
    .venv/bin/python tools/record_golden.py
On a CPU whose torch.ao artifact bytes are not recorded yet (their calibration runs the CPU's float kernels, so
their bytes differ between CPUs), add this CPU's without touching the golden manifest:
    .venv/bin/python tools/record_golden.py --torch-bytes
The host's INT8 dot-product flags are fixed (VNNI present) so the recipe's "auto" choices do not depend on
the CPU that records or replays it.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from edgekit import hostinfo

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "data" / "golden" / "digits_manifest.json"
TORCH_BYTES = GOLDEN.with_name("torch_artifacts.json")
FIXED_CPU = {"model": "golden", "machine": "x86_64", "cores": 2, "isa": ["avx2", "avx512f", "avx512_vnni"]}


def golden_build(out: Path) -> dict:
    """The demo config built into ``out`` with the fixed CPU flags; returns the manifest as written."""
    from edgekit.cli.commands import demo_config
    from edgekit.config import parse_config
    from edgekit.pipeline import BuildOptions, build

    hostinfo.cpu = lambda: dict(FIXED_CPU)  # noqa: E731 - replay must see the same flags
    os.environ["EDGEKIT_CALIBRATION_CACHE"] = "none"  # every INT8 target collects its statistics, as tests/conftest.py
    build(parse_config(demo_config(), Path.cwd()), BuildOptions(out=out))
    return json.loads((out / "manifest.json").read_text())


def record_torch_bytes(manifest: dict) -> str:
    """Add this CPU's torch.ao artifact files (path, sha256, bytes) to TORCH_BYTES; returns the CPU's signature."""
    host = manifest["host"]
    cpu = f"{host['cpu']} [{' '.join(sorted(host['isa']))}]"  # as tests/test_golden.py cpu_signature
    recorded = json.loads(TORCH_BYTES.read_text()) if TORCH_BYTES.exists() else {}
    recorded[cpu] = {name: t["files"] for name, t in manifest["targets"].items()
                     if manifest["profiles"][name]["backend"] == "torch_ao"}
    TORCH_BYTES.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    return cpu


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        manifest = golden_build(Path(tmp) / "out")
    if "--torch-bytes" in sys.argv[1:]:
        print(f"recorded the torch.ao artifact bytes of {record_torch_bytes(manifest)} in {TORCH_BYTES}")
        return 0
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
