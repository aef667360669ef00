"""`edgekit inspect`: describe an ONNX file or a torch model source in a few readable lines."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from edgekit.errors import ModelError


def _describe_onnx(path: Path) -> str:
    import numpy as np
    import onnx

    from edgekit.model import _onnx_specs

    inputs, outputs = _onnx_specs(path)
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
    from edgekit.config import _resolve_source
    from edgekit.errors import ConfigError
    from edgekit.model import _call_factory, _example, _import_file, _import_module

    try:
        resolved = _resolve_source(source, Path.cwd())
    except ConfigError as exc:
        raise ModelError(str(exc).replace("[model] source", "MODEL")) from None
    if resolved.startswith("example:"):
        module, weights = _example(resolved.split(":", 1)[1])
    elif ".py:" in resolved:
        file_part, factory = resolved.rsplit(":", 1)
        module = _call_factory(_import_file(Path(file_part)), factory, file_part)
    else:
        dotted, factory = resolved.split(":", 1)
        module = _call_factory(_import_module(dotted), factory, dotted)
    params = sum(p.numel() for p in module.parameters())
    kinds = Counter(type(m).__name__ for m in module.modules() if not list(m.children()))
    return "\n".join([
        f"model: {source} (torch, {type(module).__name__})",
        f"parameters: {params:,} ({params * 4:,} bytes as FP32)",
        "layers: " + ", ".join(f"{k} {n}" for k, n in kinds.most_common()),
        "inputs/outputs: declared in the build config's [model] inputs; run `edgekit build` to export and check them",
    ])


def describe(model: str) -> str:
    if model.endswith(".onnx"):
        path = Path(model)
        if not path.is_file():
            raise ModelError(f"ONNX model {path} does not exist")
        return _describe_onnx(path)
    return _describe_torch(model)
