"""The ``gelu_approximation`` pass: exact Gelu nodes become com.microsoft ``FastGelu`` (GELU's tanh approximation)."""

from __future__ import annotations

from pathlib import Path

from edgekit.onnxio import save_like

def approximate_gelu(src: Path, dst: Path) -> int:
    """``src`` with every exact Gelu (ONNX opset 20 or com.microsoft, erf form) as com.microsoft FastGelu into
    ``dst``; returns how many."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    count = 0
    for i, node in enumerate(model.graph.node):
        exact = all(a.name != "approximate" or a.s in (b"", b"none") for a in node.attribute)
        if node.op_type == "Gelu" and node.domain in ("", "ai.onnx", "com.microsoft") and exact:
            model.graph.node[i].CopyFrom(helper.make_node("FastGelu", list(node.input), list(node.output),
                                                          name=node.name or f"fast_gelu_{i}", domain="com.microsoft"))
            count += 1
    if count and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    save_like(model, dst, src)
    return count
