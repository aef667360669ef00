"""End-to-end check of a model over protobuf's 2 GB limit (`make check-large`; not part of `make test`: it needs about
12 GB of disk, 20 GB of memory and, on 2 cores, half an hour or more; docs/limits.md has the measured figures).

    .venv/bin/python tools/check_large.py [--work DIR] [--targets ort-fp32,ort-int8-dynamic,...] [--keep] [--result F]

A synthetic MLP of four 8192x16384 / 16384x8192 Linear layers (2.15 GB of float32 weights) is built with `edgekit
build` (every built-in target by default; a [bundle] of ort-int8-dynamic), then `edgekit validate` re-checks every
sha256, external data files included. Passes when: the build exits 0 or 1 (a gate may fail, nothing may crash);
every target is built (passed or failed its gates) or reported unavailable with the reason, never an error; the
reference and every ONNX artifact list their external data file with its sha256; validate exits 0 or 1 on the
untouched folder and 2 once an external data file is changed. Writes the run time and peak RSS of each step to benchmarks/results/large.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EDGEKIT = [sys.executable, "-m", "edgekit"]
HIDDEN, WIDE = 8192, 16384

MODEL = f'''
import torch
from torch import nn


class Large(nn.Module):
    """Four Linear layers, {HIDDEN}x{WIDE} and back, twice: 2^31 bytes of weights plus the biases."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear({HIDDEN}, {WIDE}), nn.ReLU(), nn.Linear({WIDE}, {HIDDEN}), nn.ReLU(),
                                    nn.Linear({HIDDEN}, {WIDE}), nn.ReLU(), nn.Linear({WIDE}, {HIDDEN}))

    def forward(self, x):
        return self.layers(x)


def build():
    torch.manual_seed(0)
    with torch.no_grad():
        model = Large()
        for layer in model.layers:
            if isinstance(layer, nn.Linear):  # small weights so the activations stay O(1) through four layers
                layer.weight.normal_(0.0, layer.in_features ** -0.5)
    return model
'''


def _config(work: Path, targets: list[str]) -> str:
    use = json.dumps(targets)
    lines = [
        "[model]", 'source = "large.py:build"', f'inputs = [ {{ name = "x", shape = [1, {HIDDEN}], dynamic = {{ 0 = "batch" }} }} ]',
        'task = "embedding"', "", "[calibration]", 'data = "calib.npz"', "batch_size = 4", "",
        "[validation]", 'data = "val.npz"', "batch_size = 4", "", "[targets]", f"use = {use}", "",
    ]
    for t in targets:
        lines += [f"[targets.{t}.runtime]", "warmup = 1", "runs = 5", ""]
    if "ort-int8-dynamic" in targets:
        lines += ["[bundle]", "samples = 2", 'targets = ["ort-int8-dynamic"]', ""]
    return "\n".join(lines)


def _run(step: str, cmd: list[str], cwd: Path, log: Path) -> dict:
    """Run one edgekit command as a child; its wall time and peak RSS (the child's maxrss, in MiB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(f"{step}: exit {proc.returncode} in {seconds:.0f} s, peak RSS {peak / 1024:.0f} MiB"
          + (" (the largest child so far)" if peak == before else ""), flush=True)
    return {"exit": proc.returncode, "seconds": round(seconds, 1), "peak_rss_mib": round(peak / 1024)}


def main(argv: list[str] | None = None) -> int:
    from edgekit.profiles import builtin_names

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="working folder (default: a new folder under $TMPDIR)")
    parser.add_argument("--targets", default=",".join(builtin_names()), help="comma-separated targets (default: all built-in)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (about 10 GB)")
    parser.add_argument("--result", type=Path, default=ROOT / "benchmarks" / "results" / "large.json",
                        help="where the run time, peak memory and per-target outcome are written (default: %(default)s)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="edgekit-large-"))
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    if free < 12 << 30:
        print(f"check-large: {work} has {free / 2**30:.1f} GiB free; it needs about 12 GiB", file=sys.stderr)
        return 2
    targets = [t for t in args.targets.split(",") if t]
    (work / "large.py").write_text(MODEL)
    rng = np.random.default_rng(0)
    np.savez(work / "calib.npz", x=rng.standard_normal((8, HIDDEN)).astype(np.float32))
    np.savez(work / "val.npz", x=rng.standard_normal((8, HIDDEN)).astype(np.float32))
    (work / "cfg.toml").write_text(_config(work, targets))
    log = work / "check_large.log"
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    env_note = {"cpu": _cpu(), "cores": os.cpu_count()}
    steps = {"build": _run("build", [*EDGEKIT, "build", "cfg.toml", "-o", "out"], work, log)}
    problems: list[str] = []
    if steps["build"]["exit"] not in (0, 1):
        problems.append(f"edgekit build exited {steps['build']['exit']} (see {log})")
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").is_file() else {}
    targets_seen: dict[str, dict] = {}
    if manifest:
        ref = manifest["reference"]
        weights = sum(f["bytes"] for f in ref.get("data_files", []))
        if not ref.get("data_files"):
            problems.append("the reference has no external data file in the manifest")
        for name, t in manifest["targets"].items():
            files = [f["path"] for f in t["files"]]
            targets_seen[name] = {"status": t["status"], "reason": t["reason"], "files": files,
                                  "bytes": sum(f["bytes"] for f in t["files"]), "build_seconds": t.get("build_seconds"),
                                  "cosine": (t["metrics"].get("vs_onnx") or {}).get("worst", {}).get("cosine")}
            if t["status"] in ("failed", "unavailable", "error") and not t["reason"]:
                problems.append(f"{name}: {t['status']} without a reason")
            if t["status"] == "error":  # built, or unavailable at this size with the reason: never a crash
                problems.append(f"{name}: error: {t['reason'][:200]}")
            onnx_files = [p for p in files if p.endswith(".onnx")]
            if onnx_files and not any(p.endswith(".onnx.data") for p in files) and t["status"] != "error":
                problems.append(f"{name}: an ONNX artifact without its external data file in the manifest")
        steps["validate"] = _run("validate", [*EDGEKIT, "validate", "out"], work, log)
        if steps["validate"]["exit"] not in (0, 1):
            problems.append(f"edgekit validate exited {steps['validate']['exit']} on the untouched build")
        data = out / "reference" / "model.onnx.data"
        if data.is_file():
            with open(data, "r+b") as fh:  # one byte in the middle of the weights
                fh.seek(data.stat().st_size // 2)
                byte = fh.read(1)
                fh.seek(-1, 1)
                fh.write(bytes([byte[0] ^ 0xFF]))
            tampered = _run("validate after tampering", [*EDGEKIT, "validate", "out"], work, log)
            steps["validate_tampered"] = tampered
            if tampered["exit"] != 2:
                problems.append(f"validate exited {tampered['exit']} after reference/model.onnx.data was changed (expected 2)")
        result = {"model": f"MLP 4 x Linear ({HIDDEN}<->{WIDE}), {weights / 1e9:.2f} GB of float32 weights",
                  "reference": {"simplified": ref["simplified"], "simplify_note": ref["simplify_note"],
                                "files": [ref["file"]["path"], *(f["path"] for f in ref.get("data_files", []))]},
                  "steps": steps, "targets": targets_seen, "host": env_note, "problems": problems,
                  "versions": manifest.get("versions", {})}
    else:
        problems.append(f"no manifest.json was written (see {log})")
        result = {"steps": steps, "problems": problems, "host": env_note}
    from edgekit.fsutil import atomic_write_json

    atomic_write_json(args.result, result)
    for name, t in targets_seen.items():
        print(f"  {name:<18} {t['status']:<11} {t['bytes'] / 1e9:6.2f} GB  {t['reason'][:110]}")
    print("check-large: " + ("PASS" if not problems else "FAIL: " + "; ".join(problems)))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not problems else 1


def _cpu() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "unknown")
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{name} ({' '.join(isa)})"


if __name__ == "__main__":
    sys.exit(main())
