"""Which parts of a model torch.fx can trace: the largest traceable parts ("islands") with their untraceable
submodules, the inputs each island receives, and an island's graph with every op's module scope."""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.fx
from torch import nn

from edgekit.backends.torch_ao.common import first_line, join_path

SCOPE = "edgekit_scope"  # node.meta key: the path (relative to the traced module) of the module whose forward made the op


class _Tracer(torch.fx.Tracer):
    """torch.fx's tracer (the quantizer's leaf rule) with ``skip`` as extra leaves; ``stack`` is the modules being traced."""

    def __init__(self, skip: set[str]) -> None:
        super().__init__()
        self.skip = skip
        self.stack: list[str] = []

    def is_leaf_module(self, m: nn.Module, name: str) -> bool:
        return name in self.skip or super().is_leaf_module(m, name)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        name = self.path_of_module(m)
        if self.is_leaf_module(m, name):
            return super().call_module(m, forward, args, kwargs)
        self.stack.append(name)
        out = super().call_module(m, forward, args, kwargs)
        self.stack.pop()
        return out

    def create_node(self, *args: Any, **kwargs: Any) -> torch.fx.Node:
        node = super().create_node(*args, **kwargs)
        node.meta[SCOPE] = self.stack[-1] if self.stack else ""
        return node


def _trace_blockers(module: Any) -> tuple[dict[str, str], str | None]:
    """Submodules torch.fx cannot trace (name -> why), and why ``module``'s own forward cannot be traced, if so."""
    skip: dict[str, str] = {}
    for _ in range(200):
        tracer = _Tracer(set(skip))
        try:
            tracer.trace(module)
            return skip, None
        except Exception as exc:  # torch.fx raises TraceError, TypeError, AttributeError... on Python it cannot trace
            culprit = tracer.stack[-1] if tracer.stack else ""
            if not culprit or culprit in skip:
                return skip, first_line(exc)
            skip[culprit] = first_line(exc)
    return skip, "too many untraceable submodules"


def islands(module: Any, prefix: str, untraceable: dict[str, str], glue: dict[str, str]) -> list[tuple[str, tuple[str, ...]]]:
    """The largest traceable parts of the model (path, its untraceable submodules); where a forward itself cannot be
    traced, its own code stays float (recorded in ``glue``) and its children are tried one by one."""
    skip, own_error = _trace_blockers(module)
    if own_error is None:
        untraceable.update({join_path(prefix, name): why for name, why in skip.items()})
        return [(prefix, tuple(skip))]
    glue[prefix] = own_error
    found = []
    for name, child in module.named_children():
        found += islands(child, join_path(prefix, name), untraceable, glue)
    return found


def island_inputs(model: Any, paths: list[str], example: tuple) -> dict[str, tuple]:
    """The inputs each island receives on the example batch, positional in its forward's order (keyword arguments
    bound by name, defaults filled in): prepare_fx wants example inputs, and the integer check runs the island on them."""
    seen: dict[str, tuple] = {"": example}
    hooks = []
    for path in paths:
        if path:
            def grab(m: Any, args: tuple, kwargs: dict, p: str = path) -> None:  # returns None: inputs stay as they are
                if p not in seen:
                    seen[p] = _positional(m, args, kwargs)
            hooks.append(model.get_submodule(path).register_forward_pre_hook(grab, with_kwargs=True))
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _positional(module: Any, args: tuple, kwargs: dict) -> tuple:
    if not kwargs:
        return args
    try:
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
    except TypeError:
        return args
    bound.apply_defaults()
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in bound.signature.parameters.values()):
        return args  # torch.fx gives *args / **kwargs no placeholder of their own
    return tuple(bound.arguments.values())


def trace_island(module: Any, skip: tuple[str, ...]) -> torch.fx.GraphModule:
    """The island as torch.fx traces it (``skip`` as leaves); each node's ``meta[SCOPE]`` names the module it came from."""
    tracer = _Tracer(set(skip))
    graph = tracer.trace(module)
    return torch.fx.GraphModule(tracer.root, graph, type(module).__name__)
