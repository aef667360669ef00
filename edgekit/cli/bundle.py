"""`edgekit bundle DIR` (a golden-I/O bundle per target, with verify.py) and `edgekit verify BUNDLE` (on the device)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgekit.console import Console


def add_parser(sub: Any) -> None:
    b = sub.add_parser("bundle", help="write a device bundle per target: artifact, golden I/O, tolerances, verify.py",
                       description="For each target of a built DIR (sha256-checked first), write OUT/<target>/ and "
                       "OUT/<target>.tar.gz: the artifact, golden inputs (validation samples plus the largest and "
                       "smallest-magnitude ones), the FP32 reference's and the artifact's own outputs on this host, "
                       "bundle.json (tolerances from the target's gates, sha256 of every file, this host) and verify.py, "
                       "which runs on the device with only numpy and the artifact's runtime.")
    b.add_argument("dir", type=Path, metavar="DIR")
    b.add_argument("--target", action="append", default=[], metavar="NAME", help="only this target (repeatable)")
    b.add_argument("-o", "--out", type=Path, metavar="OUT", help="where the bundles go (default: DIR/bundles)")
    b.add_argument("--samples", type=int, default=32, metavar="N", help="validation samples carried (default 32)")
    b.set_defaults(run=run_bundle)

    v = sub.add_parser("verify", help="verify a bundle on this device (same as: python BUNDLE/verify.py)",
                       description="Check every sha256 of BUNDLE, say whether this CPU suits the artifact's recipe, run "
                       "the golden inputs on this device's runtime, compare with the expected outputs using the "
                       "bundle's tolerances, time it, and write device-report.json. Exit 0 within tolerance, 1 outside, "
                       "2 bad bundle or missing runtime.")
    v.add_argument("bundle", metavar="BUNDLE", help="a bundle folder or its .tar.gz")
    v.add_argument("--runs", type=int, metavar="N", help="timed runs (default: the profile's, at most 100)")
    v.add_argument("--warmup", type=int, metavar="W", help="warm-up runs (default: the profile's, at most 10)")
    v.add_argument("--threads", type=int, metavar="T", help="intra-op threads (default: the profile's)")
    v.add_argument("--json", type=Path, metavar="OUT", help="write the report here (default: BUNDLE/device-report.json)")
    v.set_defaults(run=run_verify)


def run_bundle(args: argparse.Namespace, console: Console) -> int:
    from edgekit.bundle.make import write_bundles

    for w in write_bundles(args.dir, args.out, tuple(args.target), args.samples, console):
        console.result(f"{w.target}: {w.folder}/  {w.archive}")
    return 0


def run_verify(args: argparse.Namespace, console: Console) -> int:
    from edgekit.bundle import verify

    argv = [str(args.bundle)]
    for flag in ("runs", "warmup", "threads", "json"):
        if getattr(args, flag) is not None:
            argv += [f"--{flag}", str(getattr(args, flag))]
    return verify.main(argv)
