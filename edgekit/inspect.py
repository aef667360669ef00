"""`edgekit inspect`: describe an ONNX file or a torch model source in a few readable lines."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from edgekit.config import resolve_source
from edgekit.errors import ConfigError, ModelError
from edgekit.model import build_module, onnx_specs


def _describe_onnx(path: Path) -> str:
    import numpy as np
    import onnx

    inputs, outputs = onnx_specs(path)
    model = onnx.load(str(path))
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    ops = Counter(n.op_type for n in model.graph.node)
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
    out_types = {o.name: o for o in model.graph.output}
    lines = [
        f"model: {path} (ONNX, {path.stat().st_size} bytes, opset {opsets})",
        f"producer: {model.producer_name} {model.producer_version}".rstrip(),
        "inputs:",
        *[f"  {s.name}: {s.dtype} {list(s.shape)}" for s in inputs],
        "outputs:",
    ]
    for name in outputs:
        t = out_types[name].type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
        lines.append(f"  {name}: {onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else '?'} {dims}")
    lines.append(f"parameters: {params:,} in {len(model.graph.initializer)} initializers")
    lines.append(f"nodes: {len(model.graph.node)} — " + ", ".join(f"{op} {n}" for op, n in ops.most_common()))
    return "\n".join(lines)


def _describe_torch(source: str) -> str:
    try:
        resolved = resolve_source(source, Path.cwd())
    except ConfigError as exc:
        raise ModelError(str(exc).replace("[model] source", "MODEL")) from None
    module, _ = build_module(resolved)
    params = sum(p.numel() for p in module.parameters())
    kinds = Counter(type(m).__name__ for m in module.modules() if not list(m.children()))
    return "\n".join([
        f"model: {source} (torch, {type(module).__name__})",
        f"parameters: {params:,} ({params * 4:,} bytes as FP32)",
        "layers: " + ", ".join(f"{k} {n}" for k, n in kinds.most_common()),
        "inputs/outputs: declared in the build config's [model] inputs; run `edgekit build` to export and check them",
    ])


def describe(model: str) -> str:
    """A few lines on ``model``: an .onnx path, or a torch source (file.py:factory, module:factory, example:NAME)."""
    if model.endswith(".onnx"):
        path = Path(model)
        if not path.is_file():
            raise ModelError(f"ONNX model {path} does not exist")
        return _describe_onnx(path)
    return _describe_torch(model)
