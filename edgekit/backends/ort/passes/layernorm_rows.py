"""Residual Add + LayerNormalization pairs moved to 2-D rows, where ONNX Runtime does not fuse them into its slower
``SkipLayerNormalization`` (see ``layernorm_rows``). Exact up to float summation order."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit.backends.onnx.graph import GraphIndex, inferred_shapes, prune_dead, rename_uses, reorder_nodes

def _same_3d(a: list[Any] | None, b: list[Any]) -> bool:
    """Same [batch, seq, hidden]: equal literal hidden, and batch and seq each equal or run-time on both sides (two
    symbolic names can differ only in how shape inference named them; a literal dim against a run-time one could
    be a broadcast)."""
    if a is None or len(a) != 3 or a[2] != b[2]:
        return False
    return all(x == y or (not isinstance(x, int) and not isinstance(y, int)) for x, y in zip(a[:2], b[:2]))


def layernorm_rows(model: Any) -> int:
    """Run each residual ``LayerNormalization(Add(a, b))`` over [rows, hidden] instead of [batch, seq, hidden].

    ONNX Runtime fuses a 3-D Add + LayerNormalization into ``SkipLayerNormalization``, whose CPU kernel is slower than
    Add + LayerNormalization on the same data (benchmarks/kernel_timings.py; docs/backends.md). On 2-D rows the
    fusion does not apply. Reshapes that only moved a projection's 2-D output to 3-D and back are bypassed, so the
    residual stream stays 2-D from one projection to the next. Edits ``model`` in place; returns how many were moved."""
    from onnx import helper, numpy_helper

    g = GraphIndex(model)
    shapes = inferred_shapes(model)
    graph = model.graph

    def static_3d(name: str) -> list[Any] | None:
        s = shapes.get(name)
        return s if s is not None and len(s) == 3 and isinstance(s[2], int) and s[2] > 0 and \
            (not isinstance(s[1], int) or s[1] > 0) else None  # hidden literal; seq literal or run-time

    def rows_source(name: str, hidden: int) -> str | None:
        """The 2-D [rows, hidden] tensor ``name`` was reshaped from, if any."""
        node = g.made_by(name, "Reshape")
        if node is None:
            return None
        s = shapes.get(node.input[0])
        return node.input[0] if s is not None and len(s) == 2 and s[1] == hidden else None

    chosen = []
    for ln in g.nodes:
        if ln.op_type != "LayerNormalization" or next((a.i for a in ln.attribute if a.name == "axis"), -1) not in (-1, 2):
            continue
        add = g.made_by(ln.input[0], "Add")
        shape = static_3d(ln.input[0])
        if add is None or shape is None or g.only_consumer(add.output[0]) is not ln:
            continue
        if not all(_same_3d(shapes.get(x), shape) for x in add.input):  # no broadcasting ([1, s, h] positions)
            continue
        chosen.append((ln, add, shape))
    if not chosen:
        return 0
    rows_of: dict[str, str] = {}  # 3-D tensor -> the same data as [rows, hidden]
    before: dict[str, list[Any]] = {}
    drop: set[str] = set()
    for i, (ln, add, (_, seq, hidden)) in enumerate(chosen):
        prefix = f"edgekit_rows_{i}"
        added = []
        flat_shape = f"{prefix}_flat_shape"
        graph.initializer.append(numpy_helper.from_array(np.array([-1, hidden], dtype=np.int64), flat_shape))
        operands = []
        for j, x in enumerate(add.input):
            src = rows_of.get(x) or rows_source(x, hidden)
            if src is None:
                src = f"{prefix}_in{j}"
                added.append(helper.make_node("Reshape", [x, flat_shape], [src], name=src))
            operands.append(src)
        added.append(helper.make_node("Add", operands, [f"{prefix}_sum"], name=f"{prefix}_add"))
        ln_rows = helper.make_node("LayerNormalization", [f"{prefix}_sum", *ln.input[1:]], [f"{prefix}_out"],
                                   name=f"{prefix}_ln")
        ln_rows.attribute.extend(a for a in ln.attribute if a.name != "axis")
        ln_rows.attribute.append(helper.make_attribute("axis", -1))
        added.append(ln_rows)
        three_d = f"{prefix}_3d_shape"
        if isinstance(seq, int):
            graph.initializer.append(numpy_helper.from_array(np.array([-1, seq, hidden], dtype=np.int64), three_d))
        else:  # a dynamic sequence axis: back to the residual operand's own [batch, seq, hidden]
            added.append(helper.make_node("Shape", [add.input[0]], [three_d], name=three_d))
        # the old LayerNormalization's output keeps its name (later nodes and graph outputs read it), now a Reshape
        added.append(helper.make_node("Reshape", [ln_rows.output[0], three_d], [ln.output[0]], name=f"{prefix}_back"))
        rows_of[ln.output[0]] = ln_rows.output[0]
        before[ln.output[0]] = added
        drop.update((ln.output[0], add.output[0]))
    for n in g.nodes:  # consumers that flatten a moved output again read the rows directly
        if n.op_type == "Reshape" and n.input[0] in rows_of and n.output[0] not in g.graph_outputs:
            target = g.const(n.input[1])
            hidden = shapes[n.input[0]][2]
            if target is not None and target.tolist() == [-1, hidden]:
                rename_uses(graph, n.output[0], rows_of[n.input[0]])
                drop.add(n.output[0])
    reorder_nodes(graph, before, drop)
    prune_dead(graph)
    return len(chosen)
