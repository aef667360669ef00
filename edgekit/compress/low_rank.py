"""Low-rank factorisation: replace Linear / Conv2d layers by two thinner layers from a truncated SVD.

A layer is only replaced when that lowers its parameter count (see ``factorise`` for the arithmetic).
"""

from __future__ import annotations

import copy
import fnmatch
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from edgekit.errors import ConfigError, did_you_mean

log = logging.getLogger(__name__)

LAYER_TYPES = {"Linear": nn.Linear, "Conv2d": nn.Conv2d}


@dataclass(frozen=True)
class LowRankSettings:
    """Which layers to factorise and to what rank.

    Give exactly one of ``rank_ratio`` (r = ceil(ratio · min(out, in·k·k))) or ``energy`` (the smallest r
    keeping that fraction of the sum of squared singular values). ``include`` / ``exclude`` are fnmatch
    patterns on module names; ``layer_types`` picks from "Linear" and "Conv2d".
    """

    method: str = field(default="low_rank", init=False)
    rank_ratio: float | None = None
    energy: float | None = None
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    layer_types: tuple[str, ...] = ("Linear",)

    def __post_init__(self) -> None:
        for name in ("include", "exclude", "layer_types"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if (self.rank_ratio is None) == (self.energy is None):
            raise ConfigError("give exactly one of rank_ratio (e.g. 0.25) or energy (e.g. 0.9)")
        if self.rank_ratio is not None and not 0.0 < self.rank_ratio <= 1.0:
            raise ConfigError(f"rank_ratio = {self.rank_ratio} must be in (0, 1], e.g. rank_ratio = 0.25")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise ConfigError(f"energy = {self.energy} must be in (0, 1], e.g. energy = 0.9")
        for t in self.layer_types:
            if t not in LAYER_TYPES:
                raise ConfigError(f"layer_types entry {t!r} is not one of {', '.join(LAYER_TYPES)}{did_you_mean(t, LAYER_TYPES)}")
        if not self.layer_types:
            raise ConfigError("layer_types is empty; use e.g. layer_types = [\"Linear\", \"Conv2d\"]")


def low_rank(model: nn.Module, settings: LowRankSettings) -> tuple[nn.Module, dict[str, Any]]:
    """Factorise the selected layers of a copy of ``model``; return it and a per-run report."""
    model = copy.deepcopy(model)
    kinds = tuple(LAYER_TYPES[t] for t in settings.layer_types)
    check_patterns(model, settings)
    named = [(n, m) for n, m in model.named_modules() if n]
    chosen = [
        (n, m)
        for n, m in named
        if type(m) in kinds
        and any(fnmatch.fnmatchcase(n, p) for p in settings.include)
        and not any(fnmatch.fnmatchcase(n, p) for p in settings.exclude)
    ]
    factorised, kept, rel_errors = [], [], []
    for name, layer in chosen:
        rank, full = choose_rank(layer, settings)
        if rank is None:
            kept.append(name)
            log.debug("low_rank: %s kept (rank %d would not reduce parameters)", name, full)
            continue
        new, err = factorise(layer, rank)
        _replace(model, name, new)
        factorised.append(name)
        rel_errors.append(err)
        log.debug("low_rank: %s rank %d/%d, weight rel. error %.4f", name, rank, full, err)
    return model, {
        "layers_factorised": len(factorised),
        "layers_kept": len(kept),
        "factorised": factorised[:20],
        "max_weight_rel_error": round(max(rel_errors), 6) if rel_errors else 0.0,
    }


def check_patterns(model: nn.Module, settings: LowRankSettings) -> None:
    """ConfigError for an include/exclude pattern that matches no module name of ``model``."""
    names = [n for n, _ in model.named_modules() if n]
    for pattern in settings.include + settings.exclude:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise ConfigError(f"low_rank pattern '{pattern}' in include/exclude matches no module name{did_you_mean(pattern, names)}")


def _matrix(layer: nn.Module) -> torch.Tensor:
    """The weight as an (out, in·k·k) matrix."""
    w = layer.weight.detach()
    return w.reshape(w.shape[0], -1).double()


def choose_rank(layer: nn.Module, settings: LowRankSettings) -> tuple[int | None, int]:
    """(rank, full rank); rank is None when factorising at that rank would not reduce the parameter count."""
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        return None, 0  # grouped convs are already factorised along channels
    w = _matrix(layer)
    full = min(w.shape)
    if settings.rank_ratio is not None:
        rank = math.ceil(settings.rank_ratio * full)
    else:
        s2 = torch.linalg.svdvals(w) ** 2
        kept = torch.cumsum(s2, 0) / s2.sum().clamp_min(1e-30)
        rank = int(torch.searchsorted(kept, torch.tensor(settings.energy, dtype=kept.dtype) - 1e-12)) + 1
    rank = max(1, min(rank, full))
    out_dim, in_dim = w.shape
    # the bias moves to the second layer unchanged, so only weights decide
    return (rank if rank * (in_dim + out_dim) < out_dim * in_dim else None), full


def factorise(layer: nn.Module, rank: int) -> tuple[nn.Sequential, float]:
    """Two layers computing the rank-``rank`` approximation of ``layer``; also the weight's relative error.

    Linear(in, out) -> Linear(in, r, bias=False) · Linear(r, out); Conv2d k×k -> Conv2d k×k with r filters (same
    stride/padding/dilation, no bias) · Conv2d 1×1 (out, bias). The factors are U·sqrt(S) and sqrt(S)·Vᵀ of the best
    rank-r approximation (Eckart–Young), so the Frobenius weight error is exactly the root of the sum of the
    discarded squared singular values.
    """
    w = _matrix(layer)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    first_w = (root[:, None] * vh[:rank]).to(layer.weight.dtype)  # (r, in·k·k)
    second_w = (u[:, :rank] * root[None, :]).to(layer.weight.dtype)  # (out, r)
    err = float(s[rank:].square().sum().sqrt() / s.square().sum().sqrt().clamp_min(1e-30))
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        first = nn.Linear(layer.in_features, rank, bias=False)
        second = nn.Linear(rank, layer.out_features, bias=bias)
        first.weight.data.copy_(first_w)
        second.weight.data.copy_(second_w)
    else:
        first = nn.Conv2d(
            layer.in_channels, rank, layer.kernel_size, stride=layer.stride, padding=layer.padding,
            dilation=layer.dilation, bias=False, padding_mode=layer.padding_mode,
        )
        second = nn.Conv2d(rank, layer.out_channels, 1, bias=bias)
        first.weight.data.copy_(first_w.reshape(first.weight.shape))
        second.weight.data.copy_(second_w.reshape(second.weight.shape))
    if bias:
        second.bias.data.copy_(layer.bias.detach())
    new = nn.Sequential(first, second).to(layer.weight.device)
    new.train(layer.training)
    return new, err


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
