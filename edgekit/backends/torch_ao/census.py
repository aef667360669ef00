"""The float census: run the quantized model once and list the compute ops that ran on float tensors, where,
how often and why (the manifest's ``notes.stayed_float``); and the layer census, INT8 modules against float ones
(``notes.int8_layers``)."""

from __future__ import annotations

import functools
from collections import Counter
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from edgekit.backends.torch_ao.common import under
from edgekit.backends.torch_ao.integer import REASON as INTEGER_REASON
from edgekit.backends.torch_ao.integer import Provenance, reads_integer
from edgekit.types import LayerCensus

QUANTIZED_MODULES = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized")  # where INT8 modules live

# ops that move or re-type data without arithmetic: never reported as "stayed float"
PLUMBING = frozenset(
    "__get__ __set__ __getitem__ __len__ size dim numel stride contiguous to float type detach clone view reshape "
    "flatten permute transpose squeeze unsqueeze expand chunk split unbind dropout identity is_floating_point".split()
)
HEAVY = frozenset(
    "linear conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d matmul __matmul__ bmm mm addmm "
    "baddbmm einsum lstm gru rnn_tanh rnn_relu multi_head_attention_forward scaled_dot_product_attention".split()
)


def float_ops(model: Any, example: tuple, mode: str, engine: str, found: dict[str, Any], keep_float: tuple[str, ...]) -> list[str]:
    """Run the quantized model once and list the compute ops that ran on float tensors: where, what, how often, why."""
    types = {name: type(m).__name__ for name, m in model.named_modules()}
    stack: list[str] = [""]
    seen: Counter = Counter()

    def is_float(a: Any) -> bool:
        if isinstance(a, (tuple, list)):
            return any(is_float(x) for x in a)
        return isinstance(a, torch.Tensor) and a.is_floating_point()

    provenance = Provenance()  # static mode: which values are integer, or computed from integer tensors alone

    class Census(TorchFunctionMode):
        def __torch_function__(self, func: Any, _types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
            name = getattr(func, "__name__", str(func)).split(".")[-1]
            inputs = provenance.kinds((args, kwargs or {}))
            if "quantize" not in str(func) and name not in PLUMBING and (mode == "static" or name in HEAVY):
                if is_float(args) or is_float(list((kwargs or {}).values())):
                    seen[(stack[-1], name, mode == "static" and reads_integer(inputs))] += 1
            out = func(*args, **(kwargs or {}))
            provenance.record(inputs, out)
            return out

    def enter(_m: Any, _a: Any, path: str) -> None:
        stack.append(path)

    def leave(_m: Any, _a: Any, _o: Any) -> None:  # returns None: a forward hook's return value replaces the output
        stack.pop()

    hooks = []
    for path, module in model.named_modules():
        if path:
            hooks.append(module.register_forward_pre_hook(functools.partial(enter, path=path)))
            hooks.append(module.register_forward_hook(leave))
    try:
        with torch.no_grad(), Census():
            model(*example)
    finally:
        for h in hooks:
            h.remove()
    lines = []
    for (path, op, integer), count in seen.items():
        where = f"{path} ({types.get(path, '?')})" if path else "(model forward)"
        why = _why_float(path, op, types.get(path, ""), mode, engine, found, keep_float, integer)
        lines.append(f"{where}: {op} x{count} — {why}")
    return lines[:60] + ([f"... and {len(lines) - 60} more"] if len(lines) > 60 else [])


def _why_float(path: str, op: str, kind: str, mode: str, engine: str, found: dict[str, Any], keep_float: tuple[str, ...],
               integer: bool) -> str:
    if (k := under(path, keep_float)) is not None:
        return f"kept float by recipe keep_float ({k})"
    if (u := under(path, found["untraceable"])) is not None:
        return f"inside {u}, which torch.fx cannot trace ({found['untraceable'][u]}): the whole module runs in float"
    glue = [g for g in found["glue"] if path == g]
    if glue:
        return f"in the forward of {glue[0] or 'the model'} itself, which torch.fx cannot trace ({found['glue'][glue[0]]})"
    if integer:
        return INTEGER_REASON
    if mode == "dynamic":
        if op in ("matmul", "__matmul__", "bmm", "einsum", "scaled_dot_product_attention"):
            return "activation x activation product: dynamic quantization covers layer weights only"
        if op.startswith("conv"):
            return 'dynamic mode quantizes Linear/LSTM/GRU only; use mode = "static" for convolutions'
        if op == "multi_head_attention_forward":
            return "nn.MultiheadAttention computes its projections functionally; the dynamic quantizer swaps modules only"
        if kind == "NonDynamicallyQuantizableLinear":
            return "torch.ao never swaps NonDynamicallyQuantizableLinear (nn.MultiheadAttention.out_proj)"
        return f"a functional {op} call inside {kind or 'the model'}: the dynamic quantizer swaps nn.Linear/LSTM/GRU modules only"
    return f"torch.ao's {engine} backend config quantizes no pattern with this op here (unsupported op, or its input is float)"


def layer_census(model: Any) -> LayerCensus:
    """How many compute layers of the converted model run in INT8: quantized Conv/Linear/RNN modules (static or
    dynamic) against float ones left as they were (nn.MultiheadAttention's functional in-projection counts as one)."""
    float_types = (torch.nn.modules.conv._ConvNd, torch.nn.Linear, torch.nn.RNNBase, torch.nn.RNNCellBase)
    int8, total, fp32 = 0, 0, []
    for path, module in model.named_modules():
        kind = type(module)
        if kind.__module__.startswith(QUANTIZED_MODULES):
            name = kind.__name__
            if name.startswith(("Conv", "Linear", "LSTM", "GRU", "RNN")) and not name.endswith("PackedParams"):
                int8 += 1
                total += 1
        elif isinstance(module, float_types) or isinstance(module, torch.nn.MultiheadAttention):
            total += 1
            fp32.append(f"{path or '(model)'} ({kind.__name__})")
    return LayerCensus(int8, total, tuple(fp32[: LayerCensus.MAX_NAMES]))
