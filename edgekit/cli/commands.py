"""One function per subcommand; each returns the exit code."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from edgekit.config import load_config, parse_config
from edgekit.console import Console
from edgekit.errors import UsageError
from edgekit.manifest import Manifest, write_reports
from edgekit.pipeline import BuildOptions, build, revalidate
from edgekit.fsutil import atomic_write_text
from edgekit.readback import load_build
from edgekit.profiles import builtin_names, load_profile, profile_to_dict, profile_to_toml
from edgekit.report import read_report_data, text_table, undecided_notes
from edgekit.resources import calibration_dir


def demo_config() -> dict[str, Any]:
    """The bundled example as a config: every built-in target, the bundled calibration and validation data."""
    data = calibration_dir() / "digits"
    return {
        "model": {
            "source": "example:digits",
            "inputs": [{"name": "image", "shape": [1, 1, 8, 8], "dtype": "float32", "dynamic": {"0": "batch"}}],
            "outputs": ["logits"],
            "task": "classification",
        },
        "calibration": {"data": str(data / "calib.npz"), "samples": 256, "method": "minmax"},
        "validation": {"data": str(data / "val.npz"), "labels": "labels"},
        # The demo gates on the INT8 file size; the ratio `make demo` measures is in the README's demo table.
        "targets": {"use": builtin_names(), "ort-int8": {"gates": {"max_size_ratio": 0.35}}},
    }


def _finish(manifest: Manifest, out: Path, console: Console, record: str = "") -> int:
    for step in manifest.compress:  # what compression did, before the table that measures its result
        before, after = step.get("before", {}), step.get("after", {})
        console.result(
            f"compress {step.get('step')}. {step.get('method')}: params {before.get('params', '?'):,} -> {after.get('params', '?'):,}, "
            f"cosine vs uncompressed {after.get('cosine', float('nan')):.4f}"
            + (f", accuracy {after['accuracy']:.2f}%" if after.get("accuracy") is not None else "")
            + (f", ort-fp32 p50 {step['p50_speedup']:.2f}x" if step.get("p50_speedup") else "")
        )
    console.result(text_table(manifest.to_dict()))
    for name, r in manifest.results.items():
        if r.status in ("failed", "error", "unavailable"):
            console.note(f"{name}: {r.status}: {r.reason}")
    for note in undecided_notes(manifest.to_dict()):
        console.note(note)
    if record:  # a re-validation on other data, recorded beside the build's own record
        console.result(f"\nreport: {out / record / 'report.md'} (with plots: report.html)\n"
                       f"validation record: {out / record / 'validation.json'}")
    else:
        console.result(f"\nreport: {out / 'report.md'} (with plots: report.html)\nmanifest: {out / 'manifest.json'}")
    return manifest.exit_code


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    cfg = parse_config(demo_config(), Path.cwd())
    manifest = build(cfg, BuildOptions(out=args.out, targets=tuple(args.target)), console)
    return _finish(manifest, args.out.absolute(), console)


def cmd_build(args: argparse.Namespace, console: Console) -> int:
    if args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    cfg = load_config(args.config)
    if args.calibration_cache is not None and cfg.calibration is not None:  # the command line over [calibration] cache
        chosen = args.calibration_cache
        if not chosen.strip():
            raise UsageError("--calibration-cache is empty: give a folder, or none for no statistics cache")
        cache = False if chosen.strip().lower() == "none" else str(Path(chosen).expanduser().absolute())
        cfg = dataclasses.replace(cfg, calibration=dataclasses.replace(cfg.calibration, cache=cache))
    if args.weights_key is not None:
        if cfg.model.weights is None and not cfg.model.source.startswith("example:"):
            raise UsageError(f"--weights-key {args.weights_key!r}: the config's [model] has no 'weights' file")
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, weights_key=args.weights_key))
    from edgekit.publish import parse_publish  # [publish]: checked before the build, used after it

    target = parse_publish(cfg.raw["publish"], "[publish]") if "publish" in cfg.raw else None
    options = BuildOptions(out=args.out, targets=tuple(args.target), validate=not args.no_validate, strict=args.strict, jobs=args.jobs)
    manifest = build(cfg, options, console)
    code = _finish(manifest, args.out.absolute(), console)
    if target is not None:
        from edgekit.publish import publish

        index = publish(args.out, target.url, target.endpoint)
        console.result(f"published {len(index['files'])} file(s) to {target.url.rstrip('/')}/index.json")
    return code


def cmd_validate(args: argparse.Namespace, console: Console) -> int:
    if args.device_report is not None:
        from edgekit.bundle.merge import merge_device_report

        if args.target or args.data or args.against_torch:
            raise UsageError("--device-report merges one report; it takes no --target, --data or --against-torch")
        manifest, entry = merge_device_report(args.dir, args.device_report, console)
        return max(_finish(manifest, args.dir.absolute(), console), 1 if entry["verdict"] == "fail" else 0)
    manifest = revalidate(args.dir, tuple(args.target), args.data, console, against_torch=args.against_torch)
    return _finish(manifest, args.dir.absolute(), console, record=manifest.validation.get("record", ""))


def cmd_targets(args: argparse.Namespace, console: Console) -> int:
    from edgekit.backends import get_backend

    if args.action == "show":
        if not args.name:
            raise UsageError("`edgekit targets show` needs a NAME; `edgekit targets` lists them")
        profile = load_profile(args.name)
        avail = get_backend(profile.backend).availability(profile)
        if args.write is not None:
            atomic_write_text(args.write, profile_to_toml(profile))
            wrote = f"wrote {args.write}; edit it, then build with [targets.{args.name}] profile = \"{args.write}\""
            console.note(wrote) if args.json else console.result(wrote)
        if args.json:
            available = {"ok": avail.ok, "reason": avail.reason, "hint": avail.hint}
            console.result(json.dumps({**profile_to_dict(profile), "available_here": available}, indent=2))
        elif args.write is None:
            console.result(json.dumps(profile_to_dict(profile), indent=2))
            console.result(f"available here: {'yes' if avail.ok else 'no: ' + avail.reason}")
        return 0
    if args.name:
        raise UsageError(f"unexpected argument {args.name!r}; did you mean `edgekit targets show {args.name}`?")
    if args.json or args.write is not None:
        raise UsageError("--json and --write go with one profile: `edgekit targets show NAME --json`")
    rows = []
    for name in builtin_names():
        profile = load_profile(name)
        avail = get_backend(profile.backend).availability(profile)
        rows.append((name, profile.backend, profile.precision, "yes" if avail.ok else "no", profile.description))
    width = max(len(r[0]) for r in rows)
    console.result(f"{'name'.ljust(width)}  backend   precision  here  description")
    for name, backend, precision, here, desc in rows:
        console.result(f"{name.ljust(width)}  {backend:<8}  {precision:<9}  {here:<4}  {desc}")
    return 0


def cmd_inspect(args: argparse.Namespace, console: Console) -> int:
    from edgekit.inspect import describe

    console.result(describe(args.model))
    return 0


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    build = load_build(args.dir)
    write_reports(args.dir, build.to_dict(), read_report_data(args.dir, build.results))
    console.result(text_table(json.loads(json.dumps(build.to_dict(), default=str))))
    console.result(f"\nreport: {args.dir / 'report.md'}\nhtml report: {args.dir / 'report.html'}")
    return 0


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    from edgekit.compare import compare_models, render

    console.step(f"running {args.model_a.name} and {args.model_b.name} on the same inputs")
    console.result(render(compare_models(args.model_a, args.model_b, args.data)))
    return 0
