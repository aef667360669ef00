"""Knowledge distillation: train the (compressed) student to match the teacher on the training data.

Loss = alpha · KL(softmax(t/T) ‖ softmax(s/T)) · T² + (1 - alpha) · CE(s, labels) + feature_weight · hidden-state MSE.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.errors import ConfigError, DataError, did_you_mean
from edgekit.types import Batch, FeedSource

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class DistillSettings:
    """The training loop: epochs over the data, learning rate, temperature, KD/CE mix and feature terms."""

    method: str = field(default="distill", init=False)
    epochs: int = 3
    lr: float = 1e-3
    temperature: float = 4.0
    alpha: float = 0.9
    batch_size: int = 32
    features: tuple[str, ...] = ()
    feature_weight: float = 1.0
    optimizer: str = "adam"
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        check_loop(self.epochs, self.lr, self.batch_size)
        if self.temperature <= 0:
            raise ConfigError(f"temperature = {self.temperature} must be > 0, e.g. temperature = 4.0")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha = {self.alpha} must be in [0, 1]: the weight of the KD term against cross-entropy")
        if self.feature_weight < 0:
            raise ConfigError(f"feature_weight = {self.feature_weight} must be >= 0")
        if self.optimizer not in OPTIMIZERS:
            hint = did_you_mean(self.optimizer, OPTIMIZERS)
            raise ConfigError(f"optimizer = {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}{hint}")


def check_loop(epochs: int, lr: float, batch_size: int) -> None:
    """The training-loop settings checks shared by distill and qat."""
    if epochs < 1:
        raise ConfigError(f"epochs = {epochs} must be at least 1")
    if not lr > 0:
        raise ConfigError(f"lr = {lr} must be > 0, e.g. lr = 0.001")
    if batch_size < 1:
        raise ConfigError(f"batch_size = {batch_size} must be at least 1")


def distill(
    student: nn.Module,
    teacher: nn.Module,
    settings: DistillSettings,
    train: FeedSource,
    input_names: tuple[str, ...] = (),
    on_epoch: Callable[[int, int, float], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a copy of ``student`` against ``teacher`` (both untouched); return it, in eval mode, and a report.

    Response distillation uses the class axis (dim 1) of the first output; without integer class labels the
    loss is KD alone (alpha = 1). Feature distillation compares hidden states of the same-named modules, captured
    with forward hooks; where pruning narrowed the student, a learnable 1×1 conv / linear adapter maps its width
    to the teacher's (trained with the student, then discarded). ``on_epoch(epoch, epochs, mean_loss)`` is called
    after every epoch (progress display).
    """
    s = settings
    student = copy.deepcopy(student)
    teacher_mode = teacher.training
    teacher.eval()
    with torch.random.fork_rng():
        torch.manual_seed(s.seed)
        try:
            report = _train(student, teacher, s, train, input_names, on_epoch)
        finally:
            teacher.train(teacher_mode)
    student.eval()
    return student, report


def _train(
    student: nn.Module, teacher: nn.Module, s: DistillSettings, train: FeedSource, names: tuple[str, ...],
    on_epoch: Callable[[int, int, float], None] | None,
) -> dict[str, Any]:
    t_feats, s_feats = Capture(teacher, s.features), Capture(student, s.features)
    try:
        first = next(iter(train.batches(s.batch_size)), None)
        if first is None:
            raise DataError(f"the training data {train.description!r} yields no batches")
        use_labels = usable_labels(first) is not None
        adapters = _adapters(student, teacher, s_feats, t_feats, feed_tensors(first, names))
        agreement_before = agreement(student, teacher, train, s.batch_size, names)
        params = list(student.parameters()) + list(adapters.parameters())
        opt = torch.optim.Adam(params, lr=s.lr) if s.optimizer == "adam" else torch.optim.SGD(params, lr=s.lr, momentum=0.9)
        student.train()
        epoch_loss, epoch_kd = [], []
        for epoch in range(1, s.epochs + 1):
            total = kd_total = 0.0
            count = 0
            for batch in train.batches(s.batch_size):
                x = feed_tensors(batch, names)
                with torch.no_grad():
                    t_out = first_output(teacher(*x))
                    t_hidden = t_feats.take()
                s_out = first_output(student(*x))
                s_hidden = s_feats.take()
                kd = kd_loss(s_out, t_out, s.temperature)
                labels = usable_labels(batch) if use_labels else None
                loss = kd if labels is None else s.alpha * kd + (1 - s.alpha) * F.cross_entropy(s_out, check_labels(labels, s_out))
                for name in s.features:
                    loss = loss + s.feature_weight * F.mse_loss(adapters[_key(name)](s_hidden[name]), t_hidden[name])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                n = x[0].shape[0]
                total += loss.item() * n
                kd_total += kd.item() * n
                count += n
            epoch_loss.append(round(total / count, 6))
            epoch_kd.append(round(kd_total / count, 6))
            log.info("distill epoch %d/%d: loss %.5f (kd %.5f)", epoch, s.epochs, epoch_loss[-1], epoch_kd[-1])
            if on_epoch is not None:
                on_epoch(epoch, s.epochs, epoch_loss[-1])
        student.eval()
        report: dict[str, Any] = {
            "epochs": s.epochs,
            "epoch_loss": epoch_loss,
            "epoch_kd": epoch_kd,
            "labels": "used" if use_labels else "none (KD only)",
            "top1_agreement_before": agreement_before,
            "top1_agreement_after": agreement(student, teacher, train, s.batch_size, names),
        }
        if len(adapters):
            report["adapters"] = sorted(adapters.keys())  # student width != teacher width at these features
        return report
    finally:
        t_feats.close()
        s_feats.close()


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) · T², averaged over samples (and positions, for dense outputs)."""
    c = student.shape[1]
    s = student.movedim(1, -1).reshape(-1, c) / temperature
    t = teacher.movedim(1, -1).reshape(-1, c) / temperature
    return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="batchmean", log_target=True) * temperature**2


def feed_tensors(batch: Batch, names: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
    """Positional model inputs from a feed dict, in ``names`` order (the feed's own order if none given)."""
    keys = names or tuple(batch.feed)
    missing = [k for k in keys if k not in batch.feed]
    if missing:
        raise DataError(f"the training data has no input {missing[0]!r}; it has {', '.join(batch.feed)}")
    return tuple(torch.from_numpy(np.ascontiguousarray(batch.feed[k])) for k in keys)


def first_output(out: Any) -> torch.Tensor:
    """The tensor the losses use: the output itself, or the first tensor of a tuple/list/dict output."""
    while not isinstance(out, torch.Tensor):
        if isinstance(out, dict):
            out = next(iter(out.values()))
        elif isinstance(out, (list, tuple)) and out:
            out = out[0]
        else:
            raise DataError(f"the model output is {type(out).__name__}, not a tensor the losses can use")
    return out


def usable_labels(batch: Batch) -> np.ndarray | None:
    """Integer class labels, or None (no labels, or regression targets the CE term cannot use)."""
    labels = batch.labels
    if labels is None or not np.issubdtype(np.asarray(labels).dtype, np.integer):
        return None
    return np.asarray(labels)


def check_labels(labels: np.ndarray, logits: torch.Tensor) -> torch.Tensor:
    """Labels as an int64 tensor, checked to be class ids that fit ``logits`` (DataError otherwise)."""
    target = torch.from_numpy(labels.astype(np.int64))
    if tuple(target.shape) != (logits.shape[0], *logits.shape[2:]):
        raise DataError(f"labels of shape {tuple(target.shape)} do not fit model outputs of shape {tuple(logits.shape)}")
    if target.min() < 0 or target.max() >= logits.shape[1]:
        raise DataError(f"labels must be class ids in [0, {logits.shape[1]}), got {int(target.min())}..{int(target.max())}")
    return target


@torch.no_grad()
def agreement(student: nn.Module, teacher: nn.Module, train: FeedSource, batch_size: int, names: tuple[str, ...]) -> float:
    """Fraction of samples (positions) where argmax over dim 1 of student and teacher agree, in eval mode."""
    mode = student.training
    student.eval()
    same = total = 0
    for batch in train.batches(batch_size):
        x = feed_tensors(batch, names)
        s, t = first_output(student(*x)), first_output(teacher(*x))
        same += int((s.argmax(1) == t.argmax(1)).sum())
        total += s.argmax(1).numel()
    student.train(mode)
    return round(same / max(total, 1), 6)


class Capture:
    """Forward hooks storing the outputs of named modules during one forward pass."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]) -> None:
        modules = dict(model.named_modules())
        self.store: dict[str, torch.Tensor] = {}
        self.handles = []
        for name in names:
            if name not in modules:
                hint = did_you_mean(name, [n for n in modules if n])
                raise ConfigError(f"distill features entry '{name}' is not a module of the model{hint}")
            self.handles.append(modules[name].register_forward_hook(self._hook(name)))

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            self.store[name] = first_output(out)

        return hook

    def take(self) -> dict[str, torch.Tensor]:
        out, self.store = self.store, {}
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _key(name: str) -> str:
    return name.replace(".", "__")  # ModuleDict keys may not contain dots


def _adapters(student: nn.Module, teacher: nn.Module, s_cap: Capture, t_cap: Capture, x: tuple[torch.Tensor, ...]) -> nn.ModuleDict:
    """An identity or a learnable width adapter per feature, sized from one probe forward pass."""
    adapters = nn.ModuleDict()
    if not s_cap.handles:
        return adapters
    with torch.no_grad():
        teacher(*x)
        mode = student.training
        student.eval()
        student(*x)
        student.train(mode)
    s_hidden, t_hidden = s_cap.take(), t_cap.take()
    for name, t in t_hidden.items():
        s = s_hidden[name]
        if s.shape == t.shape:
            adapters[_key(name)] = nn.Identity()
        elif s.dim() >= 3 and s.shape[2:] == t.shape[2:] and s.shape[0] == t.shape[0] and s.dim() <= 5:
            conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[s.dim() - 3]
            adapters[_key(name)] = conv(s.shape[1], t.shape[1], 1, bias=False)
        elif s.dim() >= 2 and s.shape[:-1] == t.shape[:-1]:
            adapters[_key(name)] = nn.Linear(s.shape[-1], t.shape[-1], bias=False)
        else:
            raise ConfigError(
                f"distill feature '{name}' has shape {tuple(s.shape)} in the student but {tuple(t.shape)} in the teacher; "
                "only the channel (dim 1) or last dimension may differ - pick another module in 'features'"
            )
        if not isinstance(adapters[_key(name)], nn.Identity):
            log.info("distill: feature %s needs an adapter %s -> %s", name, tuple(s.shape), tuple(t.shape))
    return adapters

