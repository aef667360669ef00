"""Compression measurements of issue 4, each one `edgekit build` run: ResNet prune, digits prune+distill, MiniLM low-rank.

    .venv/bin/python benchmarks/compress_bench.py [--only resnet,digits,minilm] [--keep DIR] [--render-only]

Writes benchmarks/results/compress.json (every number, configs, host, versions) and compress.md (a BENCHMARKS.md fragment).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
THIS = Path(__file__).resolve()

# The models and sentences are the shared benchmark ones (benchmarks/models.py, benchmarks/sentences.py), so these
# numbers sit beside the quantization tables of BENCHMARKS.md on the same ResNet-18-like CNN and MiniLM.
sys.path.insert(0, str(THIS.parent))
import models as bench_models  # noqa: E402
import sentences as bench_sentences  # noqa: E402

MODELS = THIS.parent / "models.py"


# ------------------------------------------------------------------------------------------- builds


def _build(config: str, work: Path, name: str) -> dict[str, Any]:
    """One `edgekit build` of ``config`` in ``work``; returns the manifest and the wall time."""
    from edgekit.config import load_config
    from edgekit.console import Console
    from edgekit.pipeline import BuildOptions, build

    (work / f"{name}.toml").write_text(config)
    start = time.perf_counter()
    manifest = build(load_config(work / f"{name}.toml"), BuildOptions(out=work / f"out-{name}"), Console())
    return {"manifest": manifest.to_dict(), "seconds": round(time.perf_counter() - start, 1), "config": config}


def _stage(step: dict[str, Any], key: str) -> dict[str, Any]:
    keep = ("params", "onnx_params", "onnx_bytes", "p50_ms", "p90_ms", "cosine", "min_cosine", "top1_agreement", "accuracy")
    return {k: step[key][k] for k in keep if k in step[key]}


def bench_resnet(work: Path) -> dict[str, Any]:
    weights = work / "resnet18_like.safetensors"
    bench_models.make_cnn_weights("resnet18_like", weights)
    np.savez(work / "resnet_val.npz", image=bench_models.random_crops(32, seed=1234))
    config = f"""
[model]
source = "{MODELS}:resnet18_like"
weights = "{weights}"
inputs = [ {{ name = "image", shape = [1, 3, 224, 224] }} ]
outputs = ["logits"]

[[compress]]
method = "prune"
amount = 0.5          # half the output channels of every prunable Conv2d / Linear (residual-tied groups together)
structured = true
criterion = "l1"

[validation]
data = "{work / 'resnet_val.npz'}"

[targets]
use = ["ort-fp32"]
"""
    run = _build(config, work, "resnet")
    step = run["manifest"]["compress"][0]
    before, after = _stage(step, "before"), _stage(step, "after")
    fewer = 1.0 - after["onnx_params"] / before["onnx_params"]
    return {
        "what": "ResNet-18-like CNN (benchmarks/models.py: torchvision-style init, BatchNorm statistics from photo crops), "
                "1x3x224x224, structured L1 pruning amount 0.5",
        "before": before, "after": after, "details": step["details"], "measured_on": step["measured_on"],
        "onnx_params_fewer": round(fewer, 4), "p50_speedup": step["p50_speedup"],
        "criteria": {"onnx_params_fewer >= 0.40": fewer >= 0.40, "p50_speedup >= 1.5": step["p50_speedup"] >= 1.5},
        "exit_code": run["manifest"]["exit_code"], "build_seconds": run["seconds"], "config": config,
    }


def digits_train_npz(path: Path) -> int:
    """The training split tools/train_digits.py trained on (val.npz is its held-out complement), with labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    val = np.load(ROOT / "calibration" / "digits" / "val.npz")
    if not (np.array_equal(val["image"], x_val) and np.array_equal(val["labels"], y_val)):
        raise SystemExit("calibration/digits/val.npz is not the held-out split tools/train_digits.py made")
    np.savez_compressed(path, image=x_train, labels=y_train)
    return len(x_train)


def bench_digits(work: Path, epochs: int) -> dict[str, Any]:
    from edgekit.config import DataConfig
    from edgekit.data import open_feed, overlap
    from edgekit.types import TensorSpec

    train_count = digits_train_npz(work / "digits_train.npz")
    data = ROOT / "calibration" / "digits"
    spec = (TensorSpec("image", ("batch", 1, 8, 8)),)
    shared = overlap(open_feed(DataConfig(str(work / "digits_train.npz")), spec, "train"),
                     open_feed(DataConfig(str(data / "val.npz")), spec, "validation"))
    config = f"""
[model]
source = "example:digits"
inputs = [ {{ name = "image", shape = [1, 1, 8, 8], dynamic = {{ 0 = "batch" }} }} ]
outputs = ["logits"]
task = "classification"

[[compress]]
method = "prune"
amount = 0.5
structured = true

[[compress]]
method = "distill"
epochs = {epochs}
lr = 0.001
temperature = 4.0
alpha = 0.9
batch_size = 32

[train]
data = "{work / 'digits_train.npz'}"
labels = "labels"

[calibration]
data = "{data / 'calib.npz'}"
samples = 256

[validation]
data = "{data / 'val.npz'}"
labels = "labels"

[targets]
use = ["ort-fp32", "ort-int8", "ort-int8-dynamic"]
"""
    run = _build(config, work, "digits")
    m = run["manifest"]
    prune, distill = m["compress"]
    unpruned = prune["before"]["accuracy"]
    final = distill["after"]["accuracy"]
    targets = {
        name: {"status": t["status"], "reason": t["reason"], "accuracy": t["metrics"].get("accuracy"),
               "cosine_vs_compressed": t["metrics"].get("vs_torch", {}).get("worst", {}).get("cosine"),
               "p50_ms": t["latency"].get("p50_ms"), "bytes": t["size"].get("bytes"),
               "gates": [g["message"] for g in t["gates"]]}
        for name, t in m["targets"].items()
    }
    int8 = ("ort-int8", "ort-int8-dynamic")
    return {
        "what": f"digits CNN (example:digits): structured prune 0.5, then distill {epochs} epochs on the sklearn training split",
        "train_samples": train_count, "train_validation_overlap": shared,
        "stages": {"uncompressed": _stage(prune, "before"), "pruned": _stage(prune, "after"), "distilled": _stage(distill, "after")},
        "uncompressed_torch_accuracy": prune["measured_on"].get("uncompressed_torch_accuracy"),
        "distill": distill["details"], "prune": prune["details"], "targets": targets,
        "accuracy_drop_points": round(unpruned - final, 4),
        "criteria": {
            "accuracy within 1.5 points of unpruned FP32": unpruned - final <= 1.5,
            "ort-int8 and ort-int8-dynamic pass their gates": all(targets[n]["status"] == "passed" for n in int8),
        },
        "exit_code": m["exit_code"], "build_seconds": run["seconds"], "config": config,
    }


def bench_minilm(work: Path) -> dict[str, Any]:
    np.savez(work / "sentences.npz", **bench_models.tokenize(bench_sentences.HELD_OUT))
    seq = bench_models.MINILM_SEQ
    config = f"""
[model]
source = "{MODELS}:minilm"
inputs = [
  {{ name = "input_ids", shape = [1, {seq}], dtype = "int64", dynamic = {{ 0 = "batch" }} }},
  {{ name = "attention_mask", shape = [1, {seq}], dtype = "int64", dynamic = {{ 0 = "batch" }} }},
]
outputs = ["sentence_embedding"]   # not "embedding": the dynamo exporter already names a value so
task = "embedding"

[[compress]]
method = "low_rank"
rank_ratio = 0.5
layer_types = ["Linear"]
include = ["*.intermediate.dense", "*.output.dense"]   # the feed-forward pair of each of the 6 layers
exclude = ["*.attention.*"]                              # not the attention output projection

[validation]
data = "{work / 'sentences.npz'}"
batch_size = 8

[targets]
use = ["ort-fp32"]
"""
    run = _build(config, work, "minilm")
    step = run["manifest"]["compress"][0]
    before, after = _stage(step, "before"), _stage(step, "after")
    return {
        "what": f"all-MiniLM-L6-v2 mean-pooled sentence embeddings (benchmarks/models.py), seq {seq}, "
                "low_rank rank_ratio 0.5 on the 12 feed-forward Linear layers",
        "sentences": len(bench_sentences.HELD_OUT), "seq": seq, "before": before, "after": after, "details": step["details"],
        "measured_on": step["measured_on"], "p50_speedup": step["p50_speedup"],
        "params_fewer": round(1.0 - after["params"] / before["params"], 4),
        "onnx_bytes_fewer": round(1.0 - after["onnx_bytes"] / before["onnx_bytes"], 4),
        "exit_code": run["manifest"]["exit_code"], "build_seconds": run["seconds"], "config": config,
    }


# ------------------------------------------------------------------------------------------- output


def markdown(results: dict[str, Any]) -> str:
    host = results["host"]
    lines = [
        "## Compression (issue 4)",
        "",
        f"Host: {host.get('cpu', '?')}, {host.get('cores', '?')} cores; torch {results['versions']['torch']}, "
        f"onnxruntime {results['versions']['onnxruntime']}. Each row is one `edgekit build` run; \"before\" and \"after\" "
        "are the step's own measurements in that run: the reference ONNX exported before and after the step, timed on "
        "ONNX Runtime FP32 (2 threads, batch 1, interleaved runs), error against the uncompressed torch model. "
        "Reproduce: `.venv/bin/python benchmarks/compress_bench.py`.",
        "",
    ]
    loads = {n: results[n]["load_average_1min"] for n in ("resnet", "digits", "minilm") if "load_average_1min" in results.get(n, {})}
    if loads:
        lines += ["1-minute load average of the host around each run (other jobs share the 2 cores: interleaved timing keeps "
                  "the before/after ratio fair, the absolute ms are inflated when it is high): "
                  + ", ".join(f"{n} {v['start']} → {v['end']}" for n, v in loads.items()) + ".", ""]
    if "resnet" in results:
        r = results["resnet"]
        b, a = r["before"], r["after"]
        lines += [
            "### ResNet-18-like CNN, 224x224: structured pruning, amount 0.5",
            "",
            "| | params (torch) | params (ONNX) | ONNX MB | ort-fp32 p50 ms | p90 ms |",
            "|---|---|---|---|---|---|",
            f"| unpruned | {b['params']:,} | {b['onnx_params']:,} | {b['onnx_bytes'] / 1e6:.1f} | {b['p50_ms']:.2f} | {b['p90_ms']:.2f} |",
            f"| pruned | {a['params']:,} | {a['onnx_params']:,} | {a['onnx_bytes'] / 1e6:.1f} | {a['p50_ms']:.2f} | {a['p90_ms']:.2f} |",
            "",
            f"{100 * r['onnx_params_fewer']:.1f}% fewer ONNX parameters (bar: >= 40%), ort-fp32 p50 {r['p50_speedup']:.2f}x faster "
            f"(bar: >= 1.5x); channels {r['details']['channels_before']} -> {r['details']['channels_after']}, "
            f"kept whole: {', '.join(r['details']['protected']) or 'none'} (feeds the model output). Logit cosine against the "
            f"unpruned model on {r['measured_on']['samples']} photo crops: {a['cosine']:.3f} (worst {a['min_cosine']:.3f}), without "
            "fine-tuning; the weights are untrained (no ImageNet weights here), so that says little about a trained model. "
            + ("**Both bars met.**" if all(r["criteria"].values()) else f"**Bars: {r['criteria']}**"),
            "",
        ]
    if "digits" in results:
        d = results["digits"]
        s = d["stages"]
        lines += [
            f"### Digits CNN: structured prune 0.5, then distill {d['distill']['epochs']} epochs",
            "",
            f"Training data: the {d['train_samples']} images of scikit-learn's digits training split (the split "
            f"`tools/train_digits.py` made; {d['train_validation_overlap']} shared with val.npz). Accuracy on the 450 "
            "held-out images of `calibration/digits/val.npz`.",
            "",
            "| stage | params | ONNX KB | ort-fp32 p50 ms | cosine vs unpruned | top-1 agree | accuracy % |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, st in s.items():
            lines.append(f"| {name} | {st['params']:,} | {st['onnx_bytes'] / 1024:.0f} | {st['p50_ms']:.3f} | {st['cosine']:.4f} | "
                         f"{st['top1_agreement']:.4f} | {st['accuracy']:.2f} |")
        lines += ["", "| target (built from the distilled model) | status | accuracy % | cosine vs compressed torch | p50 ms | KB |",
                  "|---|---|---|---|---|---|"]
        for name, t in d["targets"].items():
            lines.append(f"| {name} | {t['status']} | {t['accuracy']:.2f} | {t['cosine_vs_compressed']:.4f} | {t['p50_ms']:.3f} | "
                         f"{t['bytes'] / 1024:.0f} |")
        lines += [
            "",
            f"Accuracy drop against the unpruned FP32 model: {d['accuracy_drop_points']:.2f} points (bar: <= 1.5). "
            + ("**Both bars met.**" if all(d["criteria"].values()) else f"**Bars: {d['criteria']}**"),
            "",
        ]
    if "minilm" in results:
        r = results["minilm"]
        b, a = r["before"], r["after"]
        lines += [
            "### all-MiniLM-L6-v2: low_rank rank_ratio 0.5 on the feed-forward Linear layers",
            "",
            f"{r['details']['layers_factorised']} layers factorised (each 384x1536 or 1536x384 becomes rank 192; "
            f"largest relative weight error {r['details']['max_weight_rel_error']:.3f}). "
            f"Embedding cosine against the original model on the {r['sentences']} held-out sentences of "
            f"benchmarks/sentences.py (sequence length {r['seq']}).",
            "",
            "| | params | ONNX MB | ort-fp32 p50 ms | p90 ms | mean cosine | worst cosine |",
            "|---|---|---|---|---|---|---|",
            f"| original | {b['params']:,} | {b['onnx_bytes'] / 1e6:.1f} | {b['p50_ms']:.2f} | {b['p90_ms']:.2f} | {b['cosine']:.4f} | {b['min_cosine']:.4f} |",
            f"| low-rank | {a['params']:,} | {a['onnx_bytes'] / 1e6:.1f} | {a['p50_ms']:.2f} | {a['p90_ms']:.2f} | {a['cosine']:.4f} | {a['min_cosine']:.4f} |",
            "",
            f"{100 * r['params_fewer']:.1f}% fewer parameters, p50 {r['p50_speedup']:.2f}x. No fine-tuning after the "
            "factorisation: the cosine is what truncating the SVD alone costs (no bar set).",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="resnet,digits,minilm", help="comma-separated subset of resnet,digits,minilm")
    p.add_argument("--epochs", type=int, default=5, help="distill epochs for the digits run")
    p.add_argument("--keep", type=Path, help="keep the build folders here instead of a temp dir")
    p.add_argument("--render-only", action="store_true", help="only re-render compress.md from compress.json")
    args = p.parse_args(argv)
    if args.render_only:
        (RESULTS / "compress.md").write_text(markdown(json.loads((RESULTS / "compress.json").read_text())) + "\n")
        return 0
    sys.path.insert(0, str(ROOT))
    from edgekit.manifest import host_info, library_versions

    work = args.keep or Path(tempfile.mkdtemp(prefix="edgekit-compress-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"host": host_info(), "versions": library_versions()}
    out = RESULTS / "compress.json"
    if out.is_file():  # keep the other measurements when only some are re-run
        results = {**json.loads(out.read_text()), **results}
    try:
        for name in args.only.split(","):
            start, load = time.perf_counter(), os.getloadavg()[0]
            results[name] = {"resnet": lambda: bench_resnet(work), "digits": lambda: bench_digits(work, args.epochs),
                             "minilm": lambda: bench_minilm(work)}[name]()
            # other work on the host slows every stage alike (interleaved timing), but the absolute ms with it
            results[name]["load_average_1min"] = {"start": round(load, 2), "end": round(os.getloadavg()[0], 2)}
            print(f"{name}: done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    (RESULTS / "compress.md").write_text(markdown(results) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
