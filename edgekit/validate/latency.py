"""Latency on the artifact's own backend: warm-up, then timed calls; percentiles in milliseconds."""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np


def summarize(times_s: list[float] | np.ndarray) -> dict[str, float]:
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(np.mean(ms)),
        "std_ms": float(np.std(ms)),
        "min_ms": float(np.min(ms)),
        "runs": int(ms.size),
    }


def measure(call: Callable[[], Any], warmup: int, runs: int, progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """Time ``call`` ``runs`` times after ``warmup`` untimed calls."""
    for _ in range(warmup):
        call()
    times = []
    for i in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        if progress is not None and (i + 1) % max(1, runs // 20) == 0:
            progress(i + 1, runs)
    return summarize(times)
