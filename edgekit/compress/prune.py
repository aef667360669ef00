"""Prune Conv/Linear layers: zero single weights (unstructured) or physically remove whole channels (structured).

Structured pruning follows torch-pruning's dependency graph, so every coupled layer is rewired (see _structured).
"""

from __future__ import annotations

import copy
import fnmatch
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from edgekit.errors import ConfigError, ModelError, did_you_mean

log = logging.getLogger(__name__)

LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
CRITERIA = ("l1", "random")
SCOPES = ("local", "global")
SCHEDULES = ("geometric", "linear")


@dataclass(frozen=True)
class PruneSettings:
    """What to prune and how much.

    ``amount`` is the fraction of channels (structured) or weights (unstructured) removed from each layer
    (``scope = "local"``) or across all layers together (``"global"``; structured importance is normalised
    per group, at least one channel always stays). ``exclude`` holds fnmatch patterns matched against module
    names (``"layer4.*"``, a container name excludes everything in it) and class names (``"Linear"``).
    ``steps > 1`` prunes gradually along a geometric or linear ``schedule``, calling the fine-tune callback
    between steps. ``round_to`` keeps structured channel counts multiples of it (e.g. 8).
    """

    method: str = field(default="prune", init=False)
    amount: float = 0.3
    criterion: str = "l1"
    structured: bool = True
    scope: str = "local"
    exclude: tuple[str, ...] = ()
    steps: int = 1
    schedule: str = "geometric"
    round_to: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if not 0.0 <= self.amount < 1.0:
            raise ConfigError(f"amount = {self.amount} must be in [0, 1): the fraction to remove, e.g. amount = 0.3")
        for name, choices in (("criterion", CRITERIA), ("scope", SCOPES), ("schedule", SCHEDULES)):
            value = getattr(self, name)
            if value not in choices:
                raise ConfigError(f"{name} = {value!r} is not one of {', '.join(choices)}{did_you_mean(value, choices)}")
        if self.steps < 1:
            raise ConfigError(f"steps = {self.steps} must be at least 1 (1 = prune in one go)")
        if self.round_to is not None and self.round_to < 1:
            raise ConfigError(f"round_to = {self.round_to} must be a positive channel multiple such as 8, or left out")
        if self.round_to is not None and not self.structured:
            raise ConfigError("round_to applies to structured pruning only; remove it or set structured = true")


def schedule(amount: float, steps: int, kind: str) -> list[float]:
    """The cumulative fraction removed after step 0..steps; geometric removes the same share of what is left each step."""
    if kind == "linear":
        return [amount * i / steps for i in range(steps + 1)]
    return [1.0 - (1.0 - amount) ** (i / steps) for i in range(steps + 1)]


def prune(
    model: nn.Module,
    settings: PruneSettings,
    example_inputs: tuple[torch.Tensor, ...] | torch.Tensor,
    finetune: Callable[[nn.Module, int], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Prune a copy of ``model`` (the argument is untouched); return it and a report of what was removed.

    ``example_inputs`` are traced to find channel dependencies; ``finetune(model, step)`` is called between
    gradual steps (not after the last one: follow with a ``distill`` step for a final fine-tune).
    """
    model = copy.deepcopy(model)
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    excluded = excluded_modules(model, settings.exclude)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LAYER_TYPES) and m not in excluded]
    if not layers:
        raise ConfigError("prune: no Conv/Linear layer is left to prune; loosen 'exclude'")
    report: dict[str, Any] = {"structured": settings.structured, "criterion": settings.criterion, "scope": settings.scope}
    if settings.amount == 0.0:
        return model, {**report, "note": "amount = 0: nothing pruned"}
    if settings.structured:
        report.update(_structured(model, settings, layers, excluded, inputs, finetune))
    else:
        report.update(_unstructured(model, settings, layers, finetune))
    return model, report


def excluded_modules(model: nn.Module, patterns: tuple[str, ...]) -> set[nn.Module]:
    """Modules matched by name or class name, with everything inside them; a pattern matching nothing is an error."""
    named = list(model.named_modules())
    out: set[nn.Module] = set()
    for pattern in patterns:
        hits = [m for n, m in named if n and (fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(type(m).__name__, pattern))]
        if not hits:
            names = [n for n, _ in named if n] + sorted({type(m).__name__ for _, m in named})
            hint = did_you_mean(pattern, names, f"; layer names look like {', '.join(names[:5])}")
            raise ConfigError(f"prune exclude pattern '{pattern}' matches no layer name or type{hint}")
        for m in hits:
            out.update(m.modules())
    return out


# ---------------------------------------------------------------- unstructured


def _unstructured(
    model: nn.Module, s: PruneSettings, layers: list[tuple[str, nn.Module]], finetune: Callable[[nn.Module, int], None] | None
) -> dict[str, Any]:
    """Zero the lowest-scoring weights; random scores are drawn once so every step extends the previous mask.

    Masks are computed here (so counts are exact and gradual steps nest), applied with ``torch.nn.utils.prune``
    and made permanent: no ``weight_orig`` / ``weight_mask`` reaches the export.
    """
    gen = torch.Generator().manual_seed(s.seed)
    fixed = {m: torch.rand(m.weight.shape, generator=gen) for _, m in layers} if s.criterion == "random" else {}
    targets = schedule(s.amount, s.steps, s.schedule)
    for step in range(1, s.steps + 1):
        scores = []
        for _, m in layers:
            score = fixed[m].clone() if fixed else m.weight.detach().abs().float()
            mask = getattr(m, "weight_mask", None)
            if mask is not None:
                score[mask == 0] = -1.0  # already pruned: always first
            scores.append(score)
        if s.scope == "global":
            flat = torch.cat([sc.flatten() for sc in scores])
            masks = _lowest(flat, targets[step]).split([sc.numel() for sc in scores])
            masks = [mk.view_as(sc) for mk, sc in zip(masks, scores)]
        else:
            masks = [_lowest(sc.flatten(), targets[step]).view_as(sc) for sc in scores]
        for (_, m), mask in zip(layers, masks):
            torch_prune.custom_from_mask(m, "weight", mask.to(m.weight.dtype))
        if finetune is not None and step < s.steps:
            finetune(model, step)
    zeroed = total = 0
    for name, m in layers:
        torch_prune.remove(m, "weight")  # bake the mask in: no weight_orig / weight_mask left behind
        zeroed += int((m.weight == 0).sum())
        total += m.weight.numel()
        log.debug("pruned %s: %.1f%% zeros", name, 100.0 * float((m.weight == 0).float().mean()))
    return {"layers": len(layers), "weights_zeroed": zeroed, "sparsity": round(zeroed / max(total, 1), 4)}


def _lowest(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """A 0/1 mask (flat) removing exactly round(fraction * n) of the lowest scores."""
    k = int(round(fraction * scores.numel()))
    mask = torch.ones_like(scores)
    if k:
        mask[torch.argsort(scores, stable=True)[:k]] = 0.0
    return mask


# ---------------------------------------------------------------- structured


def _structured(
    model: nn.Module,
    s: PruneSettings,
    layers: list[tuple[str, nn.Module]],
    excluded: set[nn.Module],
    example_inputs: tuple[torch.Tensor, ...],
    finetune: Callable[[nn.Module, int], None] | None,
) -> dict[str, Any]:
    """Remove whole output channels / neurons with torch-pruning's dependency graph (DepGraph).

    DepGraph follows BatchNorm, depthwise and grouped convs, flatten/reshape, concat/split and residual adds, so
    coupled channels go as one group and every dependent layer is rewired. On top of it, groups whose channels
    reach a model output or are tied to a model input are never pruned, and the pruned model must pass a forward
    pass with unchanged output shapes before it is returned.
    """
    try:
        import torch_pruning as tp
    except ImportError:
        raise ConfigError(
            "structured pruning needs the torch-pruning package: pip install torch-pruning, or set structured = false"
        ) from None
    # inputs that require grad put the model inputs into the autograd graph, so ops fed by them can be found
    inputs = tuple(x.detach().clone().requires_grad_(x.is_floating_point()) for x in example_inputs)
    out_shapes = _output_shapes(model, example_inputs)
    try:
        protected = _io_tied(tp, model, inputs, excluded)
        importance = (
            tp.importance.MagnitudeImportance(p=1, normalizer="mean")
            if s.criterion == "l1"
            else tp.importance.RandomImportance()
        )
        pruner = tp.pruner.BasePruner(
            model,
            inputs,
            importance=importance,
            global_pruning=s.scope == "global",
            pruning_ratio=s.amount,
            iterative_steps=s.steps,
            iterative_pruning_ratio_scheduler=lambda amount, steps: schedule(amount, steps, s.schedule),
            ignored_layers=list(excluded | protected),
            round_to=s.round_to,
        )
    except (RuntimeError, TypeError, ValueError, IndexError) as exc:
        raise ModelError(
            f"structured pruning could not trace the model ({type(exc).__name__}: {str(exc)[:200]}); "
            "set structured = false for unstructured pruning"
        ) from exc
    widths = {name: _width(m) for name, m in layers}
    for step in range(1, s.steps + 1):
        with torch.random.fork_rng():
            torch.manual_seed(s.seed + step)
            pruner.step()
        if finetune is not None and step < s.steps:
            finetune(model, step)
    _check_runs(model, example_inputs, out_shapes)
    after = {name: _width(m) for name, m in layers}
    changed = {n: (widths[n], after[n]) for n in widths if after[n] != widths[n]}
    for name, (w0, w1) in changed.items():
        log.debug("pruned %s: %d -> %d channels", name, w0, w1)
    names = {m: n for n, m in model.named_modules()}
    return {
        "layers_pruned": len(changed),
        "channels_before": sum(widths.values()),
        "channels_after": sum(after.values()),
        "protected": sorted(names[m] for m in protected if m in names and isinstance(m, LAYER_TYPES)),
    }


def _width(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def _io_tied(tp: Any, model: nn.Module, inputs: tuple[torch.Tensor, ...], excluded: set[nn.Module]) -> set[nn.Module]:
    """Modules whose output channels must stay: their group reaches a model output or is tied to a model input.

    torch-pruning does not know the model's boundary: it would prune the final classifier's outputs, or the
    convs of ``x + f(x)`` when ``x`` is the raw input. A group is unsafe if it prunes the output channels of
    an op that produced a model output, or the input channels of an op that reads a model input.
    """
    captured: list[Any] = []

    def grab(out: Any) -> Any:
        captured.append(out)
        return out

    dg = tp.DependencyGraph().build_dependency(model, example_inputs=inputs, output_transform=grab)
    out_fns = {t.grad_fn for t in _tensors(captured[0]) if t.grad_fn is not None}
    input_ids = {id(x) for x in inputs}
    out_nodes, in_nodes = set(), set()
    for node in dg.module2node.values():
        fn = node.grad_fn
        if fn is None:
            continue
        if fn in out_fns:
            out_nodes.add(node)
        if any(id(getattr(f, "variable", None)) in input_ids for f, _ in fn.next_functions if f is not None):
            in_nodes.add(node)
    protected: set[nn.Module] = set()
    roots = (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR, tp.ops.TORCH_LSTM)
    for group in dg.get_all_groups(ignored_layers=list(excluded), root_module_types=roots):
        owners, unsafe = [], False
        for dep, _ in group:
            if dg.is_out_channel_pruning_fn(dep.handler):
                owners.append(dep.target.module)
                unsafe |= dep.target in out_nodes
            if dg.is_in_channel_pruning_fn(dep.handler):
                unsafe |= dep.target in in_nodes
        if unsafe:
            protected.update(owners)  # ignoring any out-channel owner makes torch-pruning skip the whole group
    return protected


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return []


@torch.no_grad()
def _output_shapes(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[tuple[int, ...]]:
    training = model.training
    model.eval()
    try:
        return [tuple(t.shape) for t in _tensors(model(*inputs))]
    finally:
        model.train(training)


def _check_runs(model: nn.Module, inputs: tuple[torch.Tensor, ...], expected: list[tuple[int, ...]]) -> None:
    """A pruned model must still run and keep its output shapes; otherwise no model is returned at all."""
    try:
        got = _output_shapes(model, inputs)
    except RuntimeError as exc:
        raise ModelError(
            f"structured pruning broke the model ({str(exc)[:200]}); exclude the layers involved with "
            "exclude = [\"name\"] or set structured = false"
        ) from exc
    if got != expected:
        raise ModelError(
            f"structured pruning changed the output shapes {expected} -> {got}; exclude the output layers "
            "with exclude = [\"name\"] or set structured = false"
        )
