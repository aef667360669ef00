"""Resolve a model source (file.py:factory, package.module:factory, .onnx, example:NAME, hf:FOLDER) and load weights
safely."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

from edgekit.config import ModelConfig
from edgekit.errors import ConfigError, ModelError, shown
from edgekit.fsutil import check_regular_file, file_sha256
from edgekit.hf import is_hf, load_hf
from edgekit.types import SourceModel, TensorSpec
from edgekit.weights import load_weights

log = logging.getLogger(__name__)

EXAMPLES = ("digits",)
MAX_SOURCE_BYTES = 64 << 20  # a model's Python file; anything larger is not source code


def _call_factory(module: Any, factory: str, where: str) -> Any:
    fn = getattr(module, factory, None)
    if fn is None or not callable(fn):
        public = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
        raise ModelError(f"{where} has no callable '{factory}'; callables there: {', '.join(public[:12]) or 'none'}")
    try:
        model = fn()
    except SystemExit as exc:
        raise ModelError(f"model factory {where}:{factory} called sys.exit({exc.code!r}); return the model instead") from None
    except Exception as exc:  # the user's code: any failure is theirs to fix, reported in one line
        raise ModelError(f"model factory {where}:{factory} raised {type(exc).__name__}: {exc}") from exc
    import torch

    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"model factory {where}:{factory} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def _import_file(path: Path) -> Any:
    check_regular_file(path, "model file", max_bytes=MAX_SOURCE_BYTES, error=ModelError)
    name = f"_edgekit_user_model_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelError(f"cannot import {path} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SystemExit as exc:  # the file runs as a script when imported: its exit must not end edgekit
        sys.modules.pop(name, None)
        raise ModelError(f"model file {path} called sys.exit({exc.code!r}) while being imported; put the script part "
                         "under `if __name__ == \"__main__\":`") from None
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ModelError(f"importing model file {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def _import_module(dotted: str) -> Any:
    try:
        return importlib.import_module(dotted)
    except SystemExit as exc:
        raise ModelError(f"module '{dotted}' called sys.exit({exc.code!r}) while being imported; put the script part "
                         "under `if __name__ == \"__main__\":`") from None
    except ModuleNotFoundError as exc:
        raise ModelError(f"cannot import module '{dotted}': {exc}; is it installed or on PYTHONPATH?") from exc
    except Exception as exc:
        raise ModelError(f"importing module '{dotted}' failed: {type(exc).__name__}: {exc}") from exc


def onnx_specs(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[str, ...]]:
    """The graph inputs (initializers excluded) and output names of an ONNX file; ModelError if unreadable."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for a corrupt file
        raise ModelError(f"{path} is not a readable ONNX model: {type(exc).__name__}: {shown(exc, 200)}") from None
    if not model.graph.node:
        raise ModelError(f"{path} is not a readable ONNX model: it has no graph nodes")
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise ModelError(f"ONNX model {path}: input '{shown(vi.name)}' is not a tensor; edgekit takes tensor inputs")
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or f"d{i}") for i, d in enumerate(t.shape.dim))
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        except (KeyError, ValueError, TypeError):
            raise ModelError(f"ONNX model {path}: input '{shown(vi.name)}' has an undefined or unknown element type "
                             f"({t.elem_type}); re-export the model") from None
        specs.append(TensorSpec(vi.name, dims, dtype))
    return tuple(specs), tuple(o.name for o in model.graph.output)


def check_onnx(path: Path) -> None:
    """The user's ONNX file passes onnx.checker and loads in ONNX Runtime; else ModelError naming the file (an
    unknown opset, a bad element type and damaged bytes all end here, before any work)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=False)
    except Exception as exc:  # ValidationError, and the C++ checker's other kinds
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:240]
        raise ModelError(f"ONNX model {path} fails onnx.checker: {first}; re-export it") from None
    import onnxruntime as ort

    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's Fail/InvalidGraph/NotImplemented
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:240]
        raise ModelError(f"ONNX model {path} does not load in ONNX Runtime: {first}") from None


def _example(name: str) -> tuple[Any, Path]:
    if name not in EXAMPLES:
        raise ConfigError(f"unknown example '{name}'; bundled examples: {', '.join(EXAMPLES)}")
    from edgekit.examples import digits

    return digits.build(), digits.WEIGHTS


def _is_file_source(source: str) -> bool:
    return not source.startswith("example:") and ".py:" in source


def build_module(source: str) -> tuple[Any, Path | None]:
    """Import a resolved torch model source (``example:NAME``, ``file.py:factory``, ``package.module:factory``) and
    call its factory; returns the module and, for a bundled example, its weights file (else None)."""
    if source.startswith("example:"):
        return _example(source.split(":", 1)[1])
    if _is_file_source(source):
        file_part, factory = source.rsplit(":", 1)
        return _call_factory(_import_file(Path(file_part)), factory, str(Path(file_part))), None
    dotted, factory = source.split(":", 1)
    return _call_factory(_import_module(dotted), factory, dotted), None


def load_model(cfg: ModelConfig) -> SourceModel:
    """Build the SourceModel a config describes: import, construct, load weights, check inputs are declared."""
    source = cfg.source
    if is_hf(source):
        return load_hf(cfg)
    if source.endswith(".onnx"):
        path = Path(source)
        if not path.exists():
            raise ModelError(f"ONNX model {path} does not exist")
        check_regular_file(path, "ONNX model", error=ModelError)
        inputs, outputs = onnx_specs(path)
        check_onnx(path)
        if cfg.inputs:
            declared = {i.name: i for i in cfg.inputs}
            unknown = [n for n in declared if n not in {s.name for s in inputs}]
            if unknown:
                raise ConfigError(f"[model] inputs {unknown} are not inputs of {path.name}: it takes {[s.name for s in inputs]}")
            inputs = tuple(declared[s.name].spec if s.name in declared else s for s in inputs)
        if cfg.weights is not None or cfg.weights_key is not None:
            raise ConfigError("[model] weights: an ONNX model carries its own weights; remove 'weights'"
                              + (" and 'weights_key'" if cfg.weights_key is not None else ""))
        return SourceModel(source, inputs, cfg.outputs or outputs, cfg.task, None, path, file_sha256(path))

    if not cfg.inputs:
        raise ConfigError("[model] inputs is required for a torch model, e.g. inputs = [{ name = \"image\", shape = [1, 3, 224, 224] }]")
    module, bundled = build_module(source)
    weights = cfg.weights or bundled
    fingerprint_parts = [file_sha256(Path(source.rsplit(":", 1)[0]))] if _is_file_source(source) else [source]
    weights_note = ""
    if weights is not None:
        weights_note = load_weights(module, Path(weights), cfg.weights_key)
        fingerprint_parts.append(file_sha256(Path(weights)))
        if cfg.weights_key is not None:
            fingerprint_parts.append(f"weights_key={cfg.weights_key}")
    else:
        log.warning("no weights given: the model keeps the weights its factory made")
    module.eval()
    fingerprint = hashlib.sha256("|".join(fingerprint_parts).encode()).hexdigest()
    outputs = cfg.outputs or ("output",)
    return SourceModel(source, tuple(i.spec for i in cfg.inputs), outputs, cfg.task, module, None, fingerprint,
                       weights_note=weights_note)
