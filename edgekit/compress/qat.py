"""Quantization-aware fine-tuning for the INT8 targets: train under simulated int8, return a float model.

The float result exports like any model; each INT8 target then quantizes it through its normal path.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.compress.distill import check_loop, check_labels, feed_tensors, first_output, usable_labels
from edgekit.errors import ConfigError, DataError
from edgekit.types import FeedSource

log = logging.getLogger(__name__)

LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class QATSettings:
    """The fine-tuning loop under fake quantization.

    ``lr`` is small on purpose: Adam moves every weight by about ``lr`` per step whatever its gradient, and the
    int8 grid step of a weight is max|w|/127 (docs/compression.md, "qat", has the measurement behind the default).
    """

    method: str = field(default="qat", init=False)
    epochs: int = 1
    lr: float = 1e-5
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        check_loop(self.epochs, self.lr, self.batch_size)


class FakeQuant(nn.Module):
    """A Conv/Linear run on int8-rounded weights and uint8-rounded inputs; the wrapped layer keeps the float weights."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.observe = True
        self.register_buffer("lo", torch.tensor(float("inf")))
        self.register_buffer("hi", torch.tensor(float("-inf")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observe:
            with torch.no_grad():
                self.lo = torch.minimum(self.lo, x.detach().min())
                self.hi = torch.maximum(self.hi, x.detach().max())
        lo, hi = self.lo.clamp(max=0.0), self.hi.clamp(min=0.0)  # zero must be exact
        scale = ((hi - lo) / 255.0).clamp_min(1e-8).float()
        zero = torch.round(-lo / scale).clamp(0, 255).to(torch.int32)
        xq = torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)
        w = self.layer.weight
        w_scale = (w.detach().abs().amax(dim=tuple(range(1, w.dim()))) / 127.0).clamp_min(1e-8).float()
        wq = torch.fake_quantize_per_channel_affine(w, w_scale, torch.zeros_like(w_scale, dtype=torch.int32), 0, -127, 127)
        if isinstance(self.layer, nn.Linear):
            return F.linear(xq, wq, self.layer.bias)
        return self.layer._conv_forward(xq, wq, self.layer.bias)


def qat(
    model: nn.Module,
    settings: QATSettings,
    train: FeedSource,
    input_names: tuple[str, ...] = (),
    teacher: nn.Module | None = None,
    on_epoch: Callable[[int, int, float], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune a copy of ``model`` under fake quantization; return the float model (eval mode) and a report.

    Every Conv/Linear is wrapped to fake-quantize its weight (int8, symmetric, per output channel) and its input
    (uint8, affine, per tensor, min/max observed like ONNX Runtime's MinMax calibration), with straight-through
    gradients. The loss is MSE to the teacher's outputs when there is a teacher, else cross-entropy on integer
    labels; BatchNorm statistics stay frozen. The weights of the best epoch by that objective (measured
    under fake quantization on the training data) are kept - the input weights when no epoch improved on them.
    Then the wrappers are removed: a plain FLOAT model exports with either exporter and runs everywhere, and
    each INT8 target quantizes it through its normal static path, landing on weights that sit well on the grid.

    The report's ``int8_rel_error_before/after`` is the relative output error of the fake-quantized model
    against the teacher (or, without one, against the float input model) on the training data.
    ``on_epoch(epoch, epochs, mean_loss)`` is called after every epoch (progress display).
    """
    s = settings
    reference = teacher if teacher is not None else copy.deepcopy(model).eval()
    model = copy.deepcopy(model)
    first = next(iter(train.batches(s.batch_size)), None)
    if first is None:
        raise DataError(f"the training data {train.description!r} yields no batches")
    if teacher is None and usable_labels(first) is None:
        raise ConfigError("qat needs a teacher model or integer class labels in the [train] data (labels = ...)")
    wrapped = _wrap(model)
    if not wrapped:
        raise ConfigError("qat found no Conv/Linear layer to fine-tune; remove the qat step")
    ref_mode = reference.training
    reference.eval()
    try:
        with torch.random.fork_rng():
            torch.manual_seed(s.seed)
            report = _tune(model, reference, teacher is not None, s, train, input_names, wrapped, on_epoch)
    finally:
        reference.train(ref_mode)
        for name, fq in wrapped:
            _set(model, name, fq.layer)  # back to float layers holding the tuned weights
    model.eval()
    return model, report


def _wrap(model: nn.Module) -> list[tuple[str, FakeQuant]]:
    layers = [(n, m) for n, m in model.named_modules() if n and isinstance(m, LAYER_TYPES)]
    wrapped = []
    for name, layer in layers:
        fq = FakeQuant(layer)
        _set(model, name, fq)
        wrapped.append((name, fq))
    return wrapped


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _tune(
    model: nn.Module,
    reference: nn.Module,
    use_teacher: bool,
    s: QATSettings,
    train: FeedSource,
    names: tuple[str, ...],
    wrapped: list[tuple[str, FakeQuant]],
    on_epoch: Callable[[int, int, float], None] | None,
) -> dict[str, Any]:
    model.eval()
    with torch.no_grad():  # calibration pass: observe activation ranges before anything is rounded
        for batch in train.batches(s.batch_size):
            model(*feed_tensors(batch, names))
    before = _error(model, reference, train, s.batch_size, names)
    # Keep the best weights seen (the input ones included): with few, tiny gradients Adam's normalised steps
    # can move weights across int8 grid points for no gain, and a tuning run must never leave things worse.
    best = (before if use_teacher else _cross_entropy(model, train, s.batch_size, names), 0, copy.deepcopy(model.state_dict()))
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    epoch_loss, epoch_score = [], []
    for epoch in range(1, s.epochs + 1):
        model.train()
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        total, count = 0.0, 0
        for batch in train.batches(s.batch_size):
            x = feed_tensors(batch, names)
            out = first_output(model(*x))
            if use_teacher:
                with torch.no_grad():
                    target = first_output(reference(*x))
                loss = F.mse_loss(out, target)
            else:
                loss = F.cross_entropy(out, check_labels(usable_labels(batch), out))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * x[0].shape[0]
            count += x[0].shape[0]
        epoch_loss.append(round(total / count, 6))
        log.info("qat epoch %d/%d: loss %.5f", epoch, s.epochs, epoch_loss[-1])
        if on_epoch is not None:
            on_epoch(epoch, s.epochs, epoch_loss[-1])
        score = _error(model, reference, train, s.batch_size, names) if use_teacher else _cross_entropy(model, train, s.batch_size, names)
        epoch_score.append(score)
        if score < best[0]:
            best = (score, epoch, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    for _, fq in wrapped:
        fq.observe = False
    after = _error(model, reference, train, s.batch_size, names)
    return {
        "epochs": s.epochs,
        "layers": len(wrapped),
        "epoch_loss": epoch_loss,
        "loss": "mse to teacher" if use_teacher else "cross-entropy",
        ("epoch_int8_rel_error" if use_teacher else "epoch_int8_cross_entropy"): epoch_score,
        "kept_epoch": best[1],
        "int8_rel_error_before": before,
        "int8_rel_error_after": after,
        "returns": "float model (fake quantization removed); quantize it with the target's static int8 path",
    }


@torch.no_grad()
def _cross_entropy(model: nn.Module, train: FeedSource, batch_size: int, names: tuple[str, ...]) -> float:
    """Mean cross-entropy of the fake-quantized model on the labelled training data, eval mode, observers frozen."""
    observing = [m for m in model.modules() if isinstance(m, FakeQuant) and m.observe]
    for m in observing:
        m.observe = False
    model.eval()
    total, count = 0.0, 0
    for batch in train.batches(batch_size):
        out = first_output(model(*feed_tensors(batch, names)))
        total += float(F.cross_entropy(out, check_labels(usable_labels(batch), out), reduction="sum"))
        count += out.shape[0]
    for m in observing:
        m.observe = True
    return round(total / max(count, 1), 6)


@torch.no_grad()
def _error(model: nn.Module, reference: nn.Module, train: FeedSource, batch_size: int, names: tuple[str, ...]) -> float:
    """||y_fq - y_ref|| / ||y_ref|| over the training data, eval mode, observers frozen."""
    observing = [m for m in model.modules() if isinstance(m, FakeQuant) and m.observe]
    for m in observing:
        m.observe = False
    model.eval()
    diff = norm = 0.0
    for batch in train.batches(batch_size):
        x = feed_tensors(batch, names)
        y, y_ref = first_output(model(*x)).float(), first_output(reference(*x)).float()
        diff += float((y - y_ref).square().sum())
        norm += float(y_ref.square().sum())
    for m in observing:
        m.observe = True
    return round((diff / max(norm, 1e-30)) ** 0.5, 6)
