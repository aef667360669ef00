"""Which layers of a static QDQ graph to blame: each quantized node is, in turn, fed its FP32 inputs (its
DequantizeLinear inputs bypassed, its weights the FP32 ones) inside the INT8 graph, and the end-to-end cosine with
the FP32 graph on a few calibration batches says how much keeping it FP32 would recover. No re-quantization: one
session per node. The debug command's fuller analysis (edgekit/debug/) may replace this behind ``rank_layers``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgekit.backends.onnx.graph import prune_dead
from edgekit.backends.onnx.session import session
from edgekit.validate.metrics import cosine_rows

COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
MANY = 40  # above this many quantized nodes, only the compute nodes are measured


def quantized_nodes(qdq: Any) -> list[Any]:
    """The nodes of a QDQ graph that read a DequantizeLinear output (the ones ``nodes_to_exclude`` can keep FP32)."""
    made_by = {o: n.op_type for n in qdq.graph.node for o in n.output}
    return [n for n in qdq.graph.node if n.name and n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and any(made_by.get(i) == "DequantizeLinear" for i in n.input)]


def compute_nodes(qdq_path: Path) -> set[str]:
    """The quantized Conv/Gemm/MatMul nodes of a QDQ file."""
    import onnx

    return {n.name for n in quantized_nodes(onnx.load(str(qdq_path))) if n.op_type in COMPUTE}


def bypassed(qdq: Any, fp32: Any, names: Sequence[str]) -> Any:
    """A copy of ``qdq`` where the nodes ``names`` read FP32 inputs: every input coming out of a DequantizeLinear
    is replaced by the FP32 graph's tensor at that position (a weight: its initializer), when the INT8 graph has it."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    graph = model.graph
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    have = {o for n in graph.node for o in n.output} | {i.name for i in graph.input} | {i.name for i in graph.initializer}
    fp_nodes = {n.name: n for n in fp32.graph.node if n.name}
    fp_inits = {i.name: i for i in fp32.graph.initializer}
    wanted = set(names)
    for n in graph.node:
        fp = fp_nodes.get(n.name)
        if n.name not in wanted or fp is None or len(fp.input) != len(n.input):
            continue
        for k, name in enumerate(n.input):
            if made_by.get(name) != "DequantizeLinear":
                continue
            source = fp.input[k]
            if source in fp_inits and source not in have:
                graph.initializer.append(fp_inits[source])
                have.add(source)
            if source in have:
                n.input[k] = source
    prune_dead(graph)
    return model


def _cosine(sess: Any, feeds: Sequence[Mapping[str, np.ndarray]], reference: list[list[np.ndarray]]) -> float:
    total, count = 0.0, 0
    for feed, ref in zip(feeds, reference):
        for r, o in zip(ref, sess.run(None, dict(feed))):
            n = r.shape[0] if r.ndim else 1
            total += float(np.sum(cosine_rows(r.reshape(n, -1).astype(np.float64), o.reshape(n, -1).astype(np.float64))))
            count += n
    return total / max(count, 1)


def rank_layers(qdq_path: Path, fp32_path: Path, feeds: Sequence[Mapping[str, np.ndarray]], seconds: float) -> list[str]:
    """The quantized nodes of ``qdq_path``, the one whose FP32 inputs recover the most end-to-end cosine first
    (against ``fp32_path``, the graph it was quantized from, on ``feeds``). Nodes not measured within ``seconds``
    follow in graph order; ties in name order, so the ranking is deterministic for the same inputs."""
    import onnx

    qdq, fp32 = onnx.load(str(qdq_path)), onnx.load(str(fp32_path))
    ref_sess = session(fp32.SerializeToString(), 2)
    reference = [ref_sess.run(None, dict(f)) for f in feeds]
    nodes = quantized_nodes(qdq)
    if len(nodes) > MANY:
        nodes = [n for n in nodes if n.op_type in COMPUTE] + [n for n in nodes if n.op_type not in COMPUTE]
    base = _cosine(session(qdq.SerializeToString(), 2), feeds, reference)
    deadline = time.monotonic() + seconds
    gains: dict[str, float] = {}
    for n in nodes:
        if time.monotonic() > deadline:
            break
        try:
            sess = session(bypassed(qdq, fp32, [n.name]).SerializeToString(), 2)
        except Exception:  # a bypass ORT cannot load (a fused pattern it expects) is not a candidate
            continue
        gains[n.name] = _cosine(sess, feeds, reference) - base
    ranked = sorted(gains, key=lambda name: (-round(gains[name], 9), name))
    return ranked + [n.name for n in nodes if n.name not in gains]
