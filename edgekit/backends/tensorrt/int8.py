"""The TensorRT-ready INT8 QDQ graph of the TensorRT targets: quantized by ONNX Runtime (symmetric int8, zero
point 0, per-channel weights), checked against TensorRT's rules, with ONNX Runtime's int32 bias folded to FP32.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgekit.backends.base import CalibrationSettings
from edgekit.backends.onnx.qdq import QdqSettings, quantize_static_qdq
from edgekit.backends.tensorrt.fp16 import DEFAULT_KEEP_FP32_OPS, drop_unused_initializers, loads_in_onnxruntime
from edgekit.fsutil import atomic_move
from edgekit.types import FeedSource, TensorSpec

_WEIGHT_INPUTS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


@dataclass
class QdqSummary:
    """What a QDQ graph holds, checked against TensorRT's rules for explicit quantization."""

    quantize: int = 0
    dequantize: int = 0
    per_channel_weights: int = 0
    problems: list[str] = field(default_factory=list)


def _initializer_arrays(graph: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def fold_int32_bias(model: Any) -> int:
    """Replace each DequantizeLinear of an int32 constant (ONNX Runtime's quantized bias) by its FP32 value.

    TensorRT dequantizes INT8 only; it adds FP32 bias itself. The value is exactly what the node computed."""
    from onnx import numpy_helper

    graph = model.graph
    consts = _initializer_arrays(graph)
    folded, nodes = 0, []
    for node in graph.node:
        x = node.input[0] if node.input else ""
        if node.op_type == "DequantizeLinear" and x in consts and consts[x].dtype == np.int32:
            scale = consts[node.input[1]].astype(np.float32)
            zero = consts[node.input[2]].astype(np.int64) if len(node.input) > 2 and node.input[2] else 0
            value = ((consts[x].astype(np.int64) - zero) * scale).astype(np.float32)
            graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
            folded += 1
            continue
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unused_initializers(graph, {})
    return folded


def qdq_summary(model: Any) -> QdqSummary:
    """Count Q/DQ nodes and list every departure from symmetric INT8 with per-channel weights."""
    graph = model.graph
    consts = _initializer_arrays(graph)
    consumers: dict[str, list[tuple[Any, int]]] = {}
    for node in graph.node:
        for k, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, k))
    s = QdqSummary()
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if node.op_type == "QuantizeLinear":
            s.quantize += 1
        else:
            s.dequantize += 1
        zp = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zp is None and len(node.input) > 2 and node.input[2]:
            s.problems.append(f"{node.name}: zero point is not a constant")
        elif zp is not None and (zp.dtype != np.int8 or np.any(zp != 0)):
            s.problems.append(f"{node.name}: zero point {zp.dtype} {np.unique(zp)[:4].tolist()} (TensorRT needs int8 zeros)")
        elif zp is None and node.op_type == "QuantizeLinear":
            s.problems.append(f"{node.name}: no zero point, so the output would be uint8 (TensorRT needs int8)")
        x = consts.get(node.input[0])
        if node.op_type == "DequantizeLinear" and x is not None:
            if x.dtype != np.int8:
                s.problems.append(f"{node.name}: dequantizes a {x.dtype} constant (TensorRT dequantizes int8)")
            weight_of = [(c, k) for c, k in consumers.get(node.output[0], []) if _WEIGHT_INPUTS.get(c.op_type) == k]
            scale = consts.get(node.input[1])
            if weight_of and scale is not None:
                channels = x.shape[_weight_axis(node, x)] if x.ndim else 1
                if scale.size == channels and (scale.size > 1 or channels == 1):
                    s.per_channel_weights += 1
                else:
                    s.problems.append(f"{node.name}: weight of {weight_of[0][0].name} is quantized per-tensor")
    return s


def _weight_axis(node: Any, x: np.ndarray) -> int:
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    return axis if axis >= 0 else axis + x.ndim


def make_int8_qdq_onnx(
    src: Path, dst: Path, calib: FeedSource, specs: tuple[TensorSpec, ...], settings: CalibrationSettings,
    keep_ops: Sequence[str] = DEFAULT_KEEP_FP32_OPS, exclude_nodes: tuple[str, ...] = (), stats_from: Path | None = None,
) -> dict[str, Any]:
    """INT8 QDQ for TensorRT from the same calibration data and settings as the other INT8 targets:
    symmetric int8 activations and per-channel int8 weights (zero-point 0), 8-bit range, FP32 bias; ops in
    ``keep_ops`` (normalizations, softmax, reductions) are left unquantized, as TensorRT's QDQ placement expects;
    ``exclude_nodes`` too (the build's recovery names them; ``stats_from``: see ``quantize_static_qdq``)."""
    import onnx

    # TensorRT's INT8 kernels accumulate in int32 on every GPU, so the full 8-bit range is safe (no reduce_range).
    qdq = QdqSettings(activation_type="int8", weight_type="int8", per_channel=True, reduce_range=False,
                      symmetric_activations=True, exclude_op_types=tuple(keep_ops))
    with tempfile.TemporaryDirectory(prefix="edgekit-trt-") as tmp:
        raw = Path(tmp) / "qdq.onnx"
        notes = quantize_static_qdq(src, raw, calib, specs, settings, qdq, exclude_nodes, stats_from)
        model = onnx.load(str(raw))
        folded = fold_int32_bias(model)
        summary = qdq_summary(model)
        if summary.problems:
            raise ValueError(f"the QDQ graph is not TensorRT-ready: {'; '.join(summary.problems[:5])}")
        onnx.checker.check_model(model, full_check=False)
        out = Path(tmp) / "model.onnx"
        onnx.save(model, str(out))
        loads_in_onnxruntime(out)
        atomic_move(out, dst)
    notes["fp32_keep_ops"] = list(keep_ops)
    notes["qdq"] = (f"{summary.quantize} QuantizeLinear, {summary.dequantize} DequantizeLinear; every zero point 0 (int8); "
                    f"{summary.per_channel_weights} weight(s) per-channel; {folded} int32 bias DequantizeLinear folded to FP32")
    return notes

