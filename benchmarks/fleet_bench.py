"""edgekit fleet's done-means, measured: 3 models (example:digits, the tests' ResNet-style CNN, an MLP) x 3 CPU
targets (ort-fp32, ort-int8, torch-fbgemm) on a local Ray started by edgekit, each run a fresh `edgekit fleet`
process (Ray start and stop included):

    A  --workers 2, empty cache: every pair built              -> first-run wall time
    B  the same again: every pair a cache hit                  -> B / A (goal < 0.2), Ray tasks run (goal 0)
    C  --workers 1, empty cache of its own                     -> C / A, artifacts byte-identical to A
    D  the MLP's weights changed (x1.01), on A's output and cache     -> exactly the MLP's 3 pairs rebuilt

    python benchmarks/fleet_bench.py [--work DIR]      # writes benchmarks/results/fleet.json
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["ort-fp32", "ort-int8", "torch-fbgemm"]

MLP = '''
import torch.nn as nn

def build():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
'''


def _resnet_source() -> str:
    """The ResNet-style CNN of tests/test_tensorrt.py, as the source text the tests write."""
    sys.path.insert(0, str(ROOT / "tests"))
    spec = importlib.util.spec_from_file_location("_trt_tests", ROOT / "tests" / "test_tensorrt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RESNET_NET


def _save_weights(source: Path, factory: str, out: Path, seed: int, scale: float = 1.0) -> None:
    import torch
    from safetensors.torch import save_file

    spec = importlib.util.spec_from_file_location(f"_bench_{source.stem}", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(seed)
    net = getattr(module, factory)()
    save_file({k: (v * scale).contiguous() for k, v in net.state_dict().items()}, str(out))


def make_fleet(work: Path) -> Path:
    from edgekit.resources import calibration_dir

    work.mkdir(parents=True, exist_ok=True)
    digits = calibration_dir() / "digits"
    (work / "resnet.py").write_text(_resnet_source())
    _save_weights(work / "resnet.py", "build", work / "resnet.safetensors", 0)
    (work / "mlp.py").write_text(MLP)
    _save_weights(work / "mlp.py", "build", work / "mlp.safetensors", 0)
    rng = np.random.default_rng(0)
    np.savez(work / "cnn_calib.npz", x=rng.standard_normal((64, 3, 16, 16)).astype(np.float32))
    np.savez(work / "cnn_val.npz", x=rng.standard_normal((48, 3, 16, 16)).astype(np.float32))
    fleet = f'''
[defaults]
targets = {{ use = {json.dumps(TARGETS)} }}

[[build]]
name = "digits"
[build.model]
source = "example:digits"
inputs = [ {{ name = "image", shape = [1, 1, 8, 8], dynamic = {{ 0 = "batch" }} }} ]
outputs = ["logits"]
task = "classification"
[build.calibration]
data = "{digits / 'calib.npz'}"
[build.validation]
data = "{digits / 'val.npz'}"
labels = "labels"

[[build]]
name = "resnet"
[build.model]
source = "resnet.py:build"
weights = "resnet.safetensors"
inputs = [ {{ name = "x", shape = [1, 3, 16, 16], dynamic = {{ 0 = "batch" }} }} ]
outputs = ["logits"]
task = "classification"
[build.calibration]
data = "cnn_calib.npz"
[build.validation]
data = "cnn_val.npz"

[[build]]
name = "mlp"
[build.model]
source = "mlp.py:build"
weights = "mlp.safetensors"
inputs = [ {{ name = "image", shape = [1, 1, 8, 8], dynamic = {{ 0 = "batch" }} }} ]
outputs = ["logits"]
task = "classification"
[build.calibration]
data = "{digits / 'calib.npz'}"
[build.validation]
data = "{digits / 'val.npz'}"
labels = "labels"
'''
    (work / "fleet.toml").write_text(fleet)
    return work / "fleet.toml"


def run(fleet: Path, out: Path, workers: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgekit", "-q", "fleet", str(fleet), "-o", str(out), "--workers",
                           str(workers)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"edgekit fleet exited {proc.returncode}: {proc.stderr[-2000:]}")
    fleet_json = json.loads((out / "fleet.json").read_text())
    return {"wall_seconds": round(wall, 2), "exit_code": proc.returncode, "tasks": fleet_json["tasks"],
            "rebuilt": sorted(f"{p['model']} x {p['target']}" for p in fleet_json["pairs"] if p["rebuilt"]),
            "cached": fleet_json["cached"], "statuses": {f"{p['model']} x {p['target']}": p["status"] for p in fleet_json["pairs"]}}


def artifacts(out: Path) -> dict[str, str]:
    files = [p for p in sorted(out.rglob("*")) if p.is_file() and ".cache" not in p.parts
             and p.parent.name in (*TARGETS, "reference") and p.name != "metrics.json"]
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "fleet")
    ap.add_argument("--result", type=Path, default=ROOT / "benchmarks" / "results" / "fleet.json")
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    fleet = make_fleet(args.work)
    a = run(fleet, args.work / "out-w2", 2)
    digests_a = artifacts(args.work / "out-w2")
    b = run(fleet, args.work / "out-w2", 2)
    c = run(fleet, args.work / "out-w1", 1)
    digests_c = artifacts(args.work / "out-w1")
    _save_weights(args.work / "mlp.py", "build", args.work / "mlp.safetensors", 0, scale=1.01)  # a "retrained" MLP
    d = run(fleet, args.work / "out-w2", 2)
    from edgekit.manifest import host_info

    result = {
        "command": "python benchmarks/fleet_bench.py",
        "host": {**host_info(), "python": platform.python_version(),
                 "note": "2 cores shared with other jobs while measured: compare ratios, not absolute seconds"},
        "fleet": {"models": ["digits (example:digits)", "resnet (tests' ResNet-style CNN, 1x3x16x16)", "mlp"],
                  "targets": TARGETS},
        "first_run_workers_2": a,
        "second_run_unchanged": b,
        "second_over_first": round(b["wall_seconds"] / a["wall_seconds"], 3),
        "first_run_workers_1": c,
        "workers_1_over_workers_2": round(c["wall_seconds"] / a["wall_seconds"], 3),
        "workers_1_vs_2_byte_identical": digests_a == digests_c,
        "artifact_files_compared": len(digests_a),
        "mlp_weights_changed": d,
        "mlp_change_rebuilt_exactly_mlp": d["rebuilt"] == sorted(f"mlp x {t}" for t in TARGETS),
    }
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=2))
    for name in ("first_run_workers_2", "second_run_unchanged", "first_run_workers_1", "mlp_weights_changed"):
        r = result[name]
        print(f"{name}: {r['wall_seconds']} s, {r['tasks']} tasks, {len(r['rebuilt'])} rebuilt, exit {r['exit_code']}")


if __name__ == "__main__":
    main()
