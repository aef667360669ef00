"""Copies of an artifact with chosen layers kept in FP32, the rest as built: a static QDQ layer reads its inputs past
their Q/DQ pairs (re-adding a Relu/Clip the quantizer folded into a Q) and its FP32 weights; a dynamic layer is
replaced by the reference's node; an FP16 layer runs between casts on FP32 weights."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit.backends.onnx.fp32_pools import pool_fp32_outputs
from edgekit.backends.onnx.graph import prune_dead
from edgekit.debug.layers import Graphs, Layer


def keep_fp32(g: Graphs, layers: list[Layer]) -> bytes:
    """A copy of the artifact with ``layers`` in FP32: a QDQ layer reads its inputs past their Q/DQ pairs and its
    FP32 weights; a dynamic layer is replaced by the reference's node. Everything else stays as built."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(g.artifact)
    graph = model.graph
    by_name = {n.name: n for n in graph.node}
    added: set[str] = set()

    def constant(name: str, value: np.ndarray) -> str:
        new = f"{name}__edgekit_fp32"
        if new not in added:
            graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), new))
            added.add(new)
        return new

    producer = {o: n for n in graph.node for o in n.output}
    ref_producer = {o: n for n in g.reference.graph.node for o in n.output}
    before: dict[str, list[Any]] = {}

    def fp32_tensor(name: str) -> str:
        """``name`` as the reference computes it. ONNX Runtime's quantizer drops a Relu/Clip before a Q whose range
        clamps the same way; reading past that Q needs the activation back."""
        ref, ours = ref_producer.get(name), producer.get(name)
        if ref is None or ours is None or ref.op_type not in ("Relu", "Clip") or ours.op_type == ref.op_type:
            return name
        new = f"{name}__edgekit_act"
        if new not in added:
            act = onnx.NodeProto()
            act.CopyFrom(ref)
            act.name, act.input[0], act.output[0] = f"{ref.name}__edgekit_fp32", name, new
            for k, bound in enumerate(list(act.input)[1:], start=1):
                if bound and bound in g.ref_consts:
                    act.input[k] = constant(bound, g.ref_consts[bound])
            before.setdefault(ours.output[0], []).append(act)
            added.add(new)
        return new

    for layer in layers:
        node = by_name[layer.artifact_node]
        if layer.fp16:  # float16: the layer between casts, on FP32 inputs and weights
            _fp32_between_casts(graph, node, layer, constant)
            continue
        if layer.artifact_node == layer.node:  # static QDQ: bypass
            for a in layer.acts:
                if a.scale is not None:
                    node.input[a.index] = fp32_tensor(a.tensor)
            for c in layer.consts:
                if c.fp32 is not None and c.fp32.dtype.kind == "f":
                    node.input[c.index] = constant(node.input[c.index], c.fp32)
            continue
        ref = g.ref_nodes[layer.node]  # dynamic: the reference node takes the place of the integer chain
        copy = onnx.NodeProto()
        copy.CopyFrom(ref)
        copy.name = f"{ref.name}__edgekit_fp32"
        for c in layer.consts:
            copy.input[c.index] = constant(ref.input[c.index], c.fp32)
        out = ref.output[0]
        nodes = list(graph.node)
        at = next(k for k, n in enumerate(nodes) if out in n.output)
        nodes[at] = copy
        del graph.node[:]
        graph.node.extend(nodes)
    if before:  # each re-added activation right after the node whose output it reads
        nodes = []
        for n in graph.node:
            nodes.append(n)
            nodes += before.get(n.output[0], [])
        del graph.node[:]
        graph.node.extend(nodes)
    pool_fp32_outputs(graph)  # a pool after an FP32 layer in ONNX Runtime's fast layout: the cost a build would pay
    prune_dead(graph)
    return model.SerializeToString()


def _fp32_between_casts(graph: Any, node: Any, layer: Layer, constant: Any) -> None:
    """``node`` of an FP16 graph computing in FP32: its float16 inputs cast up, its weights FP32, its output cast
    back to float16 under the same name."""
    from onnx import TensorProto, helper

    nodes = list(graph.node)
    at = nodes.index(node)
    casts = []
    for a in layer.acts:
        up = f"{a.tensor}__edgekit_fp32_{node.name}"
        casts.append(helper.make_node("Cast", [node.input[a.index]], [up], to=TensorProto.FLOAT, name=f"{up}_cast"))
        node.input[a.index] = up
    for c in layer.consts:
        node.input[c.index] = constant(node.input[c.index], c.fp32)
    out = node.output[0]
    node.output[0] = f"{out}__edgekit_fp32"
    down = helper.make_node("Cast", [node.output[0]], [out], to=TensorProto.FLOAT16, name=f"{out}__edgekit_cast")
    nodes[at:at + 1] = [*casts, node, down]
    del graph.node[:]
    graph.node.extend(nodes)
