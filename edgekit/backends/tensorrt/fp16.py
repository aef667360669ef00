"""The precision-explicit FP16 graph of the TensorRT targets: FP16 through explicit Casts with an FP32 keep-list,
and its FP16 emulation, which the host proxy runs on ONNX Runtime CPU.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgekit.backends.onnx.session import session
from edgekit.fsutil import atomic_move

log = logging.getLogger(__name__)

FP16_MAX = 65504.0
# Ops that stay FP32 unless the profile says otherwise: reductions and normalizations accumulate over many
# elements (a sum of squares leaves FP16 range quickly); Exp/Log/Pow overflow or lose precision at modest inputs.
DEFAULT_KEEP_FP32_OPS = (
    "LayerNormalization", "GroupNormalization", "InstanceNormalization", "LpNormalization",
    "Softmax", "LogSoftmax",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
    "ReduceProd", "Pow", "Exp", "Log",
)
# A constant "underflows" when the values FP16 rounds to 0 carry more than this share of its magnitude (an
# epsilon of 1e-12 does; a weight matrix with a few 1e-9 entries does not: they contribute nothing anyway).
UNDERFLOW_SHARE = 0.01
_FLOAT, _FLOAT16 = 1, 10  # onnx.TensorProto.FLOAT / FLOAT16, without importing onnx at module import


@dataclass(frozen=True)
class KeptNode:
    """One node the FP16 graph runs in FP32, and why."""

    node: str
    op_type: str
    reason: str

    def describe(self) -> str:
        return f"{self.node} ({self.op_type}): {self.reason}"


@dataclass
class Fp16Result:
    """The FP16 graph and what the conversion decided."""

    model: Any
    kept: list[KeptNode]
    fp16_nodes: int
    fp32_nodes: int
    casts: int
    unknown_keep_nodes: list[str] = field(default_factory=list)


def _normalized(model: Any) -> Any:
    """A copy with a unique name on every node and Constant nodes turned into initializers (idempotent)."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
            while node.name in seen:
                node.name += "_"
        seen.add(node.name)
    kept_nodes = []
    for node in graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(attrs) == 1:
            (name, attr), = attrs.items()
            value = None
            if name == "value":
                value = numpy_helper.to_array(attr.t)
            elif name in ("value_float", "value_floats"):
                value = np.asarray(attr.f if name == "value_float" else list(attr.floats), dtype=np.float32)
            elif name in ("value_int", "value_ints"):
                value = np.asarray(attr.i if name == "value_int" else list(attr.ints), dtype=np.int64)
            if value is not None:
                graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
                continue
        kept_nodes.append(node)
    if len(kept_nodes) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept_nodes)
    return out


def _float_constants(graph: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.data_type == _FLOAT}


def _constant_problem(name: str, value: np.ndarray) -> str:
    """Why a constant cannot be FP16: values beyond FP16 range, or nonzero values that round to 0."""
    finite = np.abs(value[np.isfinite(value)])
    if finite.size and float(finite.max()) > FP16_MAX:
        return f"reads constant '{name}' with |value| up to {float(finite.max()):.3g} > {FP16_MAX:.0f} (FP16 max)"
    vanished = finite[(finite > 0) & (finite.astype(np.float16) == 0)]
    if vanished.size and float(vanished.sum()) > UNDERFLOW_SHARE * float(finite.sum()):
        return f"reads constant '{name}' whose values (as small as {float(vanished.min()):.2g}) round to 0 in FP16"
    return ""


def fp16_keep_list(model: Any, keep_ops: Sequence[str], keep_nodes: Sequence[str] = ()) -> list[KeptNode]:
    """The nodes that must stay FP32: listed op types, listed node names, and nodes reading constants that
    FP16 cannot hold (|value| > 65504, or values that matter and would underflow to 0)."""
    graph = _normalized(model).graph
    problems = {name: why for name, value in _float_constants(graph).items() if (why := _constant_problem(name, value))}
    kept = []
    for node in graph.node:
        reasons = []
        if node.op_type in keep_ops:
            reasons.append("op type in keep_fp32_ops")
        if node.name in keep_nodes:
            reasons.append("named in keep_fp32_nodes")
        reasons += [problems[i] for i in dict.fromkeys(node.input) if i in problems]
        if reasons:
            kept.append(KeptNode(node.name, node.op_type, "; ".join(reasons)))
    return kept


def _schema(node: Any, opset: int) -> Any:
    import onnx

    if node.domain not in ("", "ai.onnx"):
        return None
    try:
        return onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return None


def _formal(params: Sequence[Any], index: int) -> Any:
    """The formal parameter of position ``index`` (a variadic last parameter covers the rest)."""
    import onnx

    if index < len(params):
        return params[index]
    last = params[-1] if params else None
    if last is not None and last.option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return last
    return None


def _subgraph_inputs(node: Any) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read from the enclosing graph."""
    names: set[str] = set()
    for attr in node.attribute:
        for g in [attr.g] if attr.HasField("g") else list(attr.graphs):
            local = {i.name for i in g.input} | {t.name for t in g.initializer}
            for n in g.node:
                local.update(n.output)
            for n in g.node:
                names.update(i for i in n.input if i and i not in local)
                names.update(i for i in _subgraph_inputs(n) if i not in local)
            names.update(o.name for o in g.output if o.name not in local)
    return names


def _has_subgraph(node: Any) -> bool:
    return any(a.HasField("g") or len(a.graphs) for a in node.attribute)


def _elem_types(model: Any) -> dict[str, int]:
    """Element type of every tensor, from ONNX type inference (stale value_info of an export is dropped first)."""
    import onnx

    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(bare, check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:  # shape inference raises several kinds; types then come from what the file declares
        log.debug("shape inference failed before FP16 conversion: %s", exc)
        inferred = bare
    g = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.input, *g.output, *g.value_info] if vi.type.HasField("tensor_type")}
    types.update({t.name: t.data_type for t in g.initializer})
    return {k: v for k, v in types.items() if v}


def _node_plan(node: Any, schema: Any, original: dict[str, int], opset: int) -> tuple[set[str], str]:
    """(type variables that would turn FP16, reason the node cannot) for a node not on the keep-list."""
    if _has_subgraph(node):
        return set(), "control flow (subgraphs stay as exported)"
    if schema is None:
        return set(), "no ONNX schema (custom-domain op)"
    out_vars = {o.type_str for o in schema.outputs}
    tied = set()
    for i, name in enumerate(node.input):
        formal = _formal(schema.inputs, i)
        if name and formal is not None and formal.type_str in out_vars and original.get(name) == _FLOAT:
            tied.add(formal.type_str)
    if not tied:
        return set(), ""
    allowed = {tc.type_param_str: set(tc.allowed_type_strs) for tc in schema.type_constraints}
    if any("tensor(float16)" not in allowed.get(v, set()) for v in tied):
        return set(), f"no FP16 form of {node.op_type} in ONNX opset {opset}"
    if any(n and not original.get(n) for n in [*node.input, *node.output]):
        return set(), "tensor type could not be inferred"
    return tied, ""


def convert_fp16(model: Any, keep: Sequence[KeptNode]) -> Fp16Result:
    """Make every FP32 compute node FP16 except the kept ones, with explicit Casts where precisions meet.

    Graph inputs and outputs stay FP32. Each node sees its inputs in exactly the type it runs in: FP16 nodes
    get FP16 tensors and FP16 weights, kept nodes get the original FP32 tensors (so two kept nodes in a row
    never round-trip through FP16). Nodes with no FP16 form in ONNX, custom-domain nodes, control flow, and
    nodes touching tensors whose type cannot be inferred stay FP32 too and are added to the returned keep-list.
    """
    from onnx import helper, numpy_helper

    model = _normalized(model)
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)
    original = _elem_types(model)
    kept = {k.node: k for k in keep}
    unknown_keep = [k.node for k in keep if k.node not in {n.name for n in graph.node}]
    casts_before = sum(1 for n in graph.node if n.op_type == "Cast")

    # Tensors read by subgraphs must keep their original type: their producers stay FP32.
    producer = {o: n for n in graph.node for o in n.output}
    for name in sorted(set().union(*(_subgraph_inputs(n) for n in graph.node))):
        n = producer.get(name)
        if n is not None and n.name not in kept:
            kept[n.name] = KeptNode(n.name, n.op_type, f"output '{name}' is read by a control-flow subgraph")

    initializers = {t.name: t for t in graph.initializer}
    taken = set(original) | {x for n in graph.node for x in [*n.input, *n.output]} | set(initializers)
    current = {i.name: original.get(i.name, 0) for i in graph.input}
    current.update({name: t.data_type for name, t in initializers.items()})
    converted: dict[tuple[str, int], str] = {}
    fp16_copies: dict[str, str] = {}
    new_nodes: list[Any] = []
    fp16_count = fp32_count = 0

    def fresh(base: str) -> str:
        name = base
        while name in taken:
            name += "_"
        taken.add(name)
        return name

    def as_type(name: str, want: int) -> str:
        """``name`` in type ``want``: itself, an FP16 copy of an initializer, or the output of a Cast."""
        if not name or current.get(name) == want or current.get(name) not in (_FLOAT, _FLOAT16):
            return name
        if (name, want) not in converted:
            suffix = "fp16" if want == _FLOAT16 else "fp32"
            out = fresh(f"{name}_{suffix}")
            if name in initializers and want == _FLOAT16:
                value = numpy_helper.to_array(initializers[name])
                clipped = np.clip(value, -FP16_MAX, FP16_MAX)  # out-of-range constants are on the keep-list
                graph.initializer.append(numpy_helper.from_array(clipped.astype(np.float16), out))
                fp16_copies[out] = name
            else:
                new_nodes.append(helper.make_node("Cast", [name], [out], name=fresh(f"{name}_cast_{suffix}"), to=want))
            converted[(name, want)] = out
            current[out] = want
        return converted[(name, want)]

    for node in graph.node:
        schema = _schema(node, opset)
        touches_float = any(original.get(n) == _FLOAT for n in [*node.input, *node.output] if n)
        if node.name in kept:
            tied, reason = set(), kept[node.name].reason
        else:
            tied, reason = _node_plan(node, schema, original, opset)
            if reason and touches_float:
                kept[node.name] = KeptNode(node.name, node.op_type, reason)
        fp16 = bool(tied)
        for i, name in enumerate(node.input):
            if not name or original.get(name) != _FLOAT:
                continue
            formal = _formal(schema.inputs, i) if schema is not None else None
            concrete = formal is None or formal.type_str.startswith(("tensor(", "seq("))
            if fp16 and not concrete:
                node.input[i] = as_type(name, _FLOAT16)
            elif not fp16 and (concrete or node.name in kept):
                node.input[i] = as_type(name, _FLOAT)
            # otherwise a type-agnostic input (Shape's data, Cast's input) takes whatever type arrives
        for j, name in enumerate(node.output):
            formal = _formal(schema.outputs, j) if schema is not None else None
            to16 = fp16 and formal is not None and formal.type_str in tied and original.get(name) == _FLOAT
            current[name] = _FLOAT16 if to16 else original.get(name, 0)
        fp16_count += int(fp16)
        fp32_count += int(not fp16 and touches_float and node.op_type != "Cast")
        new_nodes.append(node)

    # Graph outputs stay FP32: an FP16 producer writes NAME_fp16 and a final Cast makes NAME.
    renames = {o.name: fresh(f"{o.name}_fp16") for o in graph.output if current.get(o.name) == _FLOAT16}
    for node in new_nodes:
        for seq in (node.input, node.output):
            for k, name in enumerate(seq):
                seq[k] = renames.get(name, name)
    for name, inner in renames.items():
        new_nodes.append(helper.make_node("Cast", [inner], [name], name=fresh(f"{name}_cast_fp32"), to=_FLOAT))
    del graph.node[:]
    graph.node.extend(new_nodes)
    drop_unused_initializers(graph, fp16_copies)
    del graph.value_info[:]
    casts = sum(1 for n in graph.node if n.op_type == "Cast") - casts_before
    order = [n.name for n in graph.node]
    return Fp16Result(model, [kept[n] for n in order if n in kept], fp16_count, fp32_count, casts, unknown_keep)


def drop_unused_initializers(graph: Any, fp16_copies: dict[str, str]) -> None:
    """Drop initializers nothing reads any more (FP32 originals of weights now held in FP16), and give an
    FP16 copy its original's name back when the original is gone, so weight names survive the conversion."""
    read = {i for n in graph.node for i in n.input} | {v.name for v in [*graph.output, *graph.input]}
    read |= set().union(*(_subgraph_inputs(n) for n in graph.node))
    kept = [t for t in graph.initializer if t.name in read]
    names = {t.name for t in kept}
    rename = {copy: orig for copy, orig in fp16_copies.items() if copy in names and orig not in names}
    for t in kept:
        t.name = rename.get(t.name, t.name)
    for n in graph.node:
        for k, name in enumerate(n.input):
            n.input[k] = rename.get(name, name)
    del graph.initializer[:]
    graph.initializer.extend(kept)


def verify_fp16(model: Any, reference: Any) -> str:
    """Check the FP16 graph: ONNX checker, strict type inference (when the reference passes it), FP32 inputs
    and outputs, topological order. Raise ValueError naming the first problem; return what was checked."""
    import onnx

    onnx.checker.check_model(model, full_check=False)  # also checks topological order
    for vi in [*model.graph.input, *model.graph.output]:
        ref = {v.name: v.type.tensor_type.elem_type for v in [*reference.graph.input, *reference.graph.output]}
        if vi.type.tensor_type.elem_type != ref.get(vi.name):
            raise ValueError(f"graph input/output '{vi.name}' changed type in the FP16 graph")
    try:
        onnx.shape_inference.infer_shapes(reference, check_type=True, strict_mode=True)
    except Exception:  # the exported graph itself is beyond strict inference: only the checker applies
        return "ONNX checker passed (strict type inference does not apply to this graph)"
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:
        raise ValueError(f"the FP16 graph fails strict ONNX type inference: {str(exc).splitlines()[0][:300]}") from None
    return "ONNX checker and strict type inference passed; inputs and outputs FP32"


def make_fp16_onnx(src: Path, dst: Path, keep_ops: Sequence[str], keep_nodes: Sequence[str] = ()) -> dict[str, Any]:
    """Write the precision-explicit FP16 graph of ``src`` to ``dst`` after verifying it; return the notes."""
    import onnx

    reference = onnx.load(str(src))
    keep = fp16_keep_list(reference, keep_ops, keep_nodes)
    result = convert_fp16(reference, keep)
    checked = verify_fp16(result.model, reference)
    with tempfile.TemporaryDirectory(prefix="edgekit-trt-") as tmp:
        out = Path(tmp) / "model.onnx"
        onnx.save(result.model, str(out))
        loads_in_onnxruntime(out)
        atomic_move(out, dst)
    notes: dict[str, Any] = {
        "precision": f"FP16 through explicit Cast nodes, inputs and outputs FP32: {result.fp16_nodes} node(s) FP16, "
        f"{result.fp32_nodes} with FP32 tensors, {result.casts} Cast(s) inserted",
        "fp32_keep_ops": list(keep_ops),
        "fp32_keep_list": [k.describe() for k in result.kept] or ["(none)"],
        "verification": checked + "; loads in ONNX Runtime",
    }
    if result.unknown_keep_nodes:
        notes["keep_fp32_nodes_not_found"] = result.unknown_keep_nodes
        log.warning("keep_fp32_nodes not in the graph: %s", result.unknown_keep_nodes)
    return notes


def loads_in_onnxruntime(path: Path) -> None:
    """Raise unless ONNX Runtime loads the ONNX file at ``path`` (graph optimizations off)."""
    session(str(path), 1, optimize=False)


def emulate_fp16(model: Any) -> Any:
    """An FP32 graph that computes what the FP16 graph computes with FP32 accumulation: FP32 arithmetic, and
    every FP16 tensor rounded to FP16 (a Cast to FP16 and back) where it is produced; FP16 weights keep their
    FP16 values. ONNX Runtime needs this to measure FP16 on a CPU without FP16 kernels: given the FP16 graph
    itself, it runs the FP16 chains in FP32 and drops the rounding (overflows included) without a word."""
    import onnx
    from onnx import helper, numpy_helper

    model = _normalized(model)
    graph = model.graph
    types = _elem_types(model)
    unknown = [o for n in graph.node for o in n.output if o and o not in types]
    if unknown:
        raise ValueError(f"FP16 emulation needs every tensor's type; ONNX type inference leaves {unknown[:3]} unknown")
    taken = {x for n in graph.node for x in [*n.input, *n.output]} | {t.name for t in graph.initializer}
    for t in graph.initializer:
        if t.data_type == _FLOAT16:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
    nodes = []
    for node in graph.node:
        rounded = []
        for j, out in enumerate(node.output):
            if out and types.get(out) == _FLOAT16:
                raw = out + "_emu"
                while raw in taken:
                    raw += "_"
                taken.add(raw)
                node.output[j] = raw
                rounded.append((raw, out))
        nodes.append(node)
        for raw, out in rounded:
            if node.op_type == "Cast":  # already produces FP16: only widen it back
                nodes.append(helper.make_node("Cast", [raw], [out], name=f"{out}_emu_fp32", to=_FLOAT))
            else:
                nodes += [helper.make_node("Cast", [raw], [raw + "_fp16"], name=f"{out}_emu_round", to=_FLOAT16),
                          helper.make_node("Cast", [raw + "_fp16"], [out], name=f"{out}_emu_fp32", to=_FLOAT)]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    onnx.checker.check_model(model, full_check=False)
    return model
