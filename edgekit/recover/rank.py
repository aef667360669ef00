"""Which layers of a static QDQ graph the recovery's precision step keeps FP32 first: the debug ranking
(edgekit/debug/rank.py), on accuracy alone. Each quantized layer is kept FP32 in turn inside the INT8 graph (its
inputs read past their Q/DQ pairs, its FP32 weights; debug/keep.py), and the end-to-end cosine against the FP32
graph on a few calibration batches says how much that recovers. No re-quantization: one session per layer.
Not timed: the recovery's choices must not depend on timing, so that the same build twice picks the same candidate.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgekit.backends.onnx.session import session

COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
THREADS = 2


def quantized_nodes(qdq: Any) -> list[Any]:
    """The nodes of a QDQ graph that read a DequantizeLinear output (the ones ``nodes_to_exclude`` can keep FP32)."""
    made_by = {o: n.op_type for n in qdq.graph.node for o in n.output}
    return [n for n in qdq.graph.node if n.name and n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and any(made_by.get(i) == "DequantizeLinear" for i in n.input)]


def compute_nodes(qdq_path: Path) -> set[str]:
    """The quantized Conv/Gemm/MatMul nodes of a QDQ file."""
    import onnx

    return {n.name for n in quantized_nodes(onnx.load(str(qdq_path))) if n.op_type in COMPUTE}


def rank_layers(qdq_path: Path, fp32_path: Path, feeds: Sequence[Mapping[str, np.ndarray]], seconds: float) -> list[str]:
    """The quantized layers of ``qdq_path`` (ONNX node names), the one whose FP32 recovers the most end-to-end
    cosine first (against ``fp32_path``, the graph it was quantized from, on ``feeds``). Layers not measured within
    ``seconds`` follow in graph order; ties in name order, so the ranking is deterministic for the same inputs."""
    import onnx

    from edgekit.console import Silent
    from edgekit.debug.keep import keep_fp32
    from edgekit.debug.layers import Graphs, Layer, find_layers
    from edgekit.debug.rank import Candidates, Run, measure_layers, rank_nodes

    deadline = time.monotonic() + seconds
    g = Graphs(onnx.load(str(fp32_path)), onnx.load(str(qdq_path)))
    layers = find_layers(g)
    ref = session(g.reference.SerializeToString(), THREADS)
    base = session(g.artifact.SerializeToString(), THREADS)

    def build(chosen: list[Layer]) -> Run:
        sess = session(keep_fp32(g, chosen), THREADS)
        return lambda feed: sess.run(None, feed)

    feeds = [dict(f) for f in feeds]
    candidates = Candidates([ref.run(None, f) for f in feeds], lambda feed: base.run(None, feed), build, feeds, None)
    keep, _ = measure_layers(layers, {}, candidates, Silent(), [], deadline=deadline, blocks=False)
    return rank_nodes(layers, keep)


def block_roles(model: Any, nodes: set[str]) -> dict[str, str]:
    """Each of ``nodes`` (that maps to a torch module) to its role in a stack of blocks: the module path with its
    block indices replaced (``bert.encoder.layer.#.output.dense``). A last index is a layer's place inside an
    ``nn.Sequential``, not a block, and stays: a ViT block's two MLP Linears are ``layers.#.mlp.0`` and
    ``layers.#.mlp.2``, two roles."""
    import re

    from edgekit.debug.names import module_map

    return {node: re.sub(r"(^|\.)\d+(?=\.)", r"\1#", module) for node, module in module_map(model).items() if node in nodes}


def role_label(roles: Sequence[str]) -> str:
    """One name for the roles that read one tensor: the first in full, the others by their last part
    (``bert.encoder.layer.#.attention.self.query+key+value``); a role repeated counts once."""
    unique = list(dict.fromkeys(roles))
    return "+".join([unique[0], *(r.rsplit(".", 1)[-1] for r in unique[1:])])


def role_groups(fp32_path: Path, quantized: set[str]) -> dict[str, tuple[str, ...]]:
    """The quantized layers grouped by their role in a stack of blocks: the torch module path with its block indices
    replaced (``bert.encoder.layer.#.output.dense``), for roles that occur in two blocks or more, in graph order;
    then the roles that read one tensor together in every block, as one group (``...attention.self.query+key+value``):
    a tensor is quantized once for all its readers, so only keeping all of them FP32 takes it out of quantization.
    ``fp32_path``: the graph the QDQ file was quantized from (same node names); ``quantized``: its layers to group."""
    import onnx

    model = onnx.load(str(fp32_path), load_external_data=False)
    graph = model.graph
    role_of = block_roles(model, quantized)
    groups: dict[str, list[str]] = {}
    for node, role in role_of.items():
        groups.setdefault(role, []).append(node)
    readers: dict[str, list[str]] = {}
    for n in graph.node:
        if n.name in role_of and n.input:
            readers.setdefault(n.input[0], []).append(n.name)
    shared: dict[tuple[str, ...], list[str]] = {}
    for nodes in readers.values():
        roles = tuple(dict.fromkeys(role_of[n] for n in nodes))
        if len(roles) >= 2:
            shared.setdefault(roles, []).extend(nodes)
    for roles, nodes in shared.items():
        groups[role_label(roles)] = nodes
    return {role: tuple(nodes) for role, nodes in groups.items() if len(nodes) >= 2 and "#" in role}
