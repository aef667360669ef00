"""edgekit's transformer rewrites for ONNX Runtime: attention into one fused node, residual LayerNorms on rows.

``torch.onnx.export`` writes a transformer's self-attention as a dozen small ops per layer::

    q = Transpose(Reshape(Q, [b, s, heads, d]), 0213)        k = Transpose(Reshape(K, ...), 0231)
    v = Transpose(Reshape(V, ...), 0213)
    p = Softmax(Add(Mul(MatMul(q, k), scale), bias))          (Mul/Div and Add optional)
    out = Reshape(Transpose(MatMul(p, v), 0213), ...)

ONNX Runtime's own transformer optimizer recognizes this only under the mask subgraphs of older exporters. The
pattern does not depend on how the additive mask ``bias`` was computed, so ``fuse_attention`` matches it directly:

- Q, K, V constant-weight projections of one input, and ``bias`` a Where between 0 and a large negative constant
  (Hugging Face's SDPA mask): the whole block, projections included, becomes one ``com.microsoft.Attention`` node with
  packed [q | k | v] weights and a 0/1 ``mask_index``. Dynamic quantization turns it into ``QAttention``: one INT8
  projection GEMM whose output the kernel lays out per head itself.
- otherwise: the attention core becomes ``com.microsoft.MultiHeadAttention`` with ``bias`` as its attention_bias; the
  projections stay MatMul/Gemm nodes (and so still become INT8 kernels).

Exact up to float summation order; the transformer pass checks the result numerically before use.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit.backends.onnx.graph import MS_DOMAIN, GraphIndex, inferred_shapes, prune_dead, reorder_nodes

def _perm(node: Any) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), [])


def _head_split(g: GraphIndex, shapes: dict[str, list[Any]], name: str, perm: list[int]) -> tuple[Any, Any, list[int | None]] | None:
    """``name`` = Transpose(Reshape(x, [b, s, heads, d]), perm): (transpose, reshape, [b, s, heads, d]) when it
    matches; b and s are None when the shape is computed at run time (heads and d must be literal)."""
    transpose = g.made_by(name, "Transpose")
    if transpose is None or _perm(transpose) != perm:
        return None
    reshape = g.made_by(transpose.input[0], "Reshape")
    if reshape is None or g.only_consumer(reshape.output[0]) is not transpose:
        return None
    dims = _shape_vector(g, reshape.input[1])
    if dims is None or len(dims) != 4 or None in dims[2:] or 0 in dims or dims[2:].count(-1) > 1:
        return None  # heads and head size literal (one may be -1); 0 would copy a dim of the (maybe 2-D) input
    if -1 in dims[2:]:  # the -1 is hidden / the other, hidden being the width of the tensor split into heads
        width = (shapes.get(reshape.input[0]) or [None])[-1]
        known = dims[3] if dims[2] == -1 else dims[2]
        if not isinstance(width, int) or width <= 0 or width % known:
            return None
        dims = dims[:2] + ([width // known, known] if dims[2] == -1 else [known, width // known])
    return transpose, reshape, dims


def _shape_vector(g: GraphIndex, name: str) -> list[int | None] | None:
    """A shape tensor's entries: a constant, or a Concat of one-element parts (None where a part is computed)."""
    value = g.const(name)
    if value is not None:
        return [int(v) for v in value.reshape(-1)]
    concat = g.made_by(name, "Concat")
    if concat is None:
        return None
    parts = [g.const(x) for x in concat.input]
    if any(p is not None and p.size != 1 for p in parts):
        return None
    return [None if p is None else int(p.reshape(-1)[0]) for p in parts]


def _scalar(g: GraphIndex, node: Any) -> tuple[str, float] | None:
    """(other input, value) of a Mul/Div whose one input is a constant scalar."""
    for i, name in enumerate(node.input):
        value = g.const(name)
        if value is not None and value.size == 1:
            if node.op_type == "Div" and i == 0:
                return None
            return node.input[1 - i], float(value.reshape(()))
    return None


def _scores(g: GraphIndex, name: str) -> bool:
    """Is ``name`` a MatMul output, or one scaled by a constant scalar (the attention scores, not the mask)?"""
    if g.made_by(name, "MatMul") is not None:
        return True
    node = g.made_by(name, "Mul") or g.made_by(name, "Div")
    hit = _scalar(g, node) if node is not None else None
    return hit is not None and g.made_by(hit[0], "MatMul") is not None


def _match(g: GraphIndex, shapes: dict[str, list[Any]], softmax: Any) -> dict[str, Any] | None:
    """The attention around one Softmax, or None."""
    axis = next((a.i for a in softmax.attribute if a.name == "axis"), -1)
    if axis not in (-1, 3):
        return None
    removed = [softmax]
    name, bias, scale = softmax.input[0], "", 1.0
    add = g.made_by(name, "Add")
    if add is not None and g.only_consumer(add.output[0]) is softmax:
        scores_side = [i for i in add.input if _scores(g, i)]
        if len(scores_side) != 1:
            return None
        name = scores_side[0]
        bias = add.input[1] if add.input[0] == name else add.input[0]
        removed.append(add)
    for op in ("Mul", "Div"):
        node = g.made_by(name, op)
        if node is not None and g.only_consumer(node.output[0]) is removed[-1]:
            hit = _scalar(g, node)
            if hit is None:
                return None
            name, value = hit
            scale = value if op == "Mul" else 1.0 / value
            removed.append(node)
            break
    qk = g.made_by(name, "MatMul")
    if qk is None or g.only_consumer(qk.output[0]) is not removed[-1]:
        return None
    removed.append(qk)
    pv = g.only_consumer(softmax.output[0])
    if pv is None or pv.op_type != "MatMul" or pv.input[0] != softmax.output[0]:
        return None
    merge = g.only_consumer(pv.output[0])
    if merge is None or merge.op_type != "Transpose" or _perm(merge) != [0, 2, 1, 3]:
        return None
    # the merged heads are read by one Reshape, or (dynamic sequence axis) by several: the [b, s, hidden] view and the
    # 2-D one a projection reads; each takes the fused node's [b, s, hidden] output instead (same element order)
    out_reshapes = g.consumers.get(merge.output[0], [])
    if not out_reshapes or merge.output[0] in g.graph_outputs or any(not _safe_reshape(g, r) for r in out_reshapes):
        return None
    parts = [_head_split(g, shapes, qk.input[0], [0, 2, 1, 3]), _head_split(g, shapes, qk.input[1], [0, 2, 3, 1]),
             _head_split(g, shapes, pv.input[1], [0, 2, 1, 3])]
    if any(p is None for p in parts):
        return None
    shapes = [p[2] for p in parts]
    if any(s[2:] != shapes[0][2:] for s in shapes):
        return None
    for transpose, reshape, _ in parts:
        if g.only_consumer(transpose.output[0]) is None:
            return None
        removed += [transpose, reshape]
    heads, head_size = int(shapes[0][2]), int(shapes[0][3])
    removed += [pv, merge]
    return {"q": parts[0][1].input[0], "k": parts[1][1].input[0], "v": parts[2][1].input[0],
            "shapes": shapes, "heads": heads, "head_size": head_size, "scale": scale, "bias": bias,
            "outs": out_reshapes, "removed": removed}


def _safe_reshape(g: GraphIndex, node: Any) -> bool:
    """A Reshape that gives the same result from a [b, s, hidden] input as from [b, s, heads, d]: no 0 entry that
    would copy an input dim (allowzero = 0)."""
    if node.op_type != "Reshape":
        return False
    allowzero = next((a.i for a in node.attribute if a.name == "allowzero"), 0)
    dims = _shape_vector(g, node.input[1])
    if dims is None:
        return False
    return bool(allowzero) or 0 not in dims


def fuse_attention(model: Any) -> dict[str, int]:
    """Replace every matching self-attention in ``model`` (ONNX ModelProto, edited in place).

    Where Q, K and V are constant-weight projections of one input and the additive mask is a Where between 0 and a
    large negative constant, the whole block (projections included) becomes one ``Attention`` node with packed
    [q | k | v] weights and a 0/1 ``mask_index``; dynamic quantization then turns it into ``QAttention`` (INT8
    projection, heads laid out by the kernel itself, no Split/Reshape/Transpose ops). Otherwise the attention core
    becomes ``MultiHeadAttention`` with the mask as ``attention_bias``. Returns how many of each were made."""
    from onnx import helper

    g = GraphIndex(model)
    graph = model.graph
    counts = {"Attention": _quantizable_attention(g), "MultiHeadAttention": 0}
    if not any(n.op_type == "Softmax" for n in g.nodes):
        return counts
    shapes = inferred_shapes(model)
    found = [m for m in (_match(g, shapes, n) for n in g.nodes if n.op_type == "Softmax") if m is not None]
    if not found:
        return counts
    drop: set[str] = set()  # nodes by first output (protobuf wrappers are not stable identities)
    order = {n.output[0]: i for i, n in enumerate(graph.node)}
    before: dict[str, list[Any]] = {}  # new nodes go right before the Reshape that reads the attention output
    masks: dict[str, str] = {}  # additive mask -> its 0/1 int32 mask_index, made once per mask
    for i, m in enumerate(found):
        prefix = f"edgekit_attention_{i}"
        added: list[Any] = []
        hidden = m["heads"] * m["head_size"]
        packed = _pack_qkv(g, m, prefix)
        rows = _as_3d(g, shapes, packed[2], None, m["shapes"][0], graph, added, f"{prefix}_in") if packed else None
        mask = _mask_index(g, m["bias"], shapes, prefix, graph, added, masks) if rows is not None else None
        if packed is not None and rows is not None and mask is not None:
            weight, bias, _ = packed
            graph.initializer.extend([weight, bias])
            added.append(helper.make_node(
                "Attention", [rows, weight.name, bias.name, mask], [f"{prefix}_out"], name=prefix, domain=MS_DOMAIN,
                num_heads=m["heads"], scale=m["scale"], mask_filter_value=-10000.0,
            ))
            counts["Attention"] += 1  # the projections it replaces are left unread and pruned below
        else:
            added.clear()  # whatever the packed attempt prepared is not used
            inputs = [_as_3d(g, shapes, m[role], hidden, dims, graph, added, f"{prefix}_{role}")
                      for role, dims in zip(("q", "k", "v"), m["shapes"])]
            if None in inputs:
                continue
            seq = (shapes.get(inputs[0]) or [None, None])[1]
            bias = _attention_bias(m["bias"], shapes, seq if isinstance(seq, int) else m["shapes"][0][1], prefix,
                                   graph, added, masks)
            if bias is None:
                continue
            added.append(helper.make_node(
                "MultiHeadAttention", [*inputs, "", "", bias], [f"{prefix}_out"], name=prefix, domain=MS_DOMAIN,
                num_heads=m["heads"], scale=m["scale"],
            ))
            counts["MultiHeadAttention"] += 1
        for out in m["outs"]:
            out.input[0] = added[-1].output[0]
        first = min(m["outs"], key=lambda n: order[n.output[0]])  # the new nodes go before the earliest reader
        before[first.output[0]] = added
        drop.update(n.output[0] for n in m["removed"])
    reorder_nodes(graph, before, drop)
    prune_dead(graph)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return counts


def _quantizable_attention(g: GraphIndex) -> int:
    """Drop ``qkv_hidden_sizes`` = [h, h, h] from Attention nodes already in the graph (the exporter's optimizer
    writes them for unmasked attention): it only restates the default, and ONNX Runtime's quantizer leaves an
    Attention that carries it in FP32. Returns how many were changed."""
    changed = 0
    for n in g.nodes:
        if n.op_type != "Attention" or n.domain != MS_DOMAIN:
            continue
        weight = g.const(n.input[1]) if len(n.input) > 1 else None
        for k, a in enumerate(n.attribute):
            sizes = list(a.ints)
            if a.name == "qkv_hidden_sizes" and len(set(sizes)) == 1 and weight is not None and weight.shape[-1] == sum(sizes):
                del n.attribute[k]
                changed += 1
                break
    return changed


def _as_3d(g: GraphIndex, shapes: dict[str, list[Any]], name: str, hidden: int | None, dims: list[int | None], graph: Any,
           added: list[Any], prefix: str) -> str | None:
    """``name`` as a [batch, seq, width] tensor: itself when already 3-D (or the 3-D tensor a Reshape flattened it
    from), else a Reshape to [b, s, width] from the head split's literal b and s; None when neither is known.
    ``hidden`` checks the width when given."""
    shape = shapes.get(name)
    width = hidden if hidden is not None else (shape[-1] if shape else None)
    if shape is not None and len(shape) == 3 and shape[-1] == width:
        return name
    flat = g.made_by(name, "Reshape")
    source = shapes.get(flat.input[0]) if flat is not None else None
    if source is not None and len(source) == 3 and source[-1] == width and shape is not None and shape[-1] == width:
        return flat.input[0]
    if not isinstance(width, int) or dims[0] is None or dims[1] is None:
        return None
    return _reshape(graph, added, name, [int(dims[0]), int(dims[1]), width], prefix)


def _reshape(graph: Any, added: list[Any], name: str, shape: list[int], prefix: str) -> str:
    """Append a Reshape of ``name`` to the literal ``shape`` to ``added``; returns its output."""
    from onnx import helper, numpy_helper

    graph.initializer.append(numpy_helper.from_array(np.array(shape, dtype=np.int64), f"{prefix}_shape"))
    added.append(helper.make_node("Reshape", [name, f"{prefix}_shape"], [f"{prefix}_3d"], name=f"{prefix}_reshape"))
    return added[-1].output[0]


def _attention_bias(bias: str, shapes: dict[str, list[Any]], seq: int | None, prefix: str, graph: Any, added: list[Any],
                    made: dict[str, str]) -> str | None:
    """``bias`` as MultiHeadAttention's attention_bias, [batch or 1, heads or 1, queries, keys]: one broadcast over
    queries ([.., 1, keys]) is expanded once per tensor (the kernel wants every query row); None when not rank 4."""
    from onnx import helper, numpy_helper

    if not bias:
        return ""
    shape = shapes.get(bias)
    if shape is None or len(shape) != 4:
        return None
    if shape[2] != 1:
        return bias
    if seq is None or seq <= 0:
        return None
    key = f"expand:{bias}"
    if key not in made:
        graph.initializer.append(numpy_helper.from_array(np.array([1, 1, seq, 1], dtype=np.int64), f"{prefix}_bias_rows"))
        added.append(helper.make_node("Expand", [bias, f"{prefix}_bias_rows"], [f"{prefix}_bias"], name=f"{prefix}_bias"))
        made[key] = added[-1].output[0]
    return made[key]


MASKED = -1e4  # a Where branch at or below this is "masked out" (exp underflows to 0 either way)


def _mask_index(g: GraphIndex, bias: str, shapes: dict[str, list[Any]], prefix: str, graph: Any, added: list[Any],
                masks: dict[str, str]) -> str | None:
    """A [batch, seq, seq] int32 0/1 mask equal to the additive ``bias`` = Where(cond, 0, masked) (or the reverse),
    made from ``cond``; "" when there is no mask; None when ``bias`` is anything else."""
    from onnx import TensorProto, helper, numpy_helper

    if not bias:
        return ""
    if bias in masks:
        return masks[bias]
    where = g.made_by(bias, "Where")
    if where is None:
        return None
    values = [g.const(x) for x in where.input[1:]]
    if any(v is None or v.size != 1 for v in values):
        return None
    when_true, when_false = float(values[0].reshape(())), float(values[1].reshape(()))
    if not ((when_true == 0.0 and when_false <= MASKED) or (when_false == 0.0 and when_true <= MASKED)):
        return None
    shape = shapes.get(bias)
    if shape is None or len(shape) != 4 or shape[1] != 1 or any(d is None or (isinstance(d, int) and d <= 0) for d in shape[2:]):
        return None  # queries and keys literal or named (a dynamic sequence axis), one mask for every head
    if shapes.get(where.input[0]) != shape:
        return None
    if isinstance(shape[0], int) and shape[0] == 1 and g.const(where.input[0]) is not None:
        return None  # one mask for every batch row (e.g. a causal mask): mask_index needs one per row; MHA broadcasts
    keep = where.input[0]
    if when_true != 0.0:
        keep = f"{prefix}_mask_not"
        added.append(helper.make_node("Not", [where.input[0]], [keep], name=keep))
    # [batch, 1, 1, keys] -> the 2-D key mask; [batch, 1, queries, keys] -> the 3-D mask (Squeeze: any axis may be
    # dynamic)
    axes = f"{prefix}_mask_axes"
    graph.initializer.append(numpy_helper.from_array(np.array([1, 2] if shape[2] == 1 else [1], dtype=np.int64), axes))
    rows = f"{prefix}_mask_rows"
    added.append(helper.make_node("Squeeze", [keep, axes], [rows], name=rows))
    added.append(helper.make_node("Cast", [rows], [f"{prefix}_mask_index"], to=TensorProto.INT32, name=f"{prefix}_mask_index"))
    masks[bias] = added[-1].output[0]
    return masks[bias]


def _projection(g: GraphIndex, name: str) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(input, weight [in, out], bias [out]) of the constant-weight MatMul/Gemm that makes ``name``, if one does."""
    node = g.producer.get(name)
    if node is not None and node.op_type == "Reshape" and g.only_consumer(node.input[0]) is node:
        node = g.producer.get(node.input[0])  # the projection's [rows, out] output moved to 3-D first
    if node is None or node.op_type not in ("MatMul", "Gemm"):
        return None
    attrs = {a.name: (a.f if a.type == a.FLOAT else a.i) for a in node.attribute}
    if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
        return None
    weight = g.const(node.input[1])
    bias = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if weight is None or weight.ndim != 2 or (len(node.input) > 2 and node.input[2] and bias is None):
        return None
    if attrs.get("transB", 0):
        weight = weight.T
    if bias is None:
        bias = np.zeros(weight.shape[1], dtype=weight.dtype)
    if bias.shape != (weight.shape[1],):
        return None
    return node.input[0], weight, bias


def _pack_qkv(g: GraphIndex, m: dict[str, Any], prefix: str) -> tuple[Any, Any, str] | None:
    """One [in, 3 * hidden] weight and bias ([q | k | v] columns) for the Q, K, V projections of a matched
    attention, and their shared input; None when they can't be packed."""
    from onnx import numpy_helper

    parts = [_projection(g, m[r]) for r in ("q", "k", "v")]
    if any(p is None for p in parts) or len({p[0] for p in parts}) != 1:
        return None
    if any(g.only_consumer(m[r]) is None for r in ("q", "k", "v")):
        return None
    heads, size = m["heads"], m["head_size"]
    if any(p[1].shape[1] != heads * size for p in parts):
        return None
    weight = np.concatenate([p[1] for p in parts], axis=1)
    bias = np.concatenate([p[2] for p in parts])
    return (numpy_helper.from_array(np.ascontiguousarray(weight), f"{prefix}_qkv_weight"),
            numpy_helper.from_array(np.ascontiguousarray(bias), f"{prefix}_qkv_bias"), parts[0][0])
