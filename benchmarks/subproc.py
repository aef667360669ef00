"""Builds run in child processes so each one's time and peak memory are its own.

    python benchmarks/subproc.py edgekit CONFIG.json OUT_DIR      # edgekit.pipeline.build, every target, no validation
    python benchmarks/subproc.py ort-dynamic SRC.onnx DST.onnx    # onnxruntime quantize_dynamic, default arguments
    python benchmarks/subproc.py ort-static SRC.onnx DST.onnx CALIB.npz SAMPLES   # quantize_static, default arguments

Each prints one JSON line on stdout. Peak memory: the process's peak RSS (ru_maxrss) and, for the edgekit build,
the peak RSS sampled every 5 ms during each pipeline step (export, each target's build), so a target's figure
is the whole process's resident memory while that target was being built (the loaded torch model included).
"""

from __future__ import annotations

import json
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

# nothing here imports a sibling module: benchmarks/ leaves sys.path, so no file of it can shadow a package a model
# imports (a benchmarks/kernels.py once hid the PyPI package `kernels` that transformers 5 imports)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            pages = int(fh.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class PhaseRecorder:
    """The pipeline's progress protocol; samples RSS in a thread and keeps the peak and wall time per step."""

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, float]] = {}
        self.current = "load"
        self._start = time.perf_counter()
        self.phases[self.current] = {"peak_rss_mb": _rss_mb(), "start_rss_mb": _rss_mb()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            rss = _rss_mb()
            ph = self.phases[self.current]  # step() adds a phase before making it current: always present
            if rss > ph["peak_rss_mb"]:
                ph["peak_rss_mb"] = rss

    def _close(self) -> None:
        ph = self.phases[self.current]
        ph["seconds"] = time.perf_counter() - self._start

    def step(self, text: str) -> None:
        self._close()
        if text.startswith("building "):
            name = text.split()[1]
        elif text.startswith("exporting"):
            name = "export"
        else:
            name = text.split()[0]
        rss = _rss_mb()
        self.phases[name] = {"peak_rss_mb": rss, "start_rss_mb": rss}
        self.current = name  # after the phase exists: the sampler thread reads phases[current] at any moment
        self._start = time.perf_counter()

    def advance(self, label: str, done: int, total: int) -> None:
        pass

    def warn(self, text: str) -> None:
        print(f"warning: {text}", file=sys.stderr)

    def stop(self) -> None:
        self._close()
        self._stop.set()
        self._thread.join()


def edgekit_build(config_json: str, out: str) -> dict[str, Any]:
    from edgekit.config import parse_config
    from edgekit.pipeline import BuildOptions, build

    raw = json.loads(Path(config_json).read_text())
    cfg = parse_config(raw, Path(config_json).parent)
    rec = PhaseRecorder()
    manifest = build(cfg, BuildOptions(out=Path(out), validate=False), rec)
    rec.stop()
    targets = {}
    for name, r in manifest.results.items():
        targets[name] = {
            "status": r.status, "reason": r.reason, "build_s": r.build_seconds,
            "precision": manifest.profiles.get(name, {}).get("precision"),
            "bytes": r.artifact.bytes if r.artifact else None,
            "files": [f.path for f in r.artifact.files] if r.artifact else [],
            "notes": r.artifact.notes if r.artifact else {},
            "peak_rss_mb": rec.phases.get(name, {}).get("peak_rss_mb"),
        }
    return {"targets": targets, "phases": rec.phases, "peak_rss_mb": _peak_mb(),
            "reference": manifest.reference["file"]["path"], "versions": manifest.versions}


class _Reader:
    """CalibrationDataReader over one .npz (arrays keyed by input name), one sample per call."""

    def __init__(self, path: str, samples: int):
        data = np.load(path)
        self.arrays = {k: data[k][:samples] for k in data.files if k != "labels"}
        self.n = min(len(v) for v in self.arrays.values())
        self.i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= self.n:
            return None
        self.i += 1
        return {k: v[self.i - 1 : self.i] for k, v in self.arrays.items()}

    def rewind(self) -> None:
        self.i = 0


def ort_baseline(kind: str, src: str, dst: str, calib: str | None = None, samples: int = 0) -> dict[str, Any]:
    """What a user gets from onnxruntime.quantization with default arguments on the plain export."""
    from onnxruntime.quantization import quantize_dynamic, quantize_static

    start = time.perf_counter()
    if kind == "ort-dynamic":
        quantize_dynamic(src, dst)
    else:
        quantize_static(src, dst, _Reader(calib, samples))
    return {"build_s": time.perf_counter() - start, "peak_rss_mb": _peak_mb(), "bytes": Path(dst).stat().st_size}


def main(argv: list[str]) -> int:
    kind = argv[0]
    if kind == "edgekit":
        result = edgekit_build(argv[1], argv[2])
    else:
        result = ort_baseline(kind, argv[1], argv[2], *(argv[3:4]), *(int(a) for a in argv[4:5]))
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
