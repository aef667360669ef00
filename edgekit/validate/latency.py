"""Latency, measured one way everywhere (build, validate, compress): every runner is warmed up, then the runners
take turns call by call on the same feed, the order rotating each round, so drift and noise on the host hit
every runner alike and the ratios between them are fair. Percentiles in milliseconds."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from edgekit.faults import raise_if_signalled
from edgekit.types import LatencyStats


@dataclass(frozen=True)
class Timed:
    """One runner to time: the call, its untimed warm-up calls, its timed calls."""

    call: Callable[[], Any]
    warmup: int
    runs: int


def summarize(times_s: list[float] | np.ndarray) -> dict[str, float]:
    """``stats`` as a dict (the manifest's latency keys)."""
    return stats(times_s).to_dict()


def stats(times_s: list[float] | np.ndarray) -> LatencyStats:
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    return LatencyStats(
        p50_ms=float(np.percentile(ms, 50)),
        p90_ms=float(np.percentile(ms, 90)),
        p99_ms=float(np.percentile(ms, 99)),
        mean_ms=float(np.mean(ms)),
        std_ms=float(np.std(ms)),
        min_ms=float(np.min(ms)),
        runs=int(ms.size),
    )


def interleaved(timed: dict[str, Timed], progress: Callable[[str, int, int], None] | None = None) -> dict[str, LatencyStats | str]:
    """Time every runner: all warm-ups first, then round after round one timed call each (a runner stops once it
    has made its ``runs``). A runner that raises is dropped; its entry is the error text instead of stats."""
    failed: dict[str, str] = {}

    def attempt(name: str, call: Callable[[], Any]) -> bool:
        try:
            call()
            return True
        except Exception as exc:  # a runner failing while timed is that runner's error; the others go on
            raise_if_signalled()  # not when it was Ctrl-C, re-raised by the runtime as its own error
            failed[name] = f"{type(exc).__name__}: {str(exc)[:300]}"
            return False

    for name, t in timed.items():
        for _ in range(t.warmup):
            if not attempt(name, t.call):
                break
    names = [n for n in timed if n not in failed]
    times: dict[str, list[float]] = {n: [] for n in names}
    rounds = max((timed[n].runs for n in names), default=0)
    for r in range(rounds):
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            if name in failed or len(times[name]) >= timed[name].runs:
                continue
            start = time.perf_counter()
            if attempt(name, timed[name].call):
                times[name].append(time.perf_counter() - start)
        if progress is not None and (r + 1) % max(1, rounds // 20) == 0:
            progress("latency", r + 1, rounds)
    return {n: failed[n] if n in failed else stats(times[n]) for n in timed}
