"""Peak memory of an ort-int8 build calibrated as users do: the ResNet-18-shaped CNN from a folder of JPEGs (50 vs
500 images), or MiniLM from a text file and its tokenizer (200 vs 2,000 sentences).

    python benchmarks/calib_memory.py [--counts 50 500] [--method minmax] [--work DIR]
    python benchmarks/calib_memory.py --model minilm --counts 200 2000

The JPEGs are random crops (8-100 % of the area, aspect 3/4-4/3, random flip) of scikit-learn's two sample
photographs, saved at their crop size; edgekit's image reader resizes them (shorter side 256, center crop 224,
ImageNet mean/std). The MiniLM sentences are made offline and deterministically (seed 0) from the real sentences of
benchmarks/sentences.py: each joins word spans of one to three of them, so lengths vary from a few words to past the
128-token limit; edgekit's text reader tokenizes them with the model's own tokenizer.json (padding to 128). Each
build runs in its own child process (benchmarks/subproc.py, no validation, no calibration statistics cache), so each
peak RSS is that build's own: the whole process (ru_maxrss of the child) and the peak sampled while ort-int8 was
built. Writes benchmarks/results/calib_memory.json (calib_memory_minilm.json for --model minilm).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def make_jpegs(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` JPEG crops of the sklearn sample photographs in ``folder`` (kept when already complete)."""
    from PIL import Image

    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == count:
        return
    sys.path.insert(0, str(HERE))
    from models import sample_photos

    folder.mkdir(parents=True, exist_ok=True)
    photos = sample_photos()
    rng = np.random.default_rng(seed)
    for i in range(count):
        img = photos[rng.integers(len(photos))]
        h, w = img.shape[:2]
        area = h * w * rng.uniform(0.08, 1.0)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch = min(h, int(round(np.sqrt(area / ratio))))
        cw = min(w, int(round(np.sqrt(area * ratio))))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = img[y:y + ch, x:x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        Image.fromarray(np.ascontiguousarray(crop)).save(folder / f"{i:04d}.jpg", quality=90)


def make_sentences(path: Path, count: int, seed: int = 0) -> None:
    """``count`` distinct sentences, one per line, built from word spans of benchmarks/sentences.py's sentences."""
    sys.path.insert(0, str(HERE))
    from sentences import CALIBRATION, HELD_OUT

    pool = [s.split() for s in (*CALIBRATION, *HELD_OUT)]
    rng = np.random.default_rng(seed)
    lines: dict[str, None] = {}
    while len(lines) < count:
        parts = []
        for _ in range(int(rng.integers(1, 4))):
            words = pool[rng.integers(len(pool))]
            start = int(rng.integers(0, len(words)))
            parts.append(" ".join(words[start:start + int(rng.integers(3, len(words) + 1))]))
        lines["; ".join(parts)] = None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def minilm_config(work: Path, text: Path, count: int, method: str) -> Path:
    from models import minilm_path

    dyn = {"0": "batch"}
    raw = {
        "model": {"source": f"{HERE / 'models.py'}:minilm", "outputs": ["sentence_embedding"], "task": "embedding",
                  "inputs": [{"name": "input_ids", "shape": [1, 128], "dtype": "int64", "dynamic": dyn},
                             {"name": "attention_mask", "shape": [1, 128], "dtype": "int64", "dynamic": dyn}]},
        "calibration": {"data": str(text), "samples": count, "method": method,
                        "text": {"tokenizer": str(minilm_path()), "max_length": 128, "padding": "max_length"}},
        "targets": {"use": ["ort-int8"]},
    }
    path = work / f"calib_minilm_{count}.json"
    path.write_text(json.dumps(raw, indent=1))
    return path


def config(work: Path, images: Path, count: int, method: str) -> Path:
    raw = {
        "model": {"source": f"{HERE / 'models.py'}:resnet18_like", "weights": str(work / "resnet18_like.safetensors"),
                  "inputs": [{"name": "image", "shape": [1, 3, 224, 224], "dtype": "float32"}],
                  "outputs": ["logits"], "task": "classification"},
        "export": {"exporter": "torchscript"},
        "calibration": {"data": str(images), "samples": count, "method": method,
                        "images": {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}},
        "targets": {"use": ["ort-int8"]},
    }
    path = work / f"calib_{count}.json"
    path.write_text(json.dumps(raw, indent=1))
    return path


def run_build(cfg: Path, out: Path) -> dict:
    """One build in a child process: its JSON line, its own ru_maxrss and wall time."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "EDGEKIT_CALIBRATION_CACHE": "none"}  # every run collects its statistics: a cache hit would measure nothing
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(HERE / "subproc.py"), "edgekit", str(cfg), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"build {cfg} failed ({proc.returncode}):\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["wall_s"] = round(wall, 2)
    result["stderr_warnings"] = [ln for ln in stderr.splitlines() if ln.startswith("warning:")]
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["resnet18_like", "minilm"], default="resnet18_like")
    ap.add_argument("--counts", type=int, nargs="+", help="samples per build (default: 50 500; minilm: 200 2000)")
    ap.add_argument("--method", default="minmax")
    ap.add_argument("--work", type=Path, default=HERE / "work" / "calib_memory")
    ap.add_argument("--out", type=Path, help="default: benchmarks/results/calib_memory.json (calib_memory_minilm.json)")
    args = ap.parse_args(argv)
    from edgekit.hostinfo import cpu

    minilm = args.model == "minilm"
    counts = args.counts or ([200, 2000] if minilm else [50, 500])
    out = args.out or HERE / "results" / ("calib_memory_minilm.json" if minilm else "calib_memory.json")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE))
    if not minilm and not (work / "resnet18_like.safetensors").exists():
        from models import make_cnn_weights

        make_cnn_weights("resnet18_like", work / "resnet18_like.safetensors")
    rows = []
    for count in counts:
        if minilm:
            make_sentences(work / f"sentences_{count}.txt", count)
            cfg = minilm_config(work, work / f"sentences_{count}.txt", count, args.method)
        else:
            make_jpegs(work / f"jpeg_{count}", count)
            cfg = config(work, work / f"jpeg_{count}", count, args.method)
        result = run_build(cfg, work / f"out_{args.model}_{count}")
        target = result["targets"]["ort-int8"]
        phases = result["phases"]
        row = {
            "samples": count, "method": args.method, "status": target["status"],
            "calibration": target["notes"].get("calibration"),
            "calibration_statistics": target["notes"].get("calibration_statistics"),
            "build_peak_rss_mb": round(result["peak_rss_mb"], 1),
            "ort_int8_phase_peak_rss_mb": round(target["peak_rss_mb"], 1),
            "ort_int8_build_s": target["build_s"],
            "data_check_s": round(phases.get("loading", {}).get("seconds", 0.0), 2),
            "wall_s": result["wall_s"], "warnings": result["stderr_warnings"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    first, last = rows[0], rows[-1]
    summary = {
        "what": ("ort-int8 build (no validation) of benchmarks/models.py:minilm (all-MiniLM-L6-v2, mean-pooled, seq 128), "
                 "calibrated from a .txt of generated sentences (make_sentences, seed 0) through edgekit's text reader "
                 "with the model's tokenizer; ort_int8_build_s is the calibration wall time (pre-processing, the "
                 "statistics pass, quantization)" if minilm else
                 "ort-int8 build (no validation) of benchmarks/models.py:resnet18_like at 1x3x224x224, calibrated from "
                 "a folder of JPEG crops of sklearn's sample photographs through edgekit's image reader"),
        "command": "python benchmarks/calib_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "host": {**cpu(), "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                 "note": "a shared machine, loaded by other work: times are not comparable across runs, memory is"},
        "runs": rows,
        "peak_ratio_last_vs_first": round(last["build_peak_rss_mb"] / first["build_peak_rss_mb"], 3),
        "ort_int8_phase_peak_ratio_last_vs_first": round(last["ort_int8_phase_peak_rss_mb"] / first["ort_int8_phase_peak_rss_mb"], 3),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"peak RSS {first['samples']} samples {first['build_peak_rss_mb']} MB, {last['samples']} samples "
          f"{last['build_peak_rss_mb']} MB: ratio {summary['peak_ratio_last_vs_first']}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
