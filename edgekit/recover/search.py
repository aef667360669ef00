"""The search: when a static INT8 target misses a gate after validation, try candidates cheapest first, stop at the
first that meets every gate or at the budget, write the best so far in place of the original.

    calibration  the other calibration methods (mse, percentile, entropy, minmax)
    recipe       cross-layer equalization; bias correction; SmoothQuant-style smoothing; 8-bit weights
    precision    the layers ``rank_layers`` blames kept FP32 one by one (greedy), then every exclusion that
                 turns out unnecessary dropped again

Best so far: a candidate meeting every gate (the one with the fewest FP32 layers); otherwise, among candidates not
slower than the FP32 baseline (or the original, when INT8 is slower already), the one meeting most gates, then the
most accurate (cosine to 6 digits), then the earlier. Every attempt is recorded (types.Recovery).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.console import Progress
from edgekit.recover.candidates import StaticQdq, Spec, describe, iter_methods
from edgekit.recover.meter import Measurement, Meter
from edgekit.recover.rank import compute_nodes, rank_layers
from edgekit.types import Recovery, RecoveryAttempt, TargetResult

SLOWER_TOLERANCE = 0.9  # a candidate's speed-up may be this fraction of the bound and still count as "not slower"
MAX_FP32_SHARE = 0.5  # the precision step keeps at most this share of the quantized Conv/Gemm/MatMul FP32
PATIENCE = 5  # the precision step stops after this many layers in a row that did not help


class _OutOfBudget(Exception):
    pass


@dataclass
class Tried:
    attempt: RecoveryAttempt
    spec: Spec
    path: Path | None  # None: the original artifact
    notes: dict[str, Any] = field(default_factory=dict)
    passed_count: int = 0


@dataclass
class Outcome:
    recovery: Recovery
    path: Path | None  # the chosen candidate's file, None when the original stays
    notes: dict[str, Any]


def _attempt(step: str, change: str, m: Measurement, seconds: float, exclude: tuple[str, ...]) -> RecoveryAttempt:
    return RecoveryAttempt(step, change, m.cosine, m.metrics.accuracy, m.p50_ms, m.speedup, round(seconds, 3), m.passed,
                           tuple(exclude))


class Search:
    """One target's search; ``run`` returns the Outcome (attempts and the file to write)."""

    def __init__(self, name: str, result: TargetResult, builder: StaticQdq, meter: Meter, configured: Spec,
                 budget_s: float, progress: Progress, tmp: Path):
        self.name, self.builder, self.meter, self.base, self.budget_s = name, builder, meter, configured, budget_s
        self.progress, self.tmp = progress, tmp
        self.start = time.monotonic()
        self.slowest = 0.0
        gates = result.gates
        latency = result.latency
        cosine = result.metrics.primary["worst"]["cosine"] if result.metrics is not None else None
        original = RecoveryAttempt("original", "as built", cosine, result.metrics.accuracy if result.metrics else None,
                                   latency.stats.p50_ms if latency else None, latency.speedup_vs_ort_fp32 if latency else None,
                                   result.build_seconds or 0.0, all(g.passed is not False for g in gates), ())
        self.tried = [Tried(original, configured, None, passed_count=sum(g.passed is True for g in gates))]
        speed = original.speedup
        self.min_speedup = SLOWER_TOLERANCE * min(1.0, speed) if speed else 0.0

    # ------------------------------------------------------------------------------------------ attempts
    def remaining(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def attempt(self, step: str, spec: Spec, change: str | None = None) -> bool:
        """Build and measure ``spec``; True when it meets every gate. Raises _OutOfBudget when it may not fit."""
        if any(t.spec == spec for t in self.tried):
            return False
        if self.remaining() < self.slowest:
            raise _OutOfBudget
        began = time.monotonic()
        path = self.tmp / f"candidate_{len(self.tried)}.onnx"
        change = change or describe(spec, self.base)
        try:
            notes = self.builder.build(spec, path)
            m = self.meter.measure(path)
        except Exception as exc:  # a candidate the quantizer or ORT rejects is skipped, the search goes on
            self.progress.note(f"{self.name}: recovery candidate '{change}' failed: {type(exc).__name__}: {str(exc)[:200]}")
            return False
        seconds = time.monotonic() - began
        self.slowest = max(self.slowest, seconds)
        a = _attempt(step, change, m, seconds, spec.exclude)
        self.tried.append(Tried(a, spec, path, notes, sum(g.passed is True for g in m.gates)))
        speed = f", {a.speedup:.2f}x" if a.speedup else ""
        self.progress.step(f"recovery {self.name} [{len(self.tried) - 1}] {step}: {change}: cosine {a.cosine:.6f}{speed}"
                           f"{' meets every gate' if a.gates_passed else ''}")
        return a.gates_passed

    def best(self, among: list[Tried] | None = None) -> Tried:
        """The best so far (module docstring); the original when nothing else qualifies."""
        pool = [t for t in (among or self.tried)
                if t.path is None or t.attempt.gates_passed or (t.attempt.speedup or 0.0) >= self.min_speedup]

        def key(t: Tried) -> tuple[Any, ...]:
            a = t.attempt
            cosine = round(a.cosine, 6) if a.cosine is not None else -math.inf
            if a.gates_passed:  # meeting every gate: the fewest FP32 layers (what pruning found), then the most accurate
                return (1, t.passed_count, -len(a.excluded), cosine)
            return (0, t.passed_count, a.accuracy if a.accuracy is not None else -math.inf, cosine)
        # max() keeps the first of equals: a tie goes to the earlier attempt (closer to the configured recipe), not to
        # the faster one, since timing noise would make the choice differ between two builds of the same config
        return max(pool or self.tried[:1], key=key)

    # --------------------------------------------------------------------------------------------- steps
    def run(self) -> Outcome:
        met = False
        try:
            met = self.calibration() or self.recipe() or self.precision()
        except _OutOfBudget:
            self.progress.note(f"{self.name}: recovery stopped at its budget of {self.budget_s:g} s")
        chosen = self.best()
        index = self.tried.index(chosen)
        recovery = Recovery(True, self.budget_s, round(time.monotonic() - self.start, 3), met and chosen.attempt.gates_passed,
                            index if chosen.path is not None else None, tuple(t.attempt for t in self.tried))
        return Outcome(recovery, chosen.path, chosen.notes)

    def calibration(self) -> bool:
        methods = self.builder.methods(self.base.method) if hasattr(self.builder, "methods") else iter_methods(self.base.method)
        return any(self.attempt("calibration", dataclasses.replace(self.base, method=m)) for m in methods)

    def recipe(self) -> bool:
        if hasattr(self.builder, "repairs"):  # other backend families: their own repairs, each applied to the best so far
            return any(self.attempt("recipe", repair(self.best().spec)) for repair in self.builder.repairs())
        method = self.best().spec.method
        for graph in ("equalized", "corrected", "smoothed"):
            if self.remaining() < self.slowest:
                raise _OutOfBudget
            if self.builder.graph(graph, method) is not None and self.attempt("recipe", Spec(method, graph)):
                return True
        from edgekit.backends.onnx.qdq import resolved_reduce_range
        from edgekit.hostinfo import has_int8_dot

        best = self.best().spec
        if self.attempt("recipe", dataclasses.replace(best, compute_only=True)):
            return True
        if resolved_reduce_range(self.builder.qdq.reduce_range) and has_int8_dot():
            return self.attempt("recipe", dataclasses.replace(self.best().spec, reduce_range=False))
        return False

    def precision(self) -> bool:
        start = self.best(among=[t for t in self.tried if t.path is not None] or None)
        spec = start.spec
        artifact = start.path or self.builder.tmp / "start.onnx"
        if start.path is None:
            self.builder.build(spec, artifact)
        seconds = max(1.0, min(60.0, self.remaining() / 3))
        if hasattr(self.builder, "rank"):  # other backend families rank their own layers (names their builds exclude)
            ranked, compute = self.builder.rank(spec, artifact, seconds)
        else:
            fp32 = self.builder.preprocessed(spec.graph, spec.method)
            ranked = rank_layers(artifact, fp32, self.builder.feeds(), seconds)
            compute = compute_nodes(artifact)  # never a silent FP32: at least half of them stay INT8
        limit = int(len(compute) * MAX_FP32_SHARE)
        excluded: list[str] = list(spec.exclude)
        current, idle = start, 0
        for node in ranked:
            if idle >= PATIENCE:
                break
            if node in compute and len(compute.intersection([*excluded, node])) > limit:
                continue
            trial = dataclasses.replace(spec, exclude=tuple(excluded + [node]))
            if self.attempt("precision", trial, describe(trial, current.spec)):
                return self.prune(self.tried[-1])
            last = self.tried[-1]
            if last.spec == trial and (last.attempt.cosine or 0.0) > (current.attempt.cosine or 0.0):
                excluded.append(node)  # it helped: keep it FP32 and go on
                current, idle = last, 0
            else:
                idle += 1
        return False

    def prune(self, passing: Tried) -> bool:
        """Drop every exclusion the passing candidate does not need (each drop re-measured)."""
        keep = list(passing.spec.exclude)
        for node in list(keep[:-1]):
            trial = dataclasses.replace(passing.spec, exclude=tuple(n for n in keep if n != node))
            try:
                if self.attempt("precision", trial, describe(trial, passing.spec)):
                    keep.remove(node)
                    passing = self.tried[-1]
            except _OutOfBudget:
                break
        return True


def write_choice(outcome: Outcome, dst: Path) -> None:
    """Replace the target's artifact file with the chosen candidate (nothing to do when the original stays)."""
    if outcome.path is None:
        return
    from edgekit.fsutil import atomic_move

    staged = dst.with_name(f".{dst.name}.recovered")
    shutil.copyfile(outcome.path, staged)
    atomic_move(staged, dst)
