"""Clamping activations (ReLU6, Hardtanh) after a quantized layer, which torch.ao FX does not fuse.

torch.ao fuses Conv(+BatchNorm)+ReLU, not ReLU6: the layer's output is observed, and quantized, over its whole
pre-clamp range, and the ReLU6 after it keeps the few levels that fall inside [0, 6]. Where BatchNorm scales are
large that is nothing at all (on the tests' MobileNetV2-style model, conv outputs up to +-5000 with a 7-bit range:
every ReLU6 output 0 or 6). ONNX Runtime's QDQ quantizer folds the Clip into the layer's output range; this does the
same: after prepare, the layer's output observer sees the clamped values (``clamp_output_observers``), which is
exact, since the clamp is that output's only reader. Not through the qconfig: a qconfig's activation observer also
observes the layer's input wherever its producer is float (the model input), which must not be clamped. After convert, a clamp that can no longer change a value (range [0, hi] quantized with
zero point 0 and its top level at or above hi) is removed from the graph.

The clamps that stay get a contiguous input on qnnpack: its quantized clamp (ReLU6, hardtanh, clamp) on a
channels-last tensor, what its convolutions return, writes the values in the wrong order (torch 2.13, x86)."""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.nn import functional as F

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
CLAMP_FUNCTIONS = (F.relu6, F.hardtanh, torch.clamp, torch.clip)


class _ClampedInput:
    """Observer mixin: observe ``x.clamp(clamp_min, clamp_max)``, return ``x`` unchanged (set on an observer made
    already: ``clamp_output_observers``)."""

    clamp_min: float
    clamp_max: float

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        super().forward(x.detach().clamp(self.clamp_min, self.clamp_max))  # type: ignore[misc]
        return x


@functools.cache
def _clamped_class(base: type) -> type:
    return type(f"Clamped{base.__name__}", (_ClampedInput, base), {"__module__": __name__})


def clamp_output_observers(prepared: torch.fx.GraphModule, layers: dict[str, tuple[float, float]]) -> list[str]:
    """Make the output observer of each layer of ``layers`` (prepared module name: clamp range) observe its values
    clamped to that range (modified in place); returns the layers done. A layer whose output has no observer of its
    own (kept float) is left alone."""
    from torch.ao.quantization.observer import ObserverBase

    modules = dict(prepared.named_modules())
    done = []
    for node in prepared.graph.nodes:
        if node.op != "call_module" or str(node.target) not in layers or len(node.users) != 1:
            continue
        user = next(iter(node.users))
        observer = modules.get(str(user.target)) if user.op == "call_module" else None
        if not isinstance(observer, ObserverBase) or isinstance(observer, _ClampedInput):
            continue
        observer.__class__ = _clamped_class(type(observer))
        observer.clamp_min, observer.clamp_max = layers[str(node.target)]
        done.append(str(node.target))
    return done


def _bounds(node: torch.fx.Node, modules: dict[str, Any]) -> tuple[float, float] | None:
    """The clamp range of a ReLU6 / Hardtanh / clamp call with constant bounds, None for any other node."""
    if node.op == "call_module" and isinstance(modules.get(str(node.target)), nn.Hardtanh):
        m = modules[str(node.target)]
        return float(m.min_val), float(m.max_val)
    if node.op != "call_function" or node.target not in CLAMP_FUNCTIONS:
        return None
    if node.target is F.relu6:
        return 0.0, 6.0
    names = ("min_val", "max_val") if node.target is F.hardtanh else ("min", "max")
    defaults = (-1.0, 1.0) if node.target is F.hardtanh else (None, None)
    values = [node.args[i + 1] if len(node.args) > i + 1 else node.kwargs.get(k, d) for i, (k, d) in enumerate(zip(names, defaults))]
    return (float(values[0]), float(values[1])) if all(isinstance(v, (int, float)) for v in values) else None


def clamped_layers(traced: torch.fx.GraphModule) -> dict[str, tuple[float, float]]:
    """{layer module name: clamp range} for every Conv/Linear (through a BatchNorm) whose only reader is a clamp."""
    modules = dict(traced.named_modules())
    out: dict[str, tuple[float, float]] = {}
    for node in traced.graph.nodes:
        bounds = _bounds(node, modules)
        if bounds is None or not node.args or not isinstance(node.args[0], torch.fx.Node):
            continue
        src = node.args[0]
        while src.op == "call_module" and isinstance(modules.get(str(src.target)), NORMS) and len(src.users) == 1 \
                and isinstance(src.args[0], torch.fx.Node):
            src = src.args[0]
        chain_single = all(len(n.users) == 1 for n in _chain(node.args[0], src))
        if src.op == "call_module" and isinstance(modules.get(str(src.target)), LAYERS) and chain_single:
            out[str(src.target)] = bounds
    return out


def _chain(top: torch.fx.Node, bottom: torch.fx.Node) -> list[torch.fx.Node]:
    out, n = [top], top
    while n is not bottom:
        n = n.args[0]  # type: ignore[assignment]
        out.append(n)
    return out


def finish_clamps(converted: torch.fx.GraphModule, engine: str) -> torch.fx.GraphModule:
    """After convert (modified in place): drop the clamps that change nothing; on qnnpack give the others a
    contiguous input (module docstring)."""
    modules = dict(converted.named_modules())
    graph = converted.graph
    changed = False
    for node in list(graph.nodes):
        bounds = _bounds(node, modules)
        if bounds is None or not node.args or not isinstance(node.args[0], torch.fx.Node):
            continue
        src = node.args[0]
        layer = modules.get(str(src.target)) if src.op == "call_module" else None
        if _is_noop(layer, bounds):
            node.replace_all_uses_with(src)
            graph.erase_node(node)
            changed = True
        elif engine == "qnnpack":
            with graph.inserting_before(node):
                contiguous = graph.call_method("contiguous", (src,))
            node.args = (contiguous, *node.args[1:])
            changed = True
    if changed:
        graph.lint()
        converted.recompile()
        converted.delete_all_unused_submodules()
    return converted


def _is_noop(layer: Any, bounds: tuple[float, float]) -> bool:
    """Whether ``layer``'s quantized quint8 output already lies in ``bounds`` = [0, hi]: zero point 0 and the clamp's
    top level (round(hi / scale)) at or above the top of the range."""
    scale, zero_point = getattr(layer, "scale", None), getattr(layer, "zero_point", None)
    if not isinstance(scale, float) or not isinstance(zero_point, int) or bounds[0] != 0.0:
        return False
    return zero_point == 0 and round(bounds[1] / scale) >= 255

