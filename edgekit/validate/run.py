"""Stream the validation data: every artifact and both references see the same batches; errors accumulate."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edgekit.backends.base import Runner
from edgekit.config import DataConfig
from edgekit.faults import raise_if_signalled
from edgekit.types import Batch, Feed, FeedSource, Metrics, Reference, SourceModel, TensorSpec, batch_rows
from edgekit.validate.metrics import Accuracy, Comparison, PairedAccuracy

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
class Observed:
    """The running comparisons of one runner with the references, or the error that stopped it."""

    vs_onnx: Comparison
    vs_torch: Comparison | None = None
    accuracy: Accuracy | None = None
    error: str = ""
    paired: PairedAccuracy | None = None  # against the accuracy reference (torch-fp32 when there is one)

    @property
    def samples(self) -> int:
        return next(iter(self.vs_onnx.errors.values())).samples

    def metrics(self, top1_drop: float | None = None) -> Metrics:
        accuracy = self.accuracy.percent if self.accuracy is not None and self.accuracy.total else None
        primary = self.vs_torch if self.vs_torch is not None else self.vs_onnx
        agreement = (primary.agreement.same, primary.agreement.total) if primary.classification and primary.agreement.total else None
        paired = self.paired.table if self.paired is not None and accuracy is not None else None
        histogram = primary.histogram("torch-fp32" if self.vs_torch is not None else "onnx-fp32")
        return Metrics(self.vs_onnx.summary(), self.vs_torch.summary() if self.vs_torch is not None else None,
                       accuracy, top1_drop if accuracy is not None else None, paired, agreement, histogram)


@dataclass
class ValidationData:
    """The batches every runner sees, and how they were obtained (real data or synthetic inputs)."""

    batches: Callable[[], Iterator[Batch]]
    description: str
    labelled: bool
    samples: int | None = None  # how many samples the batches hold, when known (the progress bar's total)


def synthetic(specs: tuple[TensorSpec, ...], shapes: dict[str, tuple[int, ...]], count: int = 32) -> ValidationData:
    from edgekit.export import example_inputs

    def batches() -> Iterator[Batch]:
        for i in range(count):
            yield Batch(example_inputs(specs, shapes, seed=1000 + i))

    per_batch = next(iter(shapes.values()), (1,))[0] if shapes else 1
    return ValidationData(batches, f"{count} synthetic random batches (no [validation] data given)", False, count * per_batch)


def validation_data(
    source: FeedSource | None, cfg: DataConfig | None, specs: tuple[TensorSpec, ...], shapes: dict[str, tuple[int, ...]],
    synthetic_batches: int = 32,
) -> ValidationData:
    """The [validation] data in the batches every runner sees (batch 1 unless axis 0 is dynamic), or seeded random
    inputs of the declared shapes when there is none."""
    if source is None or cfg is None:
        return synthetic(specs, shapes, synthetic_batches)
    size = batch_rows(specs, cfg.batch_size)
    labelled = cfg.labels is not None
    count = getattr(source, "count", None)
    return ValidationData(lambda: source.batches(size), source.description + (f", labels '{cfg.labels}'" if labelled else ""),
                          labelled, count() if callable(count) else None)


def observe(
    runners: dict[str, Runner],
    torch_ref: Runner | None,
    onnx_ref: Runner,
    data: ValidationData,
    classification: bool,
    outputs: tuple[str, ...],
    progress: Callable[[str, int, int], None] | None = None,
    total: int | None = None,
) -> dict[str, Observed]:
    """Stream validation batches once; for each, run references and every runner and accumulate errors.
    Keys: "torch-fp32" (when ``torch_ref`` is given), "onnx-fp32", then every runner's name."""
    names = ["torch-fp32", "onnx-fp32", *runners]
    observed = {
        name: Observed(
            Comparison(outputs, classification),
            Comparison(outputs, classification) if torch_ref is not None else None,
            Accuracy() if data.labelled and classification else None,
            paired=PairedAccuracy() if data.labelled and classification else None,
        )
        for name in names
    }
    done = 0
    total = total or data.samples
    for batch in data.batches():
        ref_t = torch_ref.run(batch.feed) if torch_ref is not None else None
        ref_o = onnx_ref.run(batch.feed)
        results = {"torch-fp32": ref_t, "onnx-fp32": ref_o}
        for name, runner in runners.items():
            if observed[name].error:
                continue
            try:
                results[name] = runner.run(batch.feed)
            except Exception as exc:  # a backend failing at run time is that target's error, not the build's
                raise_if_signalled()  # not when it was Ctrl-C, re-raised by the runtime as its own error
                observed[name].error = f"running the artifact failed: {type(exc).__name__}: {str(exc)[:300]}"
                log.debug("runner %s failed", name, exc_info=True)
        for name, out in results.items():
            if out is None or observed[name].error:
                continue
            m = observed[name]
            if ref_t is not None and m.vs_torch is not None:
                m.vs_torch.update(ref_t, out)
            m.vs_onnx.update(ref_o, out)
            if m.accuracy is not None and batch.labels is not None:
                m.accuracy.update(out[outputs[0]], batch.labels)
                ref = ref_t if ref_t is not None else ref_o  # the accuracy reference top1_drop is measured against
                if m.paired is not None:
                    m.paired.update(ref[outputs[0]], out[outputs[0]], batch.labels)
        done += batch.size
        if progress is not None:
            progress("validation", done, max(total or done, done))
    if torch_ref is None:
        del observed["torch-fp32"]
    return observed


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
    from edgekit.backends.onnx.session import OrtRunner

    return OrtRunner(Path(reference.path), reference.inputs, reference.outputs, threads)
