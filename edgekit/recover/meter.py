"""Measure one recovery candidate the way the validator measures a target (edgekit/validate/): the same streamed
comparison on the validation data, the same gates, interleaved timing against the FP32 baseline, fewer runs (none
for a candidate the search cannot choose). The references run once; their outputs are replayed for every later
candidate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.backends.base import Runner
from edgekit.backends.onnx.session import OrtRunner
from edgekit.types import (Feed, GateVerdict, LatencyStats, LayerCensus, Metrics, Reference, SizeInfo, SourceModel, TargetLatency,
                           TargetProfile)
from edgekit.backends.onnx.census import onnx_census
from edgekit.validate.gates import check, measured_values, speed_resolution
from edgekit.validate.latency import Timed, interleaved
from edgekit.validate.run import TorchRunner, ValidationData, latency_feed, observe, reference_runner

WARMUP = 5
RUNS = 40  # timed calls per candidate (and per baseline, interleaved); the final artifact is timed in full again
# a speed-up (or p50) within this share of a speed gate's bound is timed again with RECHECK_RUNS calls before the
# search takes the gate's verdict: 40 calls of a 3.5 ms model put one candidate at 1.41x and at 1.25x in two
# builds against a 1.3x gate (benchmarks/recover_bench.py, MobileNetV2-shaped)
CLOSE_CALL = 0.10
RECHECK_RUNS = 160
SPEED_GATES = ("min_speedup", "max_p50_ms")  # the gates only the timing decides


class Replay(Runner):
    """A reference runner whose outputs are computed on the first pass over the data and replayed afterwards
    (the validation batches come in the same order every pass)."""

    def __init__(self, runner: Runner):
        super().__init__(runner.inputs, runner.outputs)
        self.runner, self.saved, self.at, self.complete = runner, [], 0, False

    def rewind(self) -> None:
        self.complete = self.complete or bool(self.saved)
        self.at = 0

    def _run(self, feed: Feed) -> list[np.ndarray]:
        if self.complete:
            out = self.saved[self.at]
        else:
            result = self.runner.run(feed)
            out = [result[name] for name in self.outputs]
            self.saved.append(out)
        self.at += 1
        return out

    def close(self) -> None:
        self.runner.close()


@dataclass(frozen=True)
class Measurement:
    metrics: Metrics
    p50_ms: float | None
    speedup: float | None
    gates: list[GateVerdict]
    timed: bool = True  # False: not timed (it misses an accuracy gate and is no more accurate than the best so far)

    @property
    def passed(self) -> bool:
        return all(g.passed is not False for g in self.gates)

    @property
    def cosine(self) -> float:
        return float(self.metrics.primary["worst"]["cosine"])


class Meter:
    """Measures candidate ONNX files of one target against the references, on the validation data; ``load`` runs a
    candidate file as the target's backend runs its artifact."""

    def __init__(self, name: str, profile: TargetProfile, reference: Reference, torch_source: SourceModel | None,
                 data: ValidationData, shapes: dict[str, tuple[int, ...]], task: str | None, baseline: Path,
                 load: Callable[[Path], Runner], on_device: bool = True,
                 census: Callable[[Path], LayerCensus | None] = onnx_census):
        """``census``: counts a candidate file's INT8 layers (a torch.ao artifact is no ONNX file)."""
        self.name, self.profile, self.reference, self.data, self.load = name, profile, reference, data, load
        self.census = census
        self.on_device = on_device  # timed on a device of the target's kind (validate.measure.timed_on_device)
        self.classification = task == "classification"
        threads = profile.runtime.threads
        self.onnx_ref = Replay(reference_runner(reference, threads))
        self.torch_ref = Replay(TorchRunner(torch_source, reference.outputs, threads)) if torch_source is not None else None
        self.baseline = OrtRunner(baseline, reference.inputs, reference.outputs, threads)
        self.feed = latency_feed(data, reference.inputs, shapes, None)
        self.fp32_bytes = reference.path.stat().st_size
        self.ref_accuracy: float | None = None

    def measure(self, path: Path, worth_timing: Callable[[Metrics], bool] = lambda metrics: True) -> Measurement:
        """Accuracy first; the timing only when the candidate could meet every gate or ``worth_timing(metrics)``
        (the search: it is more accurate than the best so far). An untimed candidate misses an accuracy gate, so it
        cannot meet every gate, and its speed-up is None."""
        runner = self.load(path)
        try:
            metrics = self._metrics(runner)
            census = self.census(path)
            size = SizeInfo(path.stat().st_size, path.stat().st_size / self.fp32_bytes, self.fp32_bytes)
            gates = check(self.name, self.profile.gates, measured_values(metrics, None, size, census))
            if any(g.passed is False for g in gates if g.gate not in SPEED_GATES) and not worth_timing(metrics):
                return Measurement(metrics, None, None, gates, timed=False)
            def timed(runs: int) -> dict[str, LatencyStats | str]:
                return interleaved({"baseline": Timed(lambda: self.baseline.run(self.feed), WARMUP, runs),
                                    "candidate": Timed(lambda: runner.run(self.feed), WARMUP, runs)})

            lat = timed(min(self.profile.runtime.runs, RUNS))
            if self._close_call(lat) and not any(g.passed is False for g in gates if g.gate not in SPEED_GATES):
                lat = timed(RECHECK_RUNS)  # it could meet every gate: the speed verdict is the one that decides
        finally:
            runner.close()
        cand, base = lat["candidate"], lat["baseline"]
        p50 = None if isinstance(cand, str) else cand.p50_ms
        speedup = base.p50_ms / p50 if p50 and not isinstance(base, str) else None
        # the evidence the validator hands the gates (validate/measure.py), so a candidate is judged as the target is
        latency = None if isinstance(cand, str) else TargetLatency(cand, 1, self.profile.runtime.threads, WARMUP, speedup, "ort-fp32")
        speed = speed_resolution(None if isinstance(base, str) else base.min_ms, "ort-fp32", self.on_device)
        gates = check(self.name, self.profile.gates, measured_values(metrics, latency, size, census, speed))
        return Measurement(metrics, p50, speedup, gates)

    def _close_call(self, lat: dict[str, LatencyStats | str]) -> bool:
        """Whether the timing puts the candidate within CLOSE_CALL of a speed gate's bound."""
        cand, base = lat["candidate"], lat["baseline"]
        if isinstance(cand, str) or isinstance(base, str) or not cand.p50_ms:
            return False
        g = self.profile.gates
        near = [(base.p50_ms / cand.p50_ms, g.min_speedup), (cand.p50_ms, g.max_p50_ms)]
        return any(bound and abs(value / bound - 1.0) < CLOSE_CALL for value, bound in near)

    def _metrics(self, runner: Runner) -> Metrics:
        """The candidate's comparison with the references on the validation data (the validator's metrics)."""
        for ref in (self.onnx_ref, self.torch_ref):
            if ref is not None:
                ref.rewind()
        observed = observe({self.name: runner}, self.torch_ref, self.onnx_ref, self.data, self.classification,
                           self.reference.outputs)
        o = observed[self.name]
        if o.error:
            raise RuntimeError(o.error)
        if self.ref_accuracy is None:
            ref = observed.get("torch-fp32", observed["onnx-fp32"]).accuracy
            self.ref_accuracy = ref.percent if ref is not None and ref.total else None
        accuracy = o.accuracy.percent if o.accuracy is not None and o.accuracy.total else None
        drop = self.ref_accuracy - accuracy if self.ref_accuracy is not None and accuracy is not None else None
        return o.metrics(drop)

    def close(self) -> None:
        for r in (self.onnx_ref, self.torch_ref, self.baseline):
            if r is not None:
                r.close()
