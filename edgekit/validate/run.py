"""Run the validator: every artifact and both references see the same validation batches; then latency."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from edgekit.backends.base import Runner
from edgekit.types import Batch, Feed, Reference, SourceModel, TensorSpec
from edgekit.validate import latency
from edgekit.validate.metrics import Accuracy, Comparison

log = logging.getLogger(__name__)


class TorchRunner(Runner):
    """The original torch model, eager FP32: the first reference."""

    def __init__(self, source: SourceModel, outputs: tuple[str, ...], threads: int):
        super().__init__(source.inputs, outputs)
        self.module = source.module
        self.threads = threads

    def _run(self, feed: Feed) -> list[np.ndarray]:
        import torch

        prev = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                out = self.module(*(torch.from_numpy(feed[s.name]) for s in self.inputs))
        finally:
            torch.set_num_threads(prev)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return [o.detach().cpu().numpy() for o in outs]


@dataclass
class Measured:
    """What the validator measured for one runner."""

    vs_torch: Comparison | None = None
    vs_onnx: Comparison | None = None
    accuracy: Accuracy | None = None
    latency: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    def metrics(self) -> dict[str, Any]:
        result: dict[str, Any] = {}
        if self.vs_torch is not None:
            result["vs_torch"] = self.vs_torch.summary()
        if self.vs_onnx is not None:
            result["vs_onnx"] = self.vs_onnx.summary()
        if self.accuracy is not None and self.accuracy.total:
            result["accuracy"] = self.accuracy.percent
        return result


@dataclass
class ValidationData:
    """The batches every runner sees, and how they were obtained (real data or synthetic inputs)."""

    batches: Callable[[], Iterator[Batch]]
    description: str
    labelled: bool


def synthetic(specs: tuple[TensorSpec, ...], shapes: dict[str, tuple[int, ...]], count: int = 32) -> ValidationData:
    from edgekit.export import example_inputs

    def batches() -> Iterator[Batch]:
        for i in range(count):
            yield Batch(example_inputs(specs, shapes, seed=1000 + i))

    return ValidationData(batches, f"{count} synthetic random batches (no [validation] data given)", False)


def compare(
    runners: dict[str, Runner],
    torch_ref: Runner | None,
    onnx_ref: Runner,
    data: ValidationData,
    classification: bool,
    outputs: tuple[str, ...],
    progress: Callable[[str, int, int], None] | None = None,
    total: int | None = None,
) -> dict[str, Measured]:
    """Stream validation batches once; for each, run references and every runner and accumulate errors."""
    names = ["torch-fp32", "onnx-fp32", *runners]
    measured = {name: Measured() for name in names}
    for name in names:
        if torch_ref is not None:
            measured[name].vs_torch = Comparison(outputs, classification)
        measured[name].vs_onnx = Comparison(outputs, classification)
        if data.labelled and classification:
            measured[name].accuracy = Accuracy()
    done = 0
    for batch in data.batches():
        ref_t = torch_ref.run(batch.feed) if torch_ref is not None else None
        ref_o = onnx_ref.run(batch.feed)
        results = {"torch-fp32": ref_t, "onnx-fp32": ref_o}
        for name, runner in runners.items():
            if measured[name].error:
                continue
            try:
                results[name] = runner.run(batch.feed)
            except Exception as exc:  # a backend failing at run time is that target's error, not the build's
                measured[name].error = f"running the artifact failed: {type(exc).__name__}: {str(exc)[:300]}"
                log.debug("runner %s failed", name, exc_info=True)
        for name, out in results.items():
            if out is None or measured[name].error:
                continue
            m = measured[name]
            if ref_t is not None and m.vs_torch is not None:
                m.vs_torch.update(ref_t, out)
            m.vs_onnx.update(ref_o, out)
            if m.accuracy is not None and batch.labels is not None:
                m.accuracy.update(out[outputs[0]], batch.labels)
        done += batch.size
        if progress is not None:
            progress("validation", done, total or done)
    if torch_ref is None:
        del measured["torch-fp32"]
    return measured


def time_runners(
    runners: dict[str, tuple[Runner, int, int]],
    feed: Feed,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Latency of each runner on the same feed: ``runners`` maps name -> (runner, warmup, runs)."""
    results = {}
    for name, (runner, warmup, runs) in runners.items():
        try:
            results[name] = latency.measure(
                lambda r=runner: r.run(feed), warmup, runs,
                (lambda d, t, n=name: progress(f"latency {n}", d, t)) if progress else None,
            )
        except Exception as exc:
            results[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return results


def latency_feed(data: ValidationData, specs: tuple[TensorSpec, ...], shapes: dict[str, tuple[int, ...]], batch: int | None) -> Feed:
    """The timing input: real validation samples, as many as the declared (or profile) batch size."""
    first = next(iter(data.batches()), None)
    feed = {}
    for s in specs:
        want = batch or (shapes.get(s.name) or s.example_shape())[0]
        if first is None:
            from edgekit.export import example_inputs

            return example_inputs(specs, {k: (want, *v[1:]) for k, v in shapes.items()})
        arr = first.feed[s.name]
        reps = int(np.ceil(want / arr.shape[0]))
        feed[s.name] = np.ascontiguousarray(np.concatenate([arr] * reps)[:want]) if reps > 1 else np.ascontiguousarray(arr[:want])
    return feed


def reference_runner(reference: Reference, threads: int) -> Runner:
    from edgekit.backends.ort import OrtRunner

    return OrtRunner(Path(reference.path), reference.inputs, reference.outputs, threads)
