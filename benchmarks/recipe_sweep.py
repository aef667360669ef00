"""The measurements behind the ort recipes (targets/ort-int8*.toml): recipe variants on the benchmark models, on this host.

    .venv/bin/python benchmarks/recipe_sweep.py [--models resnet18_like,mobilenetv2_like,minilm] [--rounds 15]

For each model: edgekit's plain export (built with the ort-fp32 target only), then one QDQ / dynamic file per
variant; cosine against ONNX Runtime FP32 on the held-out inputs with ORT_ENABLE_ALL (fused INT8 kernels, what
users get) and ORT_DISABLE_ALL (exact arithmetic on the same graph), and p50 speedup over FP32 from interleaved
timing (one repeat; the published ratios are benchmarks/run.py's). Writes benchmarks/results/recipe_sweep.{json,md}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run  # noqa: E402  (data preparation, model configs, child-process builds)
import timing  # noqa: E402

SWEEP = run.WORK / "sweep"


def _reference(name: str) -> Path:
    out = SWEEP / name / "edgekit"
    ref = out / "reference" / "model.onnx"
    if not ref.is_file():
        cfg = run.MODELS[name].config()
        cfg["targets"] = {"use": ["ort-fp32"]}
        cfg_path = SWEEP / name / "config.json"
        cfg_path.parent.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(json.dumps(cfg))
        run._child([sys.executable, str(HERE / "subproc.py"), "edgekit", str(cfg_path), str(out)], f"export of {name}")
    return ref


def _static_variants(ref: Path) -> dict[str, dict[str, Any]]:
    import onnx

    nodes = [n.name for n in onnx.load(str(ref)).graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    stem_and_head = (nodes[0], nodes[-1])
    # each variant below the first two changes one thing from the row "without the FP32 stem"
    return {
        "edgekit ort-int8 (u8 act, s8 per-channel 7-bit weights, minmax, stem FP32)": {"fp32_input_layers": True},
        "without the FP32 stem": {},
        "8-bit weights (reduce_range off)": {"reduce_range": False},
        "u8 weights (u8 x u8 kernels)": {"weight_type": "uint8", "reduce_range": False},
        "s8 activations (s8 x s8 kernels)": {"activation_type": "int8", "reduce_range": False},
        "per-tensor weights": {"per_channel": False},
        "entropy calibration": {"_method": "entropy"},
        "percentile 99.99 calibration": {"_method": "percentile"},
        "classifier in FP32": {"_exclude": stem_and_head[1:]},
        "stem + classifier in FP32": {"_exclude": stem_and_head},
        "percentile + stem FP32": {"_method": "percentile", "fp32_input_layers": True},
    }


def build_static(ref: Path, out: Path, name: str, variant: dict[str, Any], cfg: dict[str, Any]) -> tuple[Path, float]:
    from edgekit.backends.base import CalibrationSettings
    from edgekit.backends.onnx.qdq import quantize_static_qdq
    from edgekit.backends.ort.recipe import OrtRecipe
    from edgekit.config import DataConfig
    from edgekit.data import open_feed
    from edgekit.types import TensorSpec

    v = dict(variant)
    method = v.pop("_method", "minmax")
    exclude = v.pop("_exclude", ())
    specs = tuple(TensorSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in cfg["model"]["inputs"])
    calib = open_feed(DataConfig(cfg["calibration"]["data"], samples=cfg["calibration"]["samples"]), specs, "calibration")
    dst = out / (hashlib.sha1(name.encode()).hexdigest()[:10] + ".onnx")
    start = time.perf_counter()
    recipe = OrtRecipe(mode="static", **v).qdq()
    if exclude:
        import onnxruntime.quantization as q

        original = q.quantize_static

        def patched(*a: Any, **k: Any) -> Any:  # name-level exclusions are not a recipe key; the sweep adds them here
            k["nodes_to_exclude"] = list(k.get("nodes_to_exclude") or []) + list(exclude)
            return original(*a, **k)

        q.quantize_static = patched
        try:
            quantize_static_qdq(ref, dst, calib, specs, CalibrationSettings(method=method, samples=calib.count(), percentile=99.99), recipe)
        finally:
            q.quantize_static = original
    else:
        quantize_static_qdq(ref, dst, calib, specs, CalibrationSettings(method=method, samples=calib.count(), percentile=99.99), recipe)
    return dst, time.perf_counter() - start


def build_dynamic(ref: Path, out: Path, name: str, variant: dict[str, Any], cfg: dict[str, Any]) -> tuple[Path, float]:
    from edgekit.backends.base import CalibrationSettings
    from edgekit.backends.ort.recipe import OrtRecipe
    from edgekit.backends.ort.dynamic import quantize_dynamic_int8
    from edgekit.config import DataConfig
    from edgekit.data import open_feed
    from edgekit.types import TensorSpec

    v = dict(variant)
    src = ref
    start = time.perf_counter()
    specs = tuple(TensorSpec(i["name"], (i["shape"][0] if "dynamic" not in i else "batch", *i["shape"][1:]), i["dtype"])
                  for i in cfg["model"]["inputs"])
    calib = open_feed(DataConfig(cfg["calibration"]["data"], samples=cfg["calibration"]["samples"]), specs, "calibration")
    dst = out / (hashlib.sha1(name.encode()).hexdigest()[:10] + ".onnx")
    notes = quantize_dynamic_int8(src, dst, OrtRecipe(mode="dynamic", **v), calib, specs, CalibrationSettings(samples=64))
    if notes.get("transformer_fusion", {}).get("applied"):
        FUSION_STATS.update(notes["transformer_fusion"]["fused"])
    return dst, time.perf_counter() - start


FUSION_STATS: dict[str, int] = {}  # what ONNX Runtime's transformer optimizer fused on the MiniLM export

FUSE = {"transformer_fusion": True}
DYNAMIC = {
    "edgekit ort-int8-dynamic (fusion, smoothing a 0.8 < 30 dB, FP32 fallback < 20 dB)":
        {**FUSE, "smooth_alpha": 0.8, "smooth_below_sqnr_db": 30.0, "fp32_fallback_sqnr_db": 20.0},
    "no fusion, no smoothing, FP32 fallback < 20 dB (the recipe before smoothing)": {"fp32_fallback_sqnr_db": 20.0},
    "no fusion, no smoothing, no fallback": {},
    "fusion only (everything quantized)": FUSE,
    "fusion, FP32 fallback < 20 dB, no smoothing": {**FUSE, "fp32_fallback_sqnr_db": 20.0},
    "fusion, smoothing a 0.5 < 30 dB": {**FUSE, "smooth_alpha": 0.5, "smooth_below_sqnr_db": 30.0},
    "fusion, smoothing a 0.9 < 30 dB": {**FUSE, "smooth_alpha": 0.9, "smooth_below_sqnr_db": 30.0},
    "fusion, smoothing a 0.8 < 25 dB": {**FUSE, "smooth_alpha": 0.8, "smooth_below_sqnr_db": 25.0},
    "fusion, smoothing a 0.8, every input": {**FUSE, "smooth_alpha": 0.8, "smooth_below_sqnr_db": 200.0},
    "edgekit recipe with 8-bit weights (reduce_range off)": {**FUSE, "smooth_alpha": 0.8, "fp32_fallback_sqnr_db": 20.0, "reduce_range": False},
    "edgekit recipe with per-tensor weights": {**FUSE, "smooth_alpha": 0.8, "fp32_fallback_sqnr_db": 20.0, "per_channel": False},
}


def sweep(name: str, rounds: int) -> dict[str, Any]:
    from edgekit.backends.onnx.session import session

    cfg = run.MODELS[name].config()
    ref = _reference(name)
    out = SWEEP / name / "variants"
    out.mkdir(parents=True, exist_ok=True)
    data = np.load(cfg["validation"]["data"])
    inputs = [i["name"] for i in cfg["model"]["inputs"]]
    n = min(32, len(data[inputs[0]]))
    feeds = [{k: data[k][i : i + 1] for k in inputs} for i in range(n)]
    variants = DYNAMIC if name == "minilm" else _static_variants(ref)
    builder = build_dynamic if name == "minilm" else build_static
    files: dict[str, Path] = {"FP32": ref}
    build_s: dict[str, float] = {}
    default = "ORT quantize_dynamic defaults" if name == "minilm" else "ORT quantize_static defaults"
    for vname, v in variants.items():
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {vname}", flush=True)
        files[vname], build_s[vname] = builder(ref, out, vname, v, cfg)
    kind = "ort-dynamic" if name == "minilm" else "ort-static"
    args = [kind, str(ref), str(out / "default.onnx")] + ([] if name == "minilm" else [cfg["calibration"]["data"], str(cfg["calibration"]["samples"])])
    build_s[default] = run._child([sys.executable, str(HERE / "subproc.py"), *args], default)["build_s"]
    files[default] = out / "default.onnx"

    def outputs(path: Path, optimize: bool) -> np.ndarray:
        s = session(str(path), 2, optimize=optimize, spinning=False)
        names = [i.name for i in s.get_inputs()]
        return np.concatenate([s.run(None, {k: f[k] for k in names})[0].reshape(1, -1) for f in feeds])

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))

    ref_out = outputs(ref, True)
    sessions = {k: session(str(p), 2, spinning=False) for k, p in files.items()}
    in_names = {k: [i.name for i in s.get_inputs()] for k, s in sessions.items()}
    t = timing.interleaved({k: (lambda s=s, k=k: s.run(None, {n_: feeds[0][n_] for n_ in in_names[k]})) for k, s in sessions.items()},
                           5, rounds, 2)
    base = float(np.median(t["FP32"]))
    rows = {}
    for k, p in files.items():
        rows[k] = {"cosine_enable_all": cos(ref_out, outputs(p, True)), "cosine_disable_all": cos(ref_out, outputs(p, False)),
                   "p50_ms": float(np.median(t[k]) * 1e3), "speedup": base / float(np.median(t[k])),
                   "build_s": build_s.get(k), "bytes": p.stat().st_size}
        print(f"  {k:70s} cos {rows[k]['cosine_enable_all']:.5f} / exact {rows[k]['cosine_disable_all']:.5f}  {rows[k]['speedup']:.2f}x", flush=True)
    return {"rows": rows, "samples": n, "rounds": rounds, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            **({"transformer_optimizer_fused": dict(FUSION_STATS)} if FUSION_STATS else {})}


def render(doc: dict[str, Any]) -> str:
    lines = ["# ort recipe sweep", "", f"`benchmarks/recipe_sweep.py --models <model>` on {doc['host']['model']} "
             f"(ISA {', '.join(doc['host']['isa'])}); each model's section gives the date it was swept. Cosine vs ONNX "
             "Runtime FP32 on held-out inputs; `exact` = the same file at ORT_DISABLE_ALL. Speedup: one interleaved repeat "
             "on a shared host (indicative; benchmarks/run.py publishes the real ratios).", ""]
    for model, res in doc["models"].items():
        lines += [f"## {model}", "", f"Swept {res.get('date', doc.get('date', '?'))}.", "", "| variant | cosine | cosine, exact arithmetic | p50 speedup vs FP32 | build s |", "|---|---|---|---|---|"]
        for k, r in res["rows"].items():
            b = "—" if r["build_s"] is None else f"{r['build_s']:.1f}"
            lines.append(f"| {k} | {r['cosine_enable_all']:.5f} | {r['cosine_disable_all']:.5f} | {r['speedup']:.2f}x | {b} |")
        if res.get("transformer_optimizer_fused"):
            lines += ["", "transformer_fusion (edgekit's rewrites, then onnxruntime.transformers.optimizer) made: "
                      + ", ".join(f"{k} x{v}" for k, v in res["transformer_optimizer_fused"].items()) + "."]
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18_like,mobilenetv2_like,minilm")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    from edgekit.hostinfo import cpu

    run.prepare_data()
    results = run.RESULTS / "recipe_sweep.json"
    doc = json.loads(results.read_text()) if results.is_file() else {"models": {}}  # models not swept now stay
    doc["host"] = cpu()
    for name in args.models.split(","):
        doc["models"][name] = sweep(name.strip(), args.rounds)
    run.RESULTS.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(doc, indent=1, default=str))
    (run.RESULTS / "recipe_sweep.md").write_text(render(doc))
    print(render(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
