"""ONNX node names <-> torch module paths, read from the reference graph itself (no torch code is run).

The simplified reference keeps no exporter metadata (onnxsim drops ``metadata_props``), so the module of a layer is
recovered from what survives: the dynamo exporter names a layer's weight after its parameter (``layer1.0.conv2.weight``,
kept through BatchNorm folding), the TorchScript exporter names the node after its scope
(``/layer1/layer1.0/conv2/Conv``). Exporter metadata (``pkg.torch.onnx.name_scopes``) is used when a graph has it.
"""

from __future__ import annotations

from typing import Any, Iterable

from edgekit.errors import UsageError, did_you_mean

PARAM_SUFFIXES = (".weight", ".bias", ".in_proj_weight", ".in_proj_bias", "_weight", "_bias")
SCOPE_KEYS = ("pkg.torch.onnx.name_scopes", "namespace")


def _from_scopes(parts: list[str]) -> str | None:
    """Join scope parts into one dotted path: ['layer1', 'layer1.0', 'conv2'] -> 'layer1.0.conv2'."""
    path = ""
    for part in (p for p in parts if p):
        path = part if not path or part.startswith(path + ".") else f"{path}.{part}"
    return path or None


def _from_metadata(node: Any) -> str | None:
    for prop in node.metadata_props:
        if prop.key in SCOPE_KEYS and prop.value:
            value = prop.value.strip()
            if value.startswith("["):  # dynamo: a list of the module names from the root, e.g. ['', 'layer1', ...]
                import ast

                try:
                    parts = [str(p) for p in ast.literal_eval(value)]
                except (ValueError, SyntaxError):
                    continue
                return parts[-1] or None if parts else None
            return _from_scopes(value.replace("/", " ").split()) if "/" in value else value
    return None


def _from_param(name: str) -> str | None:
    for suffix in PARAM_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            module = name[: -len(suffix)]
            return module if not module.startswith(("onnx::", "val_", "_v_")) else None
    return None


def module_of(node: Any, initializers: set[str]) -> str | None:
    """The torch module path of one ONNX node of the reference graph, or None when nothing in the graph says."""
    found = _from_metadata(node)
    if found:
        return found
    if node.name.startswith("/") and node.name.count("/") >= 2:  # TorchScript: /scope/scope/Op
        return _from_scopes(node.name.split("/")[1:-1])
    for name in list(node.input)[1:]:  # the weight (then the bias) of a layer carries its parameter's name
        if name in initializers:
            module = _from_param(name)
            if module:
                return module
    return None


def module_map(model: Any) -> dict[str, str]:
    """{ONNX node name: torch module path} for every node of ``model`` whose module is known. A parameter read by
    several nodes says nothing (onnxsim merges identical constants: every LayerNorm's all-ones weight becomes one)."""
    graph = model.graph
    users: dict[str, int] = {}
    for node in graph.node:
        for name in set(node.input):
            users[name] = users.get(name, 0) + 1
    inits = {i.name for i in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}
    inits = {name for name in inits if users.get(name, 0) == 1}
    found = {}
    for node in graph.node:
        module = module_of(node, inits)
        if node.name and module:
            found[node.name] = module
    return found


def resolve_layer_names(names: Iterable[str], model: Any, layers: Iterable[str] | None = None) -> list[str]:
    """ONNX node names for ``names``, each an ONNX node name or a torch module path (``layer1.0.conv2``; a module
    prefix such as ``layer1`` names every layer under it). ``model`` is the reference ONNX (a ModelProto); ``layers``
    restricts module prefixes to these node names (e.g. the quantized ones). UsageError names the first that matches
    nothing, with the nearest name."""
    nodes = [n.name for n in model.graph.node if n.name]
    known = set(nodes)
    modules = module_map(model)
    pool = list(layers) if layers is not None else nodes
    out: list[str] = []
    for name in names:
        if name in known:
            hits = [name]
        else:
            hits = [n for n in pool if modules.get(n) == name]
            if not hits:
                hits = [n for n in pool if modules.get(n, "").startswith(name + ".")]
        if not hits:
            raise UsageError(f"layer {name!r} is neither an ONNX node nor a torch module of this model"
                             + did_you_mean(name, [*nodes, *set(modules.values())], "; `edgekit debug` lists them"))
        out += [h for h in hits if h not in out]
    return out


def describe(node_name: str, modules: dict[str, str]) -> str:
    """``layer1.0.conv2 (node_Conv_31)``, or the node name alone when its module is unknown."""
    module = modules.get(node_name)
    return f"{module} ({node_name})" if module else node_name
