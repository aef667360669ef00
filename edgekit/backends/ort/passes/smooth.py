"""The ``smooth_alpha`` pass: SmoothQuant-style per-channel smoothing of MatMul inputs predicted to quantize badly.

``x @ W == (x / s) @ (s * W)`` with ``s = amax(x)^a / amax(W)^(1-a)`` per input channel (Xiao et al. 2023), so outlier
channels shrink before quantization and the per-channel weight scales absorb ``s``. Exact in FP32.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgekit.backends.ort.matmul_stats import TensorStats, weighted_matmuls
from edgekit.onnxio import save_like

SCALE_LIMITS = (1e-4, 1e4)
SMOOTH_SUFFIX = "_smooth"  # the inserted Mul nodes' names end so (a static QDQ build keeps them FP32)


def _weight_rows_axis(node: Any) -> int | None:
    """Axis of the weight that runs over input channels, or None when smoothing can't apply to this node."""
    attrs = {a.name: a.i for a in node.attribute if a.type == a.INT}
    if node.op_type in ("MatMul", "Attention"):
        return 0
    if attrs.get("transA", 0):
        return None
    return 1 if attrs.get("transB", 0) else 0


def smooth(src: Path, dst: Path, stats: Mapping[str, TensorStats], alpha: float | Mapping[str, float],
           below_db: float) -> dict[str, float]:
    """Write ``src`` with every low-SQNR MatMul input smoothed (see module docstring) to ``dst``. Each smoothed tensor
    gets one ``Mul`` node named ``<first reader>_smooth`` (SMOOTH_SUFFIX), its readers' weights the scales.
    ``alpha``: one for every tensor, or one per tensor (a tensor not in the mapping is left alone).

    Returns the smoothed tensors and their predicted SQNR before smoothing. A tensor is skipped when one of its
    weights is shared with another node, is not 2-D, or its node is a Gemm with transA."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    uses: dict[str, int] = defaultdict(int)
    for n in graph.node:
        for name in n.input:
            uses[name] += 1
    groups: dict[str, list[Any]] = defaultdict(list)
    for n in weighted_matmuls(model):
        groups[n.input[0]].append(n)
    done: dict[str, float] = {}
    for tensor, nodes in groups.items():
        st = stats.get(tensor)
        chosen = alpha.get(tensor) if isinstance(alpha, Mapping) else alpha
        if st is None or chosen is None or st.sqnr_db >= below_db:
            continue
        axes = [_weight_rows_axis(n) for n in nodes]
        stored = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]
        weights = [w.astype(np.float64) for w in stored]
        if None in axes or any(uses[n.input[1]] != 1 or w.ndim != 2 for n, w in zip(nodes, weights)):
            continue
        w_absmax = np.max([np.abs(w).max(axis=1 - a) for w, a in zip(weights, axes)], axis=0)
        a_absmax = st.channel_absmax
        if w_absmax.shape != a_absmax.shape:
            continue
        live = (a_absmax > 0) & (w_absmax > 0)
        scale = np.ones_like(a_absmax)
        scale[live] = np.clip(a_absmax[live] ** chosen / w_absmax[live] ** (1.0 - chosen), *SCALE_LIMITS)
        for n, w, a, original in zip(nodes, weights, axes, stored):
            scaled = w * (scale[:, None] if a == 0 else scale[None, :])
            inits[n.input[1]].CopyFrom(numpy_helper.from_array(scaled.astype(original.dtype), n.input[1]))
        inverse = f"{tensor}__smooth_inv"
        smoothed = f"{tensor}__smoothed"
        graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), inverse))
        first = min(list(graph.node).index(n) for n in nodes)
        graph.node.insert(first, helper.make_node("Mul", [tensor, inverse], [smoothed], name=f"{nodes[0].name}{SMOOTH_SUFFIX}"))
        for n in nodes:
            n.input[0] = smoothed
        done[tensor] = round(st.sqnr_db, 1)
    save_like(model, dst, src)
    return done
