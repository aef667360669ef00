"""Interleaved latency: every path of one model is called round by round in one process, so machine noise
(other jobs on the host, frequency changes) hits all paths alike; the ratios are what the tables publish."""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

Call = Callable[[], Any]


def cpu_busy_other(before: tuple[list[int], float], after: tuple[list[int], float]) -> float | None:
    """Average number of CPUs busy with work other than this process between two ``host_sample()`` calls."""
    (a, own_a), (b, own_b) = before, after
    if not a or not b:
        return None
    total = sum(b) - sum(a)
    idle = (b[3] + b[4]) - (a[3] + a[4])
    if total <= 0:
        return None
    ncpu = len(_cpu_lines())
    busy_cpus = (total - idle) / total * ncpu
    wall = total / ncpu  # jiffies of wall time
    own = (own_b - own_a) * 100.0 / wall if wall > 0 else 0.0  # own CPU seconds -> CPUs (assumes 100 Hz clock)
    return max(0.0, busy_cpus - own)


def _cpu_lines() -> list[str]:
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            return [ln for ln in fh if ln.startswith("cpu") and not ln.startswith("cpu ")]
    except OSError:
        return []


def host_sample() -> tuple[list[int], float]:
    """(aggregate /proc/stat CPU jiffies, this process's CPU seconds) for ``cpu_busy_other``."""
    import os

    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except OSError:
        fields = []
    t = os.times()
    return fields, t.user + t.system


def interleaved(calls: dict[str, Call], warmup: int, rounds: int, per_round: int = 2,
                progress: Callable[[int, int], None] | None = None) -> dict[str, list[float]]:
    """Warm every path up, then ``rounds`` rounds; in each round every path makes one untimed call (it lets the
    previous path's worker threads go idle and re-warms caches) followed by ``per_round`` timed calls.
    The path order rotates each round so no path always follows the same neighbour. Returns seconds per call."""
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            call = calls[name]
            call()
            for _ in range(per_round):
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
        if progress is not None:
            progress(r + 1, rounds)
    return times


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "runs": int(ms.size)}


def wait_for_quiet(max_wait_s: float, quiet_below: float = 0.5, window_s: float = 3.0) -> tuple[float, float] | None:
    """Sleep in ``window_s`` steps until other processes keep fewer than ``quiet_below`` CPUs busy, for at most
    ``max_wait_s``. Returns None if the first window was quiet, else (seconds waited, load in the last window)."""
    waited, load = 0.0, 0.0
    while waited < max_wait_s:
        before = host_sample()
        time.sleep(window_s)
        load = cpu_busy_other(before, host_sample()) or 0.0
        if load < quiet_below:
            return None if waited == 0.0 else (waited + window_s, load)
        waited += window_s
    return (waited, load) if max_wait_s > 0 else None
