"""The validator as one call: every built artifact and the references see the same batches, are timed together
(interleaved), and each artifact gets its metrics, latency, size and gate verdicts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.backends import Runner, get_backend
from edgekit.console import Progress
from edgekit.faults import raise_if_signalled
from edgekit.types import (Artifact, GateVerdict, Metrics, Reference, SizeInfo, SourceModel, TargetLatency, TargetProfile,
                           TargetResult)
from edgekit.validate.gates import check, measured_values, speed_resolution
from edgekit.validate.latency import Timed, interleaved
from edgekit.validate.run import TorchRunner, ValidationData, latency_feed, observe, reference_runner
from edgekit.validate.verdict import target_status

REFERENCE_THREADS = 2


@dataclass(frozen=True)
class ReferenceTiming:
    """How the onnx-fp32 and torch-fp32 references are timed (targets use their profile's runtime settings)."""

    warmup: int = 10
    runs: int = 100
    threads: int = REFERENCE_THREADS


@dataclass
class TargetMeasure:
    """What the validator found for one artifact; a field stays None when it was not reached (``error`` says why)."""

    error: str = ""
    metrics: Metrics | None = None
    latency: TargetLatency | None = None
    size: SizeInfo | None = None
    gates: list[GateVerdict] | None = None
    measured_on: str | None = None

    def apply(self, result: TargetResult, unavailable: str = "") -> None:
        """Record into ``result`` what was measured, and its status (``unavailable``: why numbers are not the target's)."""
        for name in ("metrics", "latency", "size", "gates", "measured_on"):
            value = getattr(self, name)
            if value is not None:
                setattr(result, name, value)
        result.status, result.reason = target_status(self.error, self.gates or (), unavailable)


@dataclass
class Measured:
    """The manifest's ``validation`` and ``references`` entries, and one TargetMeasure per artifact."""

    validation: dict[str, Any]
    references: dict[str, Any]
    targets: dict[str, TargetMeasure] = field(default_factory=dict)


def measured_on(profile: TargetProfile, artifact: Artifact) -> str:
    if artifact.measured_on:
        return artifact.measured_on
    if profile.host_is_device:
        return "build host (a device of this target's kind)"
    return "build host, not the target device"


def timed_on_device(profile: TargetProfile, artifact: Artifact) -> bool:
    """Whether the build host, where ort-fp32 is timed too, is a device of this target's kind (then speed-ups count)."""
    if artifact.proxy:
        return False
    return profile.host_is_device or "a device of this target's kind" in artifact.measured_on  # torch_ao: qnnpack on ARM


def measure(
    root: Path, artifacts: dict[str, Artifact], reference: Reference, torch_source: SourceModel | None,
    profiles: dict[str, TargetProfile], data: ValidationData, shapes: dict[str, tuple[int, ...]], task: str | None,
    progress: Progress, timing: ReferenceTiming = ReferenceTiming(),
) -> Measured:
    """Load every artifact on its own backend, compare it with the references on ``data``, time them all."""
    targets: dict[str, TargetMeasure] = {}
    runners: dict[str, Runner] = {}
    for name, artifact in artifacts.items():
        profile = profiles[name]
        try:
            runners[name] = get_backend(profile.backend).load(artifact, root, profile, reference)
        except Exception as exc:
            raise_if_signalled()  # not when it was Ctrl-C, re-raised by the runtime as its own error
            targets[name] = TargetMeasure(f"loading the artifact failed: {type(exc).__name__}: {str(exc)[:300]}")
    torch_ref = TorchRunner(torch_source, reference.outputs, timing.threads) if torch_source is not None else None
    onnx_ref = reference_runner(reference, timing.threads)
    progress.step(f"validating {len(runners)} artifact(s) on {data.description}")
    observed = observe(runners, torch_ref, onnx_ref, data, task == "classification", reference.outputs, progress.advance)
    feed = latency_feed(data, reference.inputs, shapes, None)
    batch = int(next(iter(feed.values())).shape[0])
    timed = {"onnx-fp32": Timed(lambda: onnx_ref.run(feed), timing.warmup, timing.runs)}
    if torch_ref is not None:
        timed["torch-fp32"] = Timed(lambda: torch_ref.run(feed), timing.warmup, timing.runs)
    for name, runner in runners.items():
        rt = profiles[name].runtime
        timed[name] = Timed(lambda r=runner: r.run(feed), rt.warmup, rt.runs)
    progress.step(f"timing {len(timed)} runners (batch {batch})")
    lat = interleaved(timed, progress.advance)
    for runner in runners.values():
        runner.close()

    fp32_bytes = reference.disk_bytes
    baseline, baseline_name, fastest = None, "ort-fp32", None
    if "ort-fp32" in runners and not isinstance(lat["ort-fp32"], str):
        baseline, fastest = lat["ort-fp32"].p50_ms, lat["ort-fp32"].min_ms
    if baseline is None:
        onnx_lat = lat["onnx-fp32"]
        baseline, fastest = (None, None) if isinstance(onnx_lat, str) else (onnx_lat.p50_ms, onnx_lat.min_ms)
        baseline_name = "onnx-fp32 reference (no ort-fp32 target in this run)"
    ref_acc = observed.get("torch-fp32", observed["onnx-fp32"]).accuracy
    ref_accuracy = ref_acc.percent if ref_acc is not None and ref_acc.total else None
    references: dict[str, Any] = {}
    for name in ("torch-fp32", "onnx-fp32"):
        if name in observed:
            t = lat[name]
            latency = {"error": t} if isinstance(t, str) else t.to_dict()
            entry: dict[str, Any] = {"latency": {**latency, "batch": batch, "threads": timing.threads}}
            entry.update(observed[name].metrics().to_dict())
            if name == "onnx-fp32":
                entry["bytes"] = fp32_bytes
            references[name] = entry
    validation = {"description": data.description, "samples": observed["onnx-fp32"].samples, "labelled": data.labelled,
                  "latency_batch": batch}

    for name in runners:
        o, profile, artifact = observed[name], profiles[name], artifacts[name]
        if o.error:
            targets[name] = TargetMeasure(o.error)
            continue
        accuracy = o.accuracy.percent if o.accuracy is not None and o.accuracy.total else None
        metrics = o.metrics(ref_accuracy - accuracy if ref_accuracy is not None and accuracy is not None else None)
        t = lat[name]
        if isinstance(t, str):
            targets[name] = TargetMeasure(f"timing failed: {t}", metrics)
            continue
        speedup = baseline / t.p50_ms if baseline else None
        latency = TargetLatency(t, batch, profile.runtime.threads, profile.runtime.warmup, speedup, baseline_name)
        size = SizeInfo(artifact.bytes, artifact.bytes / fp32_bytes, fp32_bytes)
        speed = speed_resolution(fastest, baseline_name.split(" ")[0], timed_on_device(profile, artifact))
        flat = measured_values(metrics, latency, size, artifact.layers, speed)
        targets[name] = TargetMeasure("", metrics, latency, size, check(name, profile.gates, flat), measured_on(profile, artifact))
    return Measured(validation, references, targets)
