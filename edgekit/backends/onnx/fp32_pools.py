"""A MaxPool after a layer kept in FP32 pools in FP32, so that ONNX Runtime runs it in its fast layout.

In a QDQ graph a MaxPool is quantized like its input: a Q of its own, with the scale and zero point of its input's.
When the layer before it is quantized, ONNX Runtime fuses the chain into ``QLinearConv -> NhwcMaxPool`` (channels
last, fast). When that layer stays FP32 (``edgekit debug``'s keep-FP32 candidates, the recovery's exclusions,
``fp32_input_layers``), ONNX Runtime's QDQ propagation moves the pool's Q back before the pool (or the pool stays
between its input's Q/DQ pair) and runs a uint8 MaxPool in NCHW layout: 2.75 ms of an 8.9 ms call for the
ResNet-18-shaped stem's pool on a 2-core AVX-512 host, where the FP32 pool (blocked NCHWc, beside the FP32 conv)
takes a fraction of a millisecond. Keeping that stem FP32 looked like it cost 2.6 ms, almost all of it this pool.

The rewrite: ``x -> [Q -> DQ ->] MaxPool -> Q'`` becomes ``x -> MaxPool -> Relu -> Q'``, with the same numbers:

* a per-tensor Q is monotone, so ``Q(max(x)) = max(Q(x))``: with the pair's Q equal to Q' (scale and zero point),
  the pool's own Q rounds exactly what the pair did;
* the Relu changes nothing when Q' clamps at 0 (its zero point is its type's minimum, as when the quantizer folded
  a Relu into it): every negative value rounds to the zero point either way. Only that case is rewritten. The Relu
  is not an op the propagation moves a Q across, so the pool stays FP32; ONNX Runtime then folds it into Q'.
"""

from __future__ import annotations

from typing import Any

import numpy as np

QMIN = {2: 0, 3: -128}  # onnx TensorProto.UINT8 / INT8: the lowest value of the zero point's type


def pool_fp32_outputs(graph: Any) -> int:
    """Rewrite every MaxPool of ``graph`` (a GraphProto, edited in place; the caller drops the Q/DQ pairs no node
    reads any more) that pools an FP32 layer's output, directly or through its Q/DQ pair, and whose own Q clamps at
    0, as the module docstring describes. Returns how many were rewritten."""
    from onnx import helper, numpy_helper

    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for n in graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    consts = {i.name: i for i in graph.initializer}

    def value(name: str) -> np.ndarray | None:
        found = consts.get(name)
        external = found is not None and found.data_location == found.EXTERNAL
        return numpy_helper.to_array(found) if found is not None and not external else None

    def quant(node: Any) -> tuple[np.ndarray, np.ndarray, int] | None:
        """(scale, zero point, zero point's ONNX type) of a per-tensor Q/DQ with constant parameters."""
        if len(node.input) < 3 or node.input[2] not in consts:
            return None
        scale, zero = value(node.input[1]), value(node.input[2])
        if scale is None or zero is None or scale.size != 1 or zero.size != 1:
            return None
        return scale, zero, consts[node.input[2]].data_type

    def fp32_layer(name: str) -> bool:
        """Whether ``name`` is computed by a float node: one of its data inputs (the first two: a layer's activation
        and weight) is not a DequantizeLinear output, so ONNX Runtime cannot fuse it into an integer op."""
        node = producer.get(name)
        if node is None or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            return False
        dequantized = [producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in node.input[:2] if i]
        return not all(dequantized)

    rewritten = 0
    relus: dict[str, Any] = {}
    for pool in list(graph.node):
        after = readers.get(pool.output[0], []) if pool.op_type == "MaxPool" else []
        if len([o for o in pool.output if o]) != 1 or len(after) != 1 or after[0].op_type != "QuantizeLinear":
            continue
        theirs = quant(after[0])
        if theirs is None or theirs[2] not in QMIN or int(theirs[1].ravel()[0]) != QMIN[theirs[2]]:
            continue  # Q' does not clamp at 0: a Relu before it would change the numbers
        dq = producer.get(pool.input[0])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear" and fp32_layer(q.input[0]):
            ours, pair = quant(q), quant(dq)  # the pair must round as Q' does
            if ours is None or pair is None or not all(
                    np.array_equal(a.ravel(), b.ravel()) and x[2] == theirs[2]
                    for x in (ours, pair) for a, b in zip(x[:2], theirs[:2])):
                continue
            pool.input[0] = q.input[0]
        elif not fp32_layer(pool.input[0]):
            continue  # a quantized layer's pool: ONNX Runtime fuses it with that layer
        relu_out = f"{pool.output[0]}__edgekit_relu"
        relus[pool.output[0]] = helper.make_node("Relu", [pool.output[0]], [relu_out], name=f"{pool.name}__edgekit_relu")
        after[0].input[0] = relu_out
        rewritten += 1
    if rewritten:
        nodes = []
        for n in graph.node:  # each Relu right after its pool
            nodes.append(n)
            if n.op_type == "MaxPool" and n.output[0] in relus:
                nodes.append(relus[n.output[0]])
        del graph.node[:]
        graph.node.extend(nodes)
    return rewritten

