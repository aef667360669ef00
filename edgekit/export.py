"""Export a SourceModel to ONNX (exporter chosen explicitly), check it, simplify it, verify the simplification."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.config import ExportConfig
from edgekit.console import silenced_fds
from edgekit.errors import ModelError
from edgekit.faults import interrupted_by, raise_if_signalled, write_fault
from edgekit.onnxio import EXTERNAL_DATA_BYTES, PROTOBUF_LIMIT, has_external_data, move_model, save_onnx, tensor_bytes
from edgekit.types import Reference, SourceModel, TensorSpec

log = logging.getLogger(__name__)

SIMPLIFY_RTOL = 1e-4
SIMPLIFY_TRIALS = 3
SIMPLIFY_MAX_BYTES = PROTOBUF_LIMIT - (64 << 20)  # onnxsim and the check below hold the model as one protobuf


def parameter_bytes(module: Any) -> int:
    """Bytes of a torch module's parameters and buffers (what its ONNX export will hold)."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def example_inputs(specs: tuple[TensorSpec, ...], shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the declared example shapes: normal floats, small non-negative ints."""
    rng = np.random.default_rng(seed)
    feed = {}
    for s in specs:
        shape = shapes.get(s.name) or s.example_shape()
        if np.issubdtype(np.dtype(s.dtype), np.floating):
            feed[s.name] = rng.standard_normal(shape).astype(s.dtype)
        elif s.dtype == "bool":
            feed[s.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feed[s.name] = rng.integers(0, 2, shape).astype(s.dtype)
    return feed


@contextlib.contextmanager
def _quiet():
    """torch.onnx prints progress and warnings of its own; the CLI owns the terminal."""
    sink = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), silenced_fds() as native, contextlib.redirect_stdout(sink), \
                contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield sink
        if native and native[0].strip():
            log.debug("native library output:\n%s", native[0])
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _output_names(module: Any, args: tuple[Any, ...], declared: tuple[str, ...]) -> tuple[str, ...]:
    import torch

    with torch.no_grad():
        out = module(*args)
    count = len(out) if isinstance(out, (tuple, list)) else 1
    if declared and len(declared) != count:
        raise ModelError(f"[model] outputs names {len(declared)} output(s) {list(declared)} but the model returns {count}")
    if declared:
        return declared
    return ("output",) if count == 1 else tuple(f"output_{i}" for i in range(count))


def export_torch(source: SourceModel, shapes: dict[str, tuple[int, ...]], cfg: ExportConfig, path: Path) -> tuple[str, ...]:
    """Write the torch model as ONNX to ``path``; return the output names used."""
    import torch

    module = source.module
    feed = example_inputs(source.inputs, shapes)
    args = tuple(torch.from_numpy(feed[s.name]) for s in source.inputs)
    try:
        outputs = _output_names(module, args, source.outputs)
    except ModelError:
        raise
    except SystemExit as exc:
        raise ModelError(f"the model's forward() called sys.exit({exc.code!r}) on the declared [model] inputs; "
                         "remove the exit from the model code") from None
    except Exception as exc:
        raise ModelError(f"the model fails on the declared [model] inputs: {type(exc).__name__}: {str(exc)[:300]}") from exc
    dims: dict[str, Any] = {}
    dynamo = cfg.exporter == "dynamo"
    kwargs: dict[str, Any] = {}
    if dynamo:
        # over protobuf's limit the exporter must write the weights beside the graph (export.onnx.data)
        kwargs["external_data"] = parameter_bytes(module) > EXTERNAL_DATA_BYTES
        shapes_arg = tuple({ax: dims.setdefault(n, torch.export.Dim(n)) for ax, n in s.dynamic_axes.items()} or None for s in source.inputs)
        if any(shapes_arg):
            kwargs["dynamic_shapes"] = shapes_arg
    else:
        axes = {s.name: s.dynamic_axes for s in source.inputs if s.dynamic_axes}
        if axes:
            batch_names = {n for s in source.inputs for ax, n in s.dynamic_axes.items() if ax == 0}
            for name in outputs:  # outputs share the batch axis when the inputs have one
                if batch_names:
                    axes[name] = {0: sorted(batch_names)[0]}
            kwargs["dynamic_axes"] = axes
        kwargs["do_constant_folding"] = True
    with _quiet() as sink:
        try:
            torch.onnx.export(
                module,
                args,
                str(path),
                dynamo=dynamo,
                input_names=[s.name for s in source.inputs],
                # dynamo: outputs are named afterwards, because a declared name can clash with a value the exporter
                # already named after a submodule (e.g. "embedding"), which breaks SSA form
                output_names=None if dynamo else list(outputs),
                opset_version=cfg.opset,
                **kwargs,
            )
        except SystemExit as exc:  # the user's forward() called sys.exit
            raise ModelError(f"the model's forward() called sys.exit({exc.code!r}) during the ONNX export; "
                             "remove the exit from the model code") from None
        except Exception as exc:
            log.debug("exporter output:\n%s", sink.getvalue())
            interrupt = interrupted_by(exc)  # Ctrl-C inside the exporter, re-raised as the exporter's own error
            if interrupt is not None:
                raise interrupt from None
            fault = write_fault(exc, path.parent)
            if fault is not None:
                raise fault from None
            detail = error_detail(exc)
            raise ModelError(
                f"ONNX export ({cfg.exporter} exporter) failed: {detail}; try [export] exporter = "
                f"\"{'torchscript' if dynamo else 'dynamo'}\" or simplify the model's forward()"
            ) from exc
    raise_if_signalled()  # an exporter that swallowed Ctrl-C and went on
    if dynamo:
        rename_outputs(path, outputs)
    return outputs


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def error_detail(exc: BaseException, limit: int = 300) -> str:
    """One readable line for an exporter's error: ANSI colour codes removed, and the root cause's first line
    added to the outer error's (torch wraps the reason a few levels down)."""
    def first(e: BaseException) -> str:
        lines = [ln.strip() for ln in _ANSI.sub("", str(e)).splitlines() if ln.strip()]
        return lines[0] if lines else type(e).__name__

    root, seen = exc, {id(exc)}
    while (nxt := root.__cause__ or root.__context__) is not None and id(nxt) not in seen:
        root = nxt
        seen.add(id(nxt))
    text = first(exc) if root is exc else f"{first(exc)} (cause: {type(root).__name__}: {first(root)})"
    return text[:limit]


def rename_outputs(path: Path, names: tuple[str, ...]) -> None:
    """Give the graph outputs of the ONNX file at ``path`` these names; a value already holding one is renamed first."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    if len(graph.output) != len(names):
        raise ModelError(f"the exported graph has {len(graph.output)} output(s), [model] outputs names {len(names)}")
    current = [o.name for o in graph.output]
    taken = {v for n in graph.node for v in (*n.input, *n.output)} | {i.name for i in graph.initializer} | {i.name for i in graph.input}
    mapping: dict[str, str] = {}
    for old, new in zip(current, names):
        if old != new and new in taken and new not in current:
            mapping[new] = f"{new}__edgekit_{len(mapping)}"
    mapping.update({old: new for old, new in zip(current, names) if old != new})
    if not mapping:
        return

    def swap(name: str) -> str:
        return mapping.get(name, name)

    for node in graph.node:
        node.input[:] = [swap(v) for v in node.input]
        node.output[:] = [swap(v) for v in node.output]
    for group in (graph.output, graph.value_info):
        for vi in group:
            vi.name = swap(vi.name)
    for init in graph.initializer:
        init.name = swap(init.name)
    external = has_external_data(path)
    with tempfile.TemporaryDirectory(prefix="edgekit-rename-", dir=path.parent) as tmp:
        save_onnx(model, Path(tmp) / path.name, external=external or None)
        move_model(Path(tmp) / path.name, path)


def _run(model_bytes: bytes, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    from edgekit.backends.onnx.session import session

    return session(model_bytes, 1, optimize=False).run(None, feed)


def outputs_match(a: list[np.ndarray], b: list[np.ndarray], rtol: float = SIMPLIFY_RTOL) -> tuple[bool, float]:
    """True when every output of ``b`` is within ``rtol`` (relative to the output's magnitude) of ``a``."""
    worst = 0.0
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return False, float("inf")
        scale = max(1.0, float(np.max(np.abs(x))) if x.size else 1.0)
        err = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) / scale if x.size else 0.0
        worst = max(worst, err)
    return worst <= rtol, worst


def simplify(model: Any, specs: tuple[TensorSpec, ...], shapes: dict[str, tuple[int, ...]]) -> tuple[Any, bool, str]:
    """Run onnxsim and check it numerically on random inputs; return (model to keep, simplified?, note)."""
    size = tensor_bytes(model)
    if size > SIMPLIFY_MAX_BYTES:
        return model, False, (f"not simplified: the weights ({size / 1e9:.2f} GB) are over protobuf's 2 GB limit, where "
                              "onnxsim serializes the model in memory and its external-data fallbacks fail (onnxsim "
                              "issues 158, 262, 308, 355); kept the exported graph")
    try:
        import onnxsim
    except ImportError as exc:
        return model, False, f"onnxsim is not importable ({exc}); kept the unsimplified graph"
    try:
        with _quiet():
            simplified, check_ok = onnxsim.simplify(model)
    except Exception as exc:  # onnxsim raises many kinds; any failure means "keep the original"
        return model, False, f"onnxsim failed ({type(exc).__name__}: {str(exc)[:200]}); kept the unsimplified graph"
    if not check_ok:
        return model, False, "onnxsim's own check failed; kept the unsimplified graph"
    original, candidate = model.SerializeToString(), simplified.SerializeToString()
    worst = 0.0
    for trial in range(SIMPLIFY_TRIALS):
        feed = example_inputs(specs, shapes, seed=100 + trial)
        ok, err = outputs_match(_run(original, feed), _run(candidate, feed))
        worst = max(worst, err)
        if not ok:
            return model, False, f"onnxsim changed outputs (max relative error {err:.2e} > {SIMPLIFY_RTOL:g}); kept the unsimplified graph"
    before, after = len(model.graph.node), len(simplified.graph.node)
    return simplified, True, f"simplified {before} -> {after} nodes; verified on {SIMPLIFY_TRIALS} random inputs (max relative error {worst:.1e})"


def make_reference(source: SourceModel, shapes: dict[str, tuple[int, ...]], cfg: ExportConfig, out: Path) -> Reference:
    """Export (or take the given ONNX), check, simplify and verify; write ``out`` atomically."""
    import onnx

    outputs = source.outputs
    with tempfile.TemporaryDirectory(prefix="edgekit-export-") as tmp:
        raw_path = Path(tmp) / "export.onnx"
        if source.is_torch:
            outputs = export_torch(source, shapes, cfg, raw_path)
            exporter = cfg.exporter
        else:
            raw_path = source.onnx_path
            exporter = "none (ONNX source)"
        try:  # by path: a model over 2 GB cannot be checked in memory
            onnx.checker.check_model(str(raw_path), full_check=False)
        except onnx.checker.ValidationError as exc:
            what = "the exported ONNX model" if source.is_torch else f"the ONNX model {source.onnx_path}"
            raise ModelError(f"{what} fails onnx.checker: {str(exc).splitlines()[0][:300]}") from None
        model = onnx.load(str(raw_path))
    if cfg.simplify:
        model, simplified, note = simplify(model, source.inputs, shapes)
    else:
        simplified, note = False, "simplification disabled ([export] simplify = false)"
    from edgekit import __version__

    model.producer_name, model.producer_version = "edgekit", __version__
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    names = tuple(o.name for o in model.graph.output)
    external = tensor_bytes(model) > cfg.external_data_mb * (1 << 20)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgekit-reference-", dir=out.parent) as tmp:
        written = save_onnx(model, Path(tmp) / out.name, external=external)  # `model` is spent after this
        move_model(Path(tmp) / out.name, out)
    data = tuple(out.parent / p.name for p in written[1:])
    return Reference(out, source.inputs, names if not source.is_torch else tuple(outputs), exporter, opset, simplified, note,
                     data)
