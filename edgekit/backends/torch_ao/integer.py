"""Integer tensors are never quantized. Finds the ops of a traced island that read an integer tensor (token ids, an
attention mask, an int64 buffer) or a value computed from integer tensors alone (a mask made into an additive bias),
and stands them in for modules torch.ao is told to leave float; the float census applies the same rule at run time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn

INTEGER, DERIVED, FLOAT = "integer", "derived", "float"  # what a value is: kind() and result_kind()
REASON = ("integer input: reads an integer tensor, or a value computed from integer tensors alone (e.g. an "
          "attention mask made into a bias); integer tensors are never quantized")
_CALLS = ("call_function", "call_method", "call_module")


def tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors(v)]
    return []


def kind(value: Any) -> str | None:
    """FLOAT for float (or already quantized) tensors, INTEGER if any tensor is integer or bool, None for no tensor."""
    found = tensors(value)
    if not found:
        return None
    return FLOAT if all(t.is_floating_point() or t.is_quantized for t in found) else INTEGER


def reads_integer(inputs: list[str]) -> bool:
    return any(k in (INTEGER, DERIVED) for k in inputs)


def result_kind(inputs: list[str], out: str | None, pure: bool) -> str | None:
    """A float result computed from integer or integer-derived tensors alone (no weights: ``pure``) is integer-derived:
    quantizing it would give a whole tensor's range to a mask's -10000 or a count."""
    if out == FLOAT and pure and inputs and all(k in (INTEGER, DERIVED) for k in inputs):
        return DERIVED
    return out


@dataclass
class IntegerOps:
    """What of one island stays float because of integer tensors."""

    nodes: list[torch.fx.Node] = field(default_factory=list)  # function and method calls
    modules: list[str] = field(default_factory=list)  # leaf modules called on them (an nn.Embedding on token ids)
    sources: list[str] = field(default_factory=list)  # the integer inputs and buffers themselves


def find_integer_ops(traced: torch.fx.GraphModule, example: tuple) -> IntegerOps:
    """Run the traced island on its example inputs and list the ops that read, or make, integer-valued tensors."""
    kinds: dict[torch.fx.Node, str | None] = {}
    found = IntegerOps()

    class Walk(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            out = super().run_node(n)
            k = kind(out)
            if n.op in ("placeholder", "get_attr"):
                kinds[n] = k
                if k == INTEGER:
                    found.sources.append(str(n.target))
            elif n.op in _CALLS:
                inputs = [kinds[a] for a in n.all_input_nodes if kinds.get(a)]
                module = traced.get_submodule(n.target) if n.op == "call_module" else None
                pure = module is None or (not list(module.parameters()) and not list(module.buffers()))  # no weights
                kinds[n] = result_kind(inputs, k, pure)
                if k is not None and (reads_integer(inputs) or k == INTEGER):
                    (found.modules.append(str(n.target)) if module is not None else found.nodes.append(n))
            return out

    with torch.no_grad():
        Walk(traced).run(*example)
    return found


class FloatOp(nn.Module):
    """Stands in for one function or method call while torch.ao prepares and converts an island, so that the quantizer
    leaves it float; swapped back for the call itself afterwards: artifacts never reference this class."""

    def __init__(self, op: str, target: Any) -> None:
        super().__init__()
        self.op, self.target = op, target

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.op == "call_method":
            return getattr(args[0], self.target)(*args[1:], **kwargs)
        return self.target(*args, **kwargs)


def wrap_float_ops(traced: torch.fx.GraphModule, nodes: list[torch.fx.Node]) -> torch.fx.GraphModule:
    """``traced`` with each of ``nodes`` called through a FloatOp submodule (modified in place)."""
    graph = traced.graph
    for n in nodes:
        name = f"_float_{n.name}"
        traced.add_submodule(name, FloatOp(n.op, n.target))
        with graph.inserting_before(n):
            stand_in = graph.call_module(name, n.args, n.kwargs)
        stand_in.meta = dict(n.meta)
        n.replace_all_uses_with(stand_in)
        graph.erase_node(n)
    traced.recompile()
    return traced


def unwrap_float_ops(converted: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The converted island with every FloatOp call replaced by the call it stood in for (modified in place)."""
    graph = converted.graph
    for n in list(graph.nodes):
        if n.op == "call_module" and isinstance(stand_in := converted.get_submodule(n.target), FloatOp):
            with graph.inserting_before(n):
                call = graph.create_node(stand_in.op, stand_in.target, n.args, n.kwargs)
            n.replace_all_uses_with(call)
            graph.erase_node(n)
            converted.delete_submodule(n.target)
    converted.recompile()
    return converted


class Provenance:
    """The same rule call by call, for the float census: which tensors are integer or computed from integers alone."""

    def __init__(self) -> None:
        self._derived: dict[int, Tensor] = {}  # id -> tensor: holding the tensor keeps its id from being reused

    def kinds(self, args: Any) -> list[str]:
        return [DERIVED if id(t) in self._derived else kind(t) for t in tensors(args)]

    def record(self, inputs: list[str], out: Any) -> None:
        if result_kind(inputs, kind(out), True) == DERIVED:
            self._derived.update((id(t), t) for t in tensors(out))
