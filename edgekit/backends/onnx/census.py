"""The INT8 layer census of an ONNX artifact (``notes.int8_layers``): compute layers that are integer operators
(QLinearConv, ConvInteger, MatMulInteger, QAttention...) or QDQ-wrapped (data and weight from DequantizeLinear,
fused into an integer kernel at load), against float Conv/ConvTranspose/MatMul/Gemm/RNN/Attention with a weight."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.types import LayerCensus

INT8_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "QAttention", "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat", "DynamicQuantizeLSTM", "QLinearConvTranspose",
})
FLOAT_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "LSTM", "GRU", "RNN", "Attention"})
# ops a weight passes through on its way from an initializer to a layer (a QDQ weight, a transposed weight ...)
PASS_THROUGH = frozenset({"DequantizeLinear", "Transpose", "Reshape", "Cast", "Identity", "Unsqueeze", "Squeeze", "Flatten"})


def onnx_census(path: Path) -> LayerCensus:
    """Count the INT8 and the FP32 compute layers of the ONNX file at ``path`` (main graph)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return graph_census(graph)


def graph_census(graph: Any) -> LayerCensus:
    constants = {t.name for t in graph.initializer}
    producer: dict[str, Any] = {}
    for node in graph.node:
        for out in node.output:
            producer[out] = node
        if node.op_type == "Constant":
            constants.update(node.output)

    def is_weight(name: str, depth: int = 0) -> bool:
        if name in constants:
            return True
        node = producer.get(name)
        return node is not None and depth < 6 and node.op_type in PASS_THROUGH and bool(node.input) \
            and is_weight(node.input[0], depth + 1)

    def dequantized(name: str) -> bool:
        node = producer.get(name)
        while node is not None and node.op_type in ("Transpose", "Reshape", "Identity"):  # a QDQ weight transposed
            node = producer.get(node.input[0]) if node.input else None
        return node is not None and node.op_type == "DequantizeLinear"

    int8, total, fp32 = 0, 0, []
    for node in graph.node:
        if node.op_type in INT8_OPS:
            int8 += 1
            total += 1
            continue
        if node.op_type not in FLOAT_OPS:
            continue
        inputs = list(node.input[:2])
        if len(inputs) < 2:
            continue
        if node.op_type == "MatMul" and not is_weight(inputs[1]) and is_weight(inputs[0]):
            inputs.reverse()  # weight @ activation
        data, weight = inputs
        if not is_weight(weight):
            continue  # activation x activation (attention scores): not a layer with weights
        total += 1
        if dequantized(data) and dequantized(weight):
            int8 += 1
        else:
            fp32.append(node.name or f"{node.op_type}#{total}")
    return LayerCensus(int8, total, tuple(fp32[: LayerCensus.MAX_NAMES]))
