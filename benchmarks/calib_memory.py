"""Peak memory of an ort-int8 build of the ResNet-18-shaped CNN calibrated from a folder of JPEGs: 50 vs 500 images.

    python benchmarks/calib_memory.py [--counts 50 500] [--method minmax] [--work DIR]

The JPEGs are random crops (8-100 % of the area, aspect 3/4-4/3, random flip) of scikit-learn's two sample
photographs, saved at their crop size; edgekit's image reader resizes them (shorter side 256, center crop 224,
ImageNet mean/std). Each build runs in its own child process (benchmarks/subproc.py, no validation), so each peak
RSS is that build's own: the whole process (ru_maxrss of the child) and the peak sampled while ort-int8 was built.
Writes benchmarks/results/calib_memory.json.
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
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
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
    ap.add_argument("--counts", type=int, nargs="+", default=[50, 500])
    ap.add_argument("--method", default="minmax")
    ap.add_argument("--work", type=Path, default=HERE / "work" / "calib_memory")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "calib_memory.json")
    args = ap.parse_args(argv)
    from edgekit.hostinfo import cpu

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE))
    if not (work / "resnet18_like.safetensors").exists():
        from models import make_cnn_weights

        make_cnn_weights("resnet18_like", work / "resnet18_like.safetensors")
    rows = []
    for count in args.counts:
        images = work / f"jpeg_{count}"
        make_jpegs(images, count)
        result = run_build(config(work, images, count, args.method), work / f"out_{count}")
        target = result["targets"]["ort-int8"]
        phases = result["phases"]
        row = {
            "images": count, "method": args.method, "status": target["status"],
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
        "what": "ort-int8 build (no validation) of benchmarks/models.py:resnet18_like at 1x3x224x224, calibrated from "
                "a folder of JPEG crops of sklearn's sample photographs through edgekit's image reader",
        "command": "python benchmarks/calib_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "host": {**cpu(), "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                 "note": "a shared machine, loaded by other work: times are not comparable across runs, memory is"},
        "runs": rows,
        "peak_ratio_last_vs_first": round(last["build_peak_rss_mb"] / first["build_peak_rss_mb"], 3),
        "ort_int8_phase_peak_ratio_last_vs_first": round(last["ort_int8_phase_peak_rss_mb"] / first["ort_int8_phase_peak_rss_mb"], 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"peak RSS {first['images']} images {first['build_peak_rss_mb']} MB, {last['images']} images "
          f"{last['build_peak_rss_mb']} MB: ratio {summary['peak_ratio_last_vs_first']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
