"""Torch-side compression before export: one module per method, registered by name in STEPS.

A ``[[compress]]`` table becomes frozen settings (``parse_step``); the same methods are a Python API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from edgekit.compress.distill import Capture, DistillSettings, distill
from edgekit.compress.low_rank import LowRankSettings, check_patterns, low_rank
from edgekit.compress.prune import PruneSettings, excluded_modules, prune
from edgekit.compress.qat import QATSettings, qat
from edgekit.errors import ConfigError, did_you_mean
from edgekit.tables import parse_table, to_table
from edgekit.types import FeedSource

__all__ = [
    "STEPS",
    "CompressContext",
    "DistillSettings",
    "LowRankSettings",
    "PruneSettings",
    "QATSettings",
    "StepSettings",
    "StepSpec",
    "check_step",
    "distill",
    "low_rank",
    "parse_step",
    "parse_steps",
    "prune",
    "qat",
    "run_step",
    "settings_table",
    "spec_of",
]

StepSettings = PruneSettings | LowRankSettings | DistillSettings | QATSettings


@dataclass
class CompressContext:
    """What a step may need besides the model; the pipeline fills it once for all steps."""

    example_inputs: tuple[torch.Tensor, ...]
    """One batch of inputs, in forward() order: traced for pruning dependencies and used to measure error."""
    train: FeedSource | None = None
    """Training data for distill / qat: batches keyed by input name; labels may be None."""
    input_names: tuple[str, ...] = ()
    """Input names in forward() order, to turn a feed dict into positional tensors."""
    teacher: nn.Module | None = None
    """The uncompressed model as loaded; never modified."""
    finetune: Callable[[nn.Module, int], None] | None = None
    """Called between gradual pruning steps with the model and the 1-based step index."""
    progress: Callable[[str, int, int], None] | None = None
    """Called after each epoch of a training step with (label, epoch, epochs); the console's ``advance`` fits."""


@dataclass(frozen=True)
class StepSpec:
    """One registered method: its settings class, how to run it, and whether it needs training data."""

    name: str
    settings: type
    run: Callable[[nn.Module, Any, CompressContext], tuple[nn.Module, dict[str, Any]]]
    needs_train: bool
    summary: str


def _run_prune(model: nn.Module, s: PruneSettings, ctx: CompressContext) -> tuple[nn.Module, dict[str, Any]]:
    return prune(model, s, ctx.example_inputs, finetune=ctx.finetune)


def _run_low_rank(model: nn.Module, s: LowRankSettings, ctx: CompressContext) -> tuple[nn.Module, dict[str, Any]]:
    return low_rank(model, s)


def _run_distill(model: nn.Module, s: DistillSettings, ctx: CompressContext) -> tuple[nn.Module, dict[str, Any]]:
    if ctx.teacher is None:
        raise ConfigError("[[compress]] method = 'distill' needs a teacher model; it is the model as loaded")
    return distill(model, ctx.teacher, s, _train(ctx, "distill"), ctx.input_names, on_epoch=_epoch_hook(ctx, "distill"))


def _run_qat(model: nn.Module, s: QATSettings, ctx: CompressContext) -> tuple[nn.Module, dict[str, Any]]:
    return qat(model, s, _train(ctx, "qat"), ctx.input_names, teacher=ctx.teacher, on_epoch=_epoch_hook(ctx, "qat"))


def _epoch_hook(ctx: CompressContext, method: str) -> Callable[[int, int, float], None] | None:
    if ctx.progress is None:
        return None
    report = ctx.progress
    return lambda epoch, epochs, loss: report(f"{method} epochs (loss {loss:.4g})", epoch, epochs)


def _train(ctx: CompressContext, method: str) -> FeedSource:
    if ctx.train is None:
        raise ConfigError(
            f"[[compress]] method = '{method}' needs training data; add a [train] table, e.g. [train] data = \"train.npz\""
        )
    return ctx.train


STEPS: dict[str, StepSpec] = {
    "prune": StepSpec("prune", PruneSettings, _run_prune, False, "remove channels (structured) or weights (unstructured)"),
    "low_rank": StepSpec("low_rank", LowRankSettings, _run_low_rank, False, "SVD-factorise Linear/Conv2d layers"),
    "distill": StepSpec("distill", DistillSettings, _run_distill, True, "train the model against the teacher"),
    "qat": StepSpec("qat", QATSettings, _run_qat, True, "fine-tune under int8 fake quantization"),
}


# ---------------------------------------------------------------- parsing


def parse_step(table: dict[str, Any], index: int) -> StepSettings:
    """Turn the ``index``-th (0-based) ``[[compress]]`` table into its method's settings; ConfigError if malformed."""
    where = f"[[compress]] #{index + 1}"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table, e.g. [[compress]] method = \"prune\"")
    if "method" not in table:
        raise ConfigError(f"{where} needs 'method', one of: {', '.join(STEPS)}")
    method = table["method"]
    if method not in STEPS:
        raise ConfigError(f"{where} method = {method!r} is not one of {', '.join(STEPS)}{did_you_mean(method, STEPS)}")
    return parse_table(STEPS[method].settings, table, f"{where} (method = '{method}')", skip=("method",))


def parse_steps(tables: list[Any], onnx_source: bool = False, has_train: bool = False) -> tuple[StepSettings, ...]:
    """Every ``[[compress]]`` table, checked against what the steps need from the rest of the config: a torch
    model (not ``onnx_source``), and ``[train]`` data (``has_train``) for the training methods."""
    if tables and onnx_source:
        raise ConfigError(
            "[[compress]] works on a torch model, but [model] source is an ONNX file; remove [[compress]] "
            "or give the torch model (file.py:factory) instead"
        )
    steps = tuple(parse_step(t, i) for i, t in enumerate(tables))
    for i, step in enumerate(steps):
        if STEPS[step.method].needs_train and not has_train:
            raise ConfigError(
                f"[[compress]] #{i + 1} method = '{step.method}' needs training data: add a [train] section, "
                "e.g. [train] data = \"train.npz\" (labels = \"labels\" adds the hard-label loss)"
            )
    return steps


def check_step(settings: StepSettings, model: nn.Module, index: int) -> None:
    """Check the layer and module names a step refers to against the loaded model, before any work starts.

    Later steps see the model earlier steps made; pruning keeps module names and low_rank keeps a
    factorised layer's name (as a container), so the loaded model's names are the ones to check.
    """
    where = f"[[compress]] #{index + 1} (method = '{spec_of(settings).name}')"
    try:
        if isinstance(settings, PruneSettings):
            excluded_modules(model, settings.exclude)
        elif isinstance(settings, LowRankSettings):
            check_patterns(model, settings)
        elif isinstance(settings, DistillSettings):
            Capture(model, settings.features).close()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


# ---------------------------------------------------------------- running


def spec_of(settings: StepSettings) -> StepSpec:
    """The registered method a settings object belongs to."""
    spec = next((s for s in STEPS.values() if isinstance(settings, s.settings)), None)
    if spec is None:
        raise TypeError(f"not a compress settings object: {type(settings).__name__}")
    return spec


def settings_table(settings: StepSettings) -> dict[str, Any]:
    """The settings as a ``[[compress]]`` table (lists for tuples, unset options left out): ``parse_step`` reads it back."""
    return to_table(settings)


def run_step(model: nn.Module, settings: StepSettings, ctx: CompressContext) -> tuple[nn.Module, dict[str, Any]]:
    """Run one step on a copy of ``model`` (the argument is untouched); return the new model, in eval mode, and the method's report."""
    new_model, report = spec_of(settings).run(model, settings, ctx)
    return new_model.eval(), report
