"""Recovery (docs/recovery.md) of the INT8 targets other than ort-int8 (tensorrt-int8 on its host proxy, the dynamic
and the torch.ao ones) on the tests' small models (the seeded MobileNetV2-style CNN and ViT-style transformer of
tests/small_models.py, the issue's models), against ort-fp32 in the same build. Per model and target: the original cosine, the chosen candidate, the validator's cosine and
speed-up after recovery, the recovery's seconds, and every attempt.

    .venv/bin/python benchmarks/recover_backends_bench.py                       # mbv2 and vit, budget 180 s
    .venv/bin/python benchmarks/recover_backends_bench.py --models vit --budget 300 --targets torch-fbgemm --result x.json

Writes benchmarks/results/recover_backends.json (or --result).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

# as `edgekit build` on the command line runs (edgekit/cli/main.py, docs/gates.md "How latency is timed"): torch's
# OpenMP workers sleep between calls, set before torch loads (tests/small_models.py imports it). Before this line
# the benchmark timed torch with spinning workers, which no user of the command line gets: on these 0.3 ms models
# torch-fbgemm measured 0.37x (mbv2) and 1.0x (vit) spinning, 0.11x and 0.30x sleeping.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
TARGETS = ("tensorrt-int8", "ort-int8-dynamic", "torch-fbgemm", "torch-qnnpack")
MODELS = HERE.parent / "tests" / "small_models.py"  # the tests' models, loaded by path (tests/ is no package)


def _config(model: str, budget: float, chosen: tuple[str, ...] = TARGETS) -> str:
    targets = ["ort-fp32", *chosen]
    lines = [f'[model]\nsource = "net.py:{model}"\nweights = "{model}.safetensors"',
             'inputs = [ { name = "x", shape = [1, 3, 32, 32] } ]\noutputs = ["logits"]',
             '[calibration]\ndata = "calib.npz"\n[validation]\ndata = "val.npz"',
             f"[targets]\nuse = {json.dumps(targets)}"]
    for t in targets:
        lines.append(f"[targets.{t}.runtime]\nwarmup = 5\nruns = 40")
    for t in chosen:
        lines.append(f"[targets.{t}.recover]\nbudget_s = {budget:g}")
    return "\n".join(lines) + "\n"


def _prepare(root: Path) -> None:
    """tests/small_models.py's write_sandbox: net.py, both models' weights, calibration and validation data."""
    spec = importlib.util.spec_from_file_location("_bench_small_models", MODELS)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.write_sandbox(root)


def bench_model(root: Path, model: str, budget: float, chosen: tuple[str, ...] = TARGETS) -> dict[str, Any]:
    from edgekit.cli import main

    (root / f"{model}.toml").write_text(_config(model, budget, chosen))
    start = time.monotonic()
    code = main(["build", str(root / f"{model}.toml"), "-o", str(root / model)])
    seconds = time.monotonic() - start
    manifest = json.loads((root / model / "manifest.json").read_text())
    out: dict[str, Any] = {"exit_code": code, "build_seconds": round(seconds, 1), "targets": {}}
    for t in chosen:
        r = manifest["targets"][t]
        rec = r.get("recovery")
        out["targets"][t] = {
            "status": r["status"],
            "reason": r.get("reason"),
            "cosine": r["metrics"]["vs_torch"]["worst"]["cosine"] if r.get("metrics") else None,
            "speedup": (r.get("latency") or {}).get("speedup_vs_ort_fp32"),
            "original_cosine": rec["attempts"][0]["cosine"] if rec else None,
            "recovery": None if rec is None else {
                "met": rec["met"], "seconds": rec["seconds"], "chosen": rec["chosen"],
                "attempts": [{k: a[k] for k in ("step", "change", "cosine", "speedup", "seconds", "gates_passed", "excluded")}
                             for a in rec["attempts"]]},
        }
    return out


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mbv2", "vit"], choices=["mbv2", "vit"])
    parser.add_argument("--budget", type=float, default=180.0)
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    parser.add_argument("--result", default="recover_backends.json", help="file name under benchmarks/results/")
    args = parser.parse_args()
    import subprocess
    import sys

    from edgekit.hostinfo import cpu

    # the commit (run.py's _commit would import the whole benchmark harness)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True)

    results: dict[str, Any] = {"host": {"machine": platform.machine(), "cpus": os.cpu_count(), "cpu": _cpu(),
                                        "isa": cpu().get("isa"), "commit": head.stdout.strip() or None, "load_before": os.getloadavg()},
                               "command": ".venv/bin/python benchmarks/recover_backends_bench.py " + " ".join(sys.argv[1:]),
                               "budget_s": args.budget, "models": {}}
    with tempfile.TemporaryDirectory(prefix="edgekit-recover-backends-") as tmp:
        root = Path(tmp)
        _prepare(root)
        for model in args.models:
            results["models"][model] = bench_model(root, model, args.budget, tuple(args.targets))
    results["host"]["load_after"] = os.getloadavg()
    dst = HERE / "results" / args.result
    dst.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main_()
