"""The quantized layers of an INT8 ONNX artifact, matched to the FP32 reference, and the graphs built from them.

Two graph forms, one ``Layer`` each:

* static QDQ (ort-int8, tensorrt-int8): a Conv/Gemm/MatMul whose inputs come from DequantizeLinear. An activation
  input is ``DQ(Q(x))`` with the Q's scale and zero point; a weight (or bias) is ``DQ(constant)``.
* dynamic (ort-int8-dynamic): a ConvInteger/MatMulInteger fed by ``DynamicQuantizeLinear``; the reference node it
  replaced is found by name (``node_Conv_19_quant`` came from ``node_Conv_19``, ``node_linear_MatMul_quant`` from
  the Gemm ``node_linear``).

For each layer: a one-node graph that runs the layer four ways on the same FP32 inputs (FP32, fully quantized,
weights only, activations only). keep.py makes the copies of the artifact with layers kept in FP32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Ops that only move, select or clamp values: on quantized inputs they compute exactly what they would in FP32, so
# their Q/DQ pairs are not theirs to blame (they pass the producer's scale through)
PASS_THROUGH = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Slice", "Gather",
                          "GatherElements", "GatherND", "Split", "MaxPool", "Resize", "Pad", "Identity", "Expand", "Tile",
                          "DepthToSpace", "SpaceToDepth", "Shape", "Size", "Cast", "ReduceMax", "ReduceMin", "ArgMax",
                          "ArgMin", "Relu", "Clip", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                          "If", "Loop", "Scan"})
INTEGER_OPS = ("ConvInteger", "MatMulInteger")
VARIANTS = ("fp32", "full", "weight", "activation")


@dataclass
class Const:
    """A constant input of a layer: its FP32 value (from the reference) and its value after quantization."""

    index: int
    fp32: np.ndarray | None
    quantized: np.ndarray


@dataclass
class Act:
    """An activation input of a layer: the FP32 tensor of the reference it reads and how it is quantized."""

    index: int
    tensor: str  # the tensor name in the reference (and, before quantization, in the artifact)
    scale: np.ndarray | None = None  # static: the Q node's scale and zero point; None: quantized at run time
    zero_point: np.ndarray | None = None
    fp16: bool = False  # FP16 targets: the input rounded to float16 instead
    dynamic: bool = False  # dynamic INT8: uint8 over the tensor's own range, at run time


@dataclass
class Layer:
    """One quantized layer of the artifact."""

    node: str  # the reference's node name (the name users see; the artifact keeps it for static QDQ)
    op_type: str
    artifact_node: str
    consts: list[Const] = field(default_factory=list)
    acts: list[Act] = field(default_factory=list)
    out_artifact: str | None = None  # the tensor compared for the accumulated error, in the artifact ...
    out_reference: str | None = None  # ... and in the reference
    fp16: bool = False  # a layer of an FP16 artifact (no Q/DQ: float16 weights and tensors)

    @property
    def local_ok(self) -> bool:
        """Whether the one-layer graph can be built: every constant's FP32 value known."""
        return all(c.fp32 is not None for c in self.consts)


class Graphs:
    """Index of the reference and the artifact: producers, consumers, constants."""

    def __init__(self, reference: Any, artifact: Any):
        from onnx import numpy_helper

        self.reference, self.artifact = reference, artifact
        self.ref_nodes = {n.name: n for n in reference.graph.node}
        self.ref_consts = {i.name: numpy_helper.to_array(i) for i in reference.graph.initializer}
        self.ref_tensors = ({i.name for i in reference.graph.input} | {o for n in reference.graph.node for o in n.output}
                            | set(self.ref_consts))
        self.consts = {i.name: numpy_helper.to_array(i) for i in artifact.graph.initializer}
        for n in artifact.graph.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.producer = {o: n for n in artifact.graph.node for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in artifact.graph.node:
            for name in n.input:
                self.consumers.setdefault(name, []).append(n)
        self.fp16 = {i.name for i in artifact.graph.initializer if i.data_type == 10}  # TensorProto.FLOAT16
        self.opset = next((o.version for o in reference.opset_import if o.domain in ("", "ai.onnx")), 17)

    def dequantized(self, dq: Any) -> np.ndarray:
        """The value a DequantizeLinear of constants computes, in numpy."""
        x = self.consts[dq.input[0]].astype(np.float64)
        scale = self.consts[dq.input[1]].astype(np.float64)
        zero = self.consts[dq.input[2]].astype(np.float64) if len(dq.input) > 2 and dq.input[2] else 0.0
        if np.ndim(scale) == 1 and scale.size > 1:
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            axis = axis if axis >= 0 else axis + x.ndim
            shape = [1] * x.ndim
            shape[axis] = scale.size
            scale = scale.reshape(shape)
            zero = np.reshape(zero, shape) if np.ndim(zero) == 1 else zero
        return ((x - zero) * scale).astype(np.float32)

    def ref_value(self, name: str, like: np.ndarray) -> np.ndarray | None:
        """The reference's FP32 constant an artifact constant was quantized from, found by its name (``w_quantized``,
        ``w_Transposed_quantized`` -> ``w``), transposed back when the quantizer transposed it."""
        base = name
        for suffix in ("_quantized", "_DequantizeLinear_Output"):
            base = base[: -len(suffix)] if base.endswith(suffix) else base
        for candidate in (base, base.replace("_Transposed", "")):
            value = self.ref_consts.get(candidate)
            if value is not None and value.shape == like.shape:
                return value.astype(np.float32)
            if value is not None and value.ndim == 2 and value.T.shape == like.shape:
                return value.T.astype(np.float32)
        return None


def _is_const(g: Graphs, name: str) -> bool:
    return name in g.consts


def _qdq_layer(g: Graphs, node: Any) -> Layer | None:
    layer = Layer(node.name, node.op_type, node.name)
    for i, name in enumerate(node.input):
        if not name:
            continue
        dq = g.producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            if name in g.consts and g.consts[name].dtype.kind != "f":  # shapes, axes, indices: the same everywhere
                layer.consts.append(Const(i, g.consts[name], g.consts[name]))
            elif i > 0 and name in g.consts:  # an FP32 constant (TensorRT's folded bias)
                value = g.consts[name].astype(np.float32)
                layer.consts.append(Const(i, g.ref_value(name, value), value))
            elif name not in g.consts:
                layer.acts.append(Act(i, name))
            continue
        if _is_const(g, dq.input[0]):
            value = g.dequantized(dq)
            ref = g.ref_consts.get(name)
            if ref is None or ref.shape != value.shape:
                ref = g.ref_value(dq.input[0], value)
            layer.consts.append(Const(i, ref, value))
            continue
        q = g.producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            return None
        scale = g.consts.get(q.input[1])
        zero = g.consts.get(q.input[2]) if len(q.input) > 2 and q.input[2] else None
        layer.acts.append(Act(i, q.input[0], scale, zero))
    if not any(a.scale is not None for a in layer.acts) and not any(
            g.producer.get(node.input[c.index]) is not None for c in layer.consts):
        return None  # nothing of this layer is quantized (an FP32 stem, an excluded node)
    out = node.output[0]
    q = next((c for c in g.consumers.get(out, []) if c.op_type == "QuantizeLinear"), None)
    dq = next((c for c in g.consumers.get(q.output[0], []) if c.op_type == "DequantizeLinear"), None) if q else None
    if dq is not None:
        layer.out_artifact = dq.output[0]
        layer.out_reference = out if out in g.ref_tensors else (dq.output[0] if dq.output[0] in g.ref_tensors else None)
    elif out in g.ref_tensors:
        layer.out_artifact = layer.out_reference = out
    return layer


def _reference_of(g: Graphs, node: Any) -> Any | None:
    """The reference node a ConvInteger/MatMulInteger came from."""
    base = node.name[: -len("_quant")] if node.name.endswith("_quant") else node.name
    for name in (base, base[: -len("_MatMul")] if base.endswith("_MatMul") else None):
        if name and name in g.ref_nodes and g.ref_nodes[name].op_type in LAYER_OPS:
            return g.ref_nodes[name]
    return None


def _dynamic_layer(g: Graphs, node: Any) -> Layer | None:
    ref = _reference_of(g, node)
    if ref is None:
        return None
    layer = Layer(ref.name, ref.op_type, node.name)
    weight_q = node.input[1]
    for i, name in enumerate(ref.input):
        if not name:
            continue
        if name in g.ref_consts:
            fp32 = g.ref_consts[name].astype(np.float32)
            quantized = fp32
            if i == 1 and weight_q in g.consts:
                quantized = _dynamic_weight(g, node, fp32)
            layer.consts.append(Const(i, fp32, quantized))
        elif i == 0 or name not in g.consts:
            layer.acts.append(Act(i, name, dynamic=True))
    out = ref.output[0]
    if out in g.producer and out in g.ref_tensors:
        layer.out_artifact = layer.out_reference = out
    return layer


def _dynamic_weight(g: Graphs, node: Any, fp32: np.ndarray) -> np.ndarray:
    """The FP32 value of a ConvInteger/MatMulInteger's quantized weight, shaped like the reference's weight."""
    name = node.input[1]
    x = g.consts[name].astype(np.float64)
    zero = g.consts[node.input[3]].astype(np.float64) if len(node.input) > 3 and node.input[3] else 0.0
    base = name[: -len("_quantized")] if name.endswith("_quantized") else name
    scale = g.consts.get(base + "_scale")
    if scale is None:
        return fp32
    scale = scale.astype(np.float64)
    if scale.size > 1:  # per output channel: axis 0 of a conv weight, axis 1 of a (in, out) MatMul weight
        shape = [1] * x.ndim
        shape[0 if node.op_type == "ConvInteger" else x.ndim - 1] = scale.size
        scale = scale.reshape(shape)
        zero = np.reshape(zero, shape) if np.ndim(zero) == 1 and np.size(zero) > 1 else zero
    value = ((x - zero) * scale).astype(np.float32)
    if value.shape != fp32.shape and value.ndim == 2 and value.T.shape == fp32.shape:
        value = value.T
    return value if value.shape == fp32.shape else fp32


def _fp16_layer(g: Graphs, node: Any) -> Layer | None:
    """A layer of an FP16 artifact: float16 weights, float16 inputs (the same names as the reference's)."""
    if not any(name in g.fp16 for name in node.input) or node.name not in g.ref_nodes:
        return None
    ref = g.ref_nodes[node.name]
    layer = Layer(node.name, node.op_type, node.name, fp16=True)
    for i, name in enumerate(ref.input):
        if not name:
            continue
        if name in g.ref_consts:
            fp32 = g.ref_consts[name].astype(np.float32)
            layer.consts.append(Const(i, fp32, fp32.astype(np.float16).astype(np.float32)))
        else:
            layer.acts.append(Act(i, name, fp16=True))
    out = node.output[0]
    cast = next((c for c in g.consumers.get(out, []) if c.op_type == "Cast"), None)
    if out in g.ref_tensors:
        layer.out_artifact = layer.out_reference = out
    elif cast is not None and cast.output[0] in g.ref_tensors:  # the graph output, cast back to float32
        layer.out_artifact = layer.out_reference = cast.output[0]
    return layer


def find_layers(g: Graphs) -> list[Layer]:
    """Every quantized layer of the artifact, in graph order."""
    layers = []
    for node in g.artifact.graph.node:
        if node.op_type in INTEGER_OPS:
            layer = _dynamic_layer(g, node)
        elif g.fp16:
            layer = _fp16_layer(g, node) if node.op_type in LAYER_OPS else None
        elif node.op_type not in PASS_THROUGH and node.domain in ("", "ai.onnx", "com.microsoft"):
            layer = _qdq_layer(g, node)
        else:
            continue
        if layer is not None:
            layers.append(layer)
    return layers


def is_dynamic(g: Graphs) -> bool:
    return any(n.op_type in INTEGER_OPS or n.op_type == "DynamicQuantizeLinear" for n in g.artifact.graph.node)


# ---------------------------------------------------------------------------------------- one-layer graphs


def local_graph(g: Graphs, layer: Layer) -> bytes:
    """One graph running the layer four ways on the same FP32 inputs: outputs ``fp32``, ``full`` (its own
    quantization), ``weight`` (only the weights quantized), ``activation`` (only the inputs quantized)."""
    from onnx import TensorProto, helper, numpy_helper

    ref = g.ref_nodes.get(layer.node) if layer.artifact_node != layer.node else None
    source = ref if ref is not None else next(n for n in g.artifact.graph.node if n.name == layer.artifact_node)
    op_type = layer.op_type
    attrs = list(source.attribute)
    inits, nodes = [], []
    inputs = [helper.make_tensor_value_info(f"in{a.index}", TensorProto.FLOAT, None) for a in layer.acts]
    quantized_act: dict[int, str] = {}
    for a in layer.acts:
        name = f"in{a.index}"
        if a.fp16:  # rounded to float16 and back
            nodes.append(helper.make_node("Cast", [name], [f"h{a.index}"], to=TensorProto.FLOAT16))
            nodes.append(helper.make_node("Cast", [f"h{a.index}"], [f"dq{a.index}"], to=TensorProto.FLOAT))
        elif a.dynamic:  # uint8 over the tensor's range at run time, as DynamicQuantizeLinear does
            nodes.append(helper.make_node("DynamicQuantizeLinear", [name], [f"q{a.index}", f"s{a.index}", f"z{a.index}"]))
            nodes.append(helper.make_node("DequantizeLinear", [f"q{a.index}", f"s{a.index}", f"z{a.index}"], [f"dq{a.index}"]))
        elif a.scale is None:  # an input the artifact does not quantize
            quantized_act[a.index] = name
            continue
        else:
            inits.append(numpy_helper.from_array(np.asarray(a.scale), f"s{a.index}"))
            qin = [name, f"s{a.index}"]
            if a.zero_point is not None:
                inits.append(numpy_helper.from_array(np.asarray(a.zero_point), f"z{a.index}"))
                qin.append(f"z{a.index}")
            nodes.append(helper.make_node("QuantizeLinear", qin, [f"q{a.index}"]))
            nodes.append(helper.make_node("DequantizeLinear", [f"q{a.index}", *qin[1:]], [f"dq{a.index}"]))
        quantized_act[a.index] = f"dq{a.index}"
    for c in layer.consts:
        inits.append(numpy_helper.from_array(c.fp32, f"c{c.index}_fp32"))
        inits.append(numpy_helper.from_array(c.quantized, f"c{c.index}_q"))
    count = max([a.index for a in layer.acts] + [c.index for c in layer.consts]) + 1
    for variant in VARIANTS:
        args = [""] * count
        for a in layer.acts:
            args[a.index] = quantized_act[a.index] if variant in ("full", "activation") else f"in{a.index}"
        for c in layer.consts:
            args[c.index] = f"c{c.index}_q" if variant in ("full", "weight") else f"c{c.index}_fp32"
        node = helper.make_node(op_type, args, [variant], domain=source.domain or None)
        node.attribute.extend(attrs)
        nodes.append(node)
    graph = helper.make_graph(nodes, "layer", inputs, [helper.make_tensor_value_info(v, TensorProto.FLOAT, None) for v in VARIANTS], inits)
    opsets = [helper.make_opsetid("", max(g.opset, 13))]
    opsets += [helper.make_opsetid(o.domain, o.version) for o in g.artifact.opset_import if o.domain not in ("", "ai.onnx")]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = min(g.reference.ir_version or 8, 10)
    return model.SerializeToString()
