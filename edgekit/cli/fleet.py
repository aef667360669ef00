"""`edgekit fleet`, `edgekit publish` and `edgekit fetch`: many models x targets on Ray, and S3-compatible storage."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgekit.console import Console


def add_parser(sub: Any) -> None:
    f = sub.add_parser("fleet", help="build many models x targets on Ray, cached by the sha256 of every input",
                       description="Build every (model, target) pair a FLEET.toml lists as one Ray task each (a local "
                       "Ray started and stopped here, or an existing cluster with --address / RAY_ADDRESS). Each "
                       "step's output is cached under the sha256 of its inputs: an unchanged pair is not rebuilt. "
                       "Writes one edgekit output folder per model, fleet.json, report.md and report.html.")
    f.add_argument("fleet", type=Path, metavar="FLEET.toml")
    f.add_argument("-o", "--out", type=Path, default=Path("fleet-dist"), help="output directory (default: ./fleet-dist)")
    f.add_argument("--address", metavar="ADDR", help="an existing Ray cluster, e.g. ray://head:10001 (default: RAY_ADDRESS, else a local Ray)")
    f.add_argument("--workers", type=int, metavar="N", help="tasks at once (default: the local cores, or the cluster's CPUs)")
    f.add_argument("--cache", type=Path, metavar="DIR", help="the step cache (default: OUT/.cache)")
    f.add_argument("--dry-run", action="store_true", help="say what would be rebuilt and why (which input changed); build nothing")
    f.add_argument("--strict", action="store_true", help="exit 3 before any work if a target cannot run on this host")
    f.add_argument("--no-publish", action="store_true", help="do not publish even if the fleet file has [publish]")
    f.set_defaults(run=cmd_fleet)

    p = sub.add_parser("publish", help="upload an output folder to S3-compatible storage (content-addressed, verified)",
                       description="Upload every file of DIR (an edgekit build or fleet output) to s3://bucket/prefix: "
                       "each file as an object named by its sha256, read back and checked, then an index.json written "
                       "last. Credentials come from the standard AWS chain only (AWS_* variables, ~/.aws).")
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("url", metavar="s3://bucket/prefix")
    p.add_argument("--endpoint", metavar="URL", help="an S3-compatible endpoint (MinIO, SeaweedFS...); default: AWS_ENDPOINT_URL(_S3) or AWS S3")
    p.set_defaults(run=cmd_publish)

    g = sub.add_parser("fetch", help="download a published build and check every sha256",
                       description="Download the build published at s3://bucket/prefix into DIR (moved into place only "
                       "when every file's sha256 matches the index); `edgekit validate DIR` then re-checks it.")
    g.add_argument("url", metavar="s3://bucket/prefix")
    g.add_argument("dir", type=Path, metavar="DIR")
    g.add_argument("--endpoint", metavar="URL", help="an S3-compatible endpoint; default: AWS_ENDPOINT_URL(_S3) or AWS S3")
    g.set_defaults(run=cmd_fetch)


def cmd_fleet(args: argparse.Namespace, console: Console) -> int:
    from edgekit.fleet import FleetOptions, load_fleet, run_fleet
    from edgekit.fleet.report import text_table

    spec = load_fleet(args.fleet)
    options = FleetOptions(out=args.out, cache=args.cache, address=args.address, workers=args.workers,
                           dry_run=args.dry_run, strict=args.strict)
    done = run_fleet(spec, options, console)
    if args.dry_run:
        for line in done.lines:
            console.result(line)
        return 0
    console.result(text_table(done.fleet))
    console.result(f"\n{done.fleet['rebuilt']} pair(s) rebuilt, {done.fleet['cached']} from the cache, "
                   f"{done.tasks} Ray task(s); report: {args.out.absolute() / 'report.md'}")
    if spec.publish is not None and not args.no_publish:
        _publish(args.out, spec.publish.url, spec.publish.endpoint, console)
    return done.exit_code


def _publish(root: Path, url: str, endpoint: str | None, console: Console) -> None:
    from edgekit.publish import publish

    index = publish(root, url, endpoint, lambda done, total, path: console.advance("uploading", done, total))
    console.result(f"published {len(index['files'])} file(s) to {url.rstrip('/')}/index.json")


def cmd_publish(args: argparse.Namespace, console: Console) -> int:
    _publish(args.dir, args.url, args.endpoint, console)
    return 0


def cmd_fetch(args: argparse.Namespace, console: Console) -> int:
    from edgekit.publish import fetch

    index = fetch(args.url, args.dir, args.endpoint, lambda done, total, path: console.advance("downloading", done, total))
    console.result(f"fetched {len(index['files'])} file(s) into {args.dir}, every sha256 checked")
    return 0
