"""Torch-side compression before export: one module per method, registered by name in STEPS.

A ``[[compress]]`` table becomes frozen settings (``parse_step``); the same methods are a Python API.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from edgekit.compress.distill import Capture, DistillSettings, distill
from edgekit.compress.low_rank import LowRankSettings, check_patterns, low_rank
from edgekit.compress.prune import PruneSettings, excluded_modules, prune
from edgekit.compress.qat import QATSettings, qat
from edgekit.errors import ConfigError, did_you_mean
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
    "apply_step",
    "check_step",
    "distill",
    "low_rank",
    "parse_step",
    "prune",
    "qat",
    "run_step",
    "settings_table",
    "spec_of",
]

log = logging.getLogger(__name__)

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
    cls = STEPS[method].settings
    where = f"{where} (method = '{method}')"
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key == "method":
            continue
        if key not in fields:
            hint = did_you_mean(key, fields, f"; valid keys: {', '.join(fields)}")
            raise ConfigError(f"unknown key '{key}' in {where}{hint}")
        values[key] = _coerce(value, hints[key], f"{where} {key}")
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a TOML value against a settings field's type; lists become tuples so settings stay frozen."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        kinds = [a for a in args if a is not type(None)]
        for kind in kinds:
            try:
                return _coerce(value, kind, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where} must be {' or '.join(_name(k) for k in kinds)}, got {value!r}")
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list of {_name(args[0])}, e.g. [\"fc*\"], got {value!r}")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and hint is not bool or not isinstance(value, hint):
        raise ConfigError(f"{where} must be {_name(hint)}, got {value!r}")
    return value


def _name(kind: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(kind, str(kind))


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
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(settings).items() if v is not None}


def run_step(model: nn.Module, settings: StepSettings, ctx: CompressContext) -> tuple[nn.Module, dict[str, Any]]:
    """Run one step on a copy of ``model`` (the argument is untouched); return the new model, in eval mode, and the method's report."""
    new_model, report = spec_of(settings).run(model, settings, ctx)
    return new_model.eval(), report


def apply_step(model: nn.Module, settings: StepSettings, ctx: CompressContext) -> tuple[nn.Module, dict[str, Any]]:
    """Run one step on a copy of ``model``; return the new model and a JSON-able record of what changed.

    The record holds the method's own report plus, measured here in torch: parameter count, serialized
    state-dict bytes, and the output error against the teacher (or, without one, the step's input model)
    on ``ctx.example_inputs``, before and after the step. (A build measures more: see ``compress.run``.)
    """
    spec = spec_of(settings)
    reference = ctx.teacher if ctx.teacher is not None else model
    before = _measure(model, reference, ctx.example_inputs)
    new_model, report = run_step(model, settings, ctx)
    after = _measure(new_model, reference, ctx.example_inputs)
    record: dict[str, Any] = {"method": spec.name, **report}
    for key in before:
        record[f"{key}_before"] = before[key]
        record[f"{key}_after"] = after[key]
    log.info(
        "%s: params %d -> %d, output rel. error vs teacher %.4g -> %.4g",
        spec.name, before["params"], after["params"], before["rel_error"], after["rel_error"],
    )
    return new_model, record


def _measure(model: nn.Module, reference: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    params = sum(p.numel() for p in model.parameters())
    return {"params": int(params), "bytes": buf.tell(), "rel_error": _rel_error(model, reference, example_inputs)}


@torch.no_grad()
def _rel_error(model: nn.Module, reference: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> float:
    """||y - y_ref|| / ||y_ref|| over all float outputs, both models in eval mode (modes restored after)."""
    if model is reference:
        return 0.0
    modes = [(m, m.training) for m in (model, reference)]
    try:
        model.eval()
        reference.eval()
        y, y_ref = _flat(model(*example_inputs)), _flat(reference(*example_inputs))
    finally:
        for m, training in modes:
            m.train(training)
    if y.shape != y_ref.shape:
        return float("nan")
    return round(float((y - y_ref).norm() / y_ref.norm().clamp_min(1e-12)), 6)


def _flat(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out.detach().float().flatten()
    if isinstance(out, dict):
        out = list(out.values())
    return torch.cat([_flat(o) for o in out if isinstance(o, (torch.Tensor, list, tuple, dict))])

