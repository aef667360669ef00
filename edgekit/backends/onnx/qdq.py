"""Static QDQ quantization with ONNX Runtime's ``quantize_static``: the core of ort-int8 and tensorrt-int8.

What edgekit adds to ORT's quantizer (ranges, fill values, FP32 stems, exact 8-bit weights) is measured and decided in
``qdq_ranges``; this module runs the quantizer with it, with fallbacks for the shape-inference failures some exports
trigger, and writes the notes the manifest keeps.
"""

from __future__ import annotations

import inspect
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgekit.backends.base import CalibrationSettings
from edgekit.backends.onnx import qdq_ranges, stats_cache
from edgekit.backends.onnx.calibration import FeedCalibrationReader
from edgekit.backends.onnx.fp32_pools import pool_fp32_outputs
from edgekit.backends.onnx.graph import first_line, nodes_of_types, scratch_cwd, strip_value_info
from edgekit.backends.onnx.session import session
from edgekit.onnxio import has_external_data, load_onnx, move_model, save_like
from edgekit.types import FeedSource, TensorSpec

log = logging.getLogger(__name__)

QUANT_TYPES = ("int8", "uint8")


@dataclass(frozen=True)
class QdqSettings:
    """What a static QDQ quantization is asked for; ort-int8's recipe and tensorrt-int8 each give one."""

    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = True
    reduce_range: bool | str = "auto"  # "auto": 7-bit weights only where the host lacks exact INT8 dot products
    symmetric_activations: bool = False
    exclude_op_types: tuple[str, ...] = ()
    # Conv/Gemm/MatMul nodes that read a graph input directly (a CNN's stem) stay FP32: true, false, or "auto" = FP32
    # unless a pooling op follows the stem (ORT would then run that pool in FP32); see qdq_ranges.py.
    fp32_input_layers: bool | str = False


def resolved_reduce_range(setting: bool | str) -> bool:
    """``auto`` resolves per host: x86 without VNNI/AMX saturates u8 x s8 products, so weights get 7 bits."""
    if setting == "auto":
        from edgekit.hostinfo import has_int8_dot

        return not has_int8_dot()
    return bool(setting)


def qtype(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return QuantType.QInt8 if name == "int8" else QuantType.QUInt8


def calibrate_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[name]


def preprocess(src: Path, dst: Path) -> str:
    """ORT's quantization pre-processing, degrading gracefully: symbolic shape inference fails on some
    dynamo exports ("Incomplete symbolic shape inference"), so retry without it, then without any."""
    from onnxruntime.quantization import quant_pre_process

    attempts = (("full", {}), ("without symbolic shape inference", {"skip_symbolic_shape": True}))
    failures = []
    external = {"save_as_external_data": True, "external_data_location": f"{dst.name}.data"} if has_external_data(src) else {}
    for label, kwargs in attempts:
        try:
            with scratch_cwd():  # its shape inference writes temporary files into the working directory
                quant_pre_process(str(src.resolve()), str(dst.resolve()), **kwargs, **external)
            return f"pre-processed ({label})" + (f"; after: {'; '.join(failures)}" if failures else "")
        except Exception as exc:  # ORT raises bare Exceptions here
            failures.append(f"{label} failed ({first_line(exc)})")
            log.debug("quant_pre_process %s failed: %s", label, exc)
    save_like(load_onnx(src), dst, src)
    return f"not pre-processed: {'; '.join(failures)}"


def with_fallbacks(src: Path, tmp: Path, attempt: Callable[[Path], None]) -> str:
    """Run a quantizer; on the shape-inference failures some exports trigger, retry on a cleaned graph."""
    try:
        attempt(src)
        return ""
    except Exception as exc:  # onnx.shape_inference.InferenceError and others
        first = first_line(exc)
        log.debug("quantizer failed on %s: %s", src, exc)
    cleaned = tmp / "no_value_info.onnx"
    strip_value_info(src, cleaned)
    try:
        attempt(cleaned)
        return f"first attempt failed ({first}); succeeded after dropping stale value_info"
    except Exception as exc:
        second = first_line(exc)
    optimized = tmp / "ort_basic.onnx"
    session(str(src), 1, save_to=optimized, external_data=has_external_data(src))
    attempt(optimized)
    return f"first attempts failed ({first}; {second}); succeeded on the ORT-basic-optimized graph"


def quantize_static_qdq(
    src: Path, dst: Path, calib: FeedSource, specs: tuple[TensorSpec, ...], settings: CalibrationSettings, qdq: QdqSettings,
    exclude_nodes: tuple[str, ...] = (), stats_from: Path | None = None,
) -> dict[str, Any]:
    """Static QDQ quantization of ``src`` into ``dst`` as ``qdq`` asks, calibrated on the first samples of ``calib``.
    ``exclude_nodes``: more nodes kept FP32 (the build's recovery, edgekit/recover/, names them). ``stats_from``: a
    pre-processed graph with the same tensors whose activation statistics stand in for ``src``'s (the recovery's
    bias-corrected graph differs from its base only in biases, so it reuses the base's statistics)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, quantize_static

    reader = FeedCalibrationReader(calib, specs, settings)
    reduce_range = resolved_reduce_range(qdq.reduce_range)
    chosen: dict[str, Any] = {}

    def attempt(model: Path) -> None:
        graph = onnx.load(str(model)).graph
        fp32_layers = qdq_ranges.fp32_input_layer_names(graph, qdq.fp32_input_layers)
        overrides: dict[str, Any] = {}
        levels = 254 if qdq.symmetric_activations and qdq.activation_type == "int8" else 255
        handing_over = "calibration_cache_path" in inspect.signature(quantize_static).parameters
        histogram = settings.method in qdq_ranges.HISTOGRAM_METHODS and handing_over
        measured_on = (stats_from, onnx.load(str(stats_from)).graph) if stats_from is not None else (model, graph)
        got = collected_stats(*measured_on, reader, settings, (qdq.symmetric_activations, levels)
                              if settings.method == "mse" else None,
                              (settings.method, settings.percentile) if histogram else None)
        stats = got.stats
        chosen["stats"], chosen["collected"] = stats, got
        cache: dict[str, Any] = {}
        if handing_over and (settings.method in ("minmax", "mse") or histogram):
            # the ranges just measured, as ORT's MinMax calibration cache: handing them over skips ORT's calibration
            # pass (and, for the histogram methods, its memory that grows with the sample count)
            cache["calibration_cache_path"] = str(model.with_name("edgekit_minmax_cache.json"))
            ranges = stats.histogram_ranges if histogram else stats.bounds
            qdq_ranges.write_minmax_cache(ranges, stats.fill_tensors, Path(cache["calibration_cache_path"]))
        chosen["ort_calibration"] = ((f"skipped: edgekit's streaming {settings.method} histograms handed over" if histogram
                                      else "skipped: edgekit's min/max pass handed over") if cache else "ONNX Runtime's calibrator")
        overrides.update(qdq_ranges.range_overrides(stats.mse_ranges))  # empty unless method = "mse"
        if reduce_range and qdq.weight_type == "int8" and qdq.per_channel:
            exact = qdq_ranges.exact_weight_overrides(graph, fp32_layers)
            overrides.update(exact)
            chosen["exact_8bit"] = len(exact)
        chosen["fp32_layers"] = fp32_layers
        chosen["has_input_layers"] = bool(qdq_ranges.input_layers(graph))
        extra: dict[str, Any] = {"ActivationSymmetric": qdq.symmetric_activations, "WeightSymmetric": True}
        if settings.method == "percentile":
            extra["CalibPercentile"] = settings.percentile
        if overrides:
            extra["TensorQuantOverrides"] = overrides
        reader.rewind()
        fp32_nodes = nodes_of_types(model, qdq.exclude_op_types) + fp32_layers + stats.fill_nodes + list(exclude_nodes)
        quantize_static(
            str(model),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=qdq.per_channel,
            reduce_range=reduce_range,
            activation_type=qtype(qdq.activation_type),
            weight_type=qtype(qdq.weight_type),
            calibrate_method=calibrate_method("minmax" if settings.method == "mse" or cache else settings.method),
            op_types_to_quantize=None,
            nodes_to_exclude=fp32_nodes,
            extra_options=extra,
            use_external_data_format=has_external_data(model),
            **cache,
        )
        chosen["fp32_reads"], chosen["fp32_pools"] = fp32_islands(out, graph, set(fp32_nodes))

    with tempfile.TemporaryDirectory(prefix="edgekit-ort-") as tmpdir:
        tmp = Path(tmpdir)
        pre = tmp / "pre.onnx"
        pre_note = preprocess(src, pre)
        out = tmp / dst.name  # the external data file, if any, is named after it
        fallback = with_fallbacks(pre, tmp, attempt)
        move_model(out, dst)
    notes = {
        "preprocess": pre_note,
        "calibration": {"method": settings.method, "samples": chosen["collected"].samples,
                        "batches": chosen["collected"].batches, "ort_pass": chosen["ort_calibration"]},
        "calibration_statistics": chosen["collected"].note,
        "activations": f"{qdq.activation_type} {'symmetric' if qdq.symmetric_activations else 'asymmetric'} per-tensor",
        "weights": f"{qdq.weight_type} symmetric {'per-channel' if qdq.per_channel else 'per-tensor'}"
        + range_note(qdq.reduce_range),
    }
    if settings.method == "mse":
        notes["calibration"]["ranges"] = f"MSE-optimal clipping (histogram of {qdq_ranges.BINS} bins) narrowed {len(chosen['stats'].mse_ranges)} tensor range(s)"
    if chosen.get("exact_8bit"):
        notes["weights"] += (f"; {chosen['exact_8bit']} layer(s) with 8-bit weights where ONNX Runtime's kernel cannot saturate "
                             "(depthwise: int8; quantized stem: uint8, u8 x u8)")
    if qdq.fp32_input_layers is not False:
        kept = ", ".join(chosen["fp32_layers"]) or "none"
        if not chosen["has_input_layers"]:
            kept += " (no Conv/Gemm/MatMul reads a graph input)"
        elif qdq.fp32_input_layers == "auto" and not chosen["fp32_layers"]:
            kept += " (a pooling op follows the stem, so it is quantized)"
        notes["fp32_input_layers"] = f"{qdq.fp32_input_layers}: kept FP32: {kept}"
    filled = chosen["stats"].fill_tensors
    if filled:
        notes["fill_values"] = (f"{len(filled)} tensor(s) reach |x| >= {qdq_ranges.FILL_VALUE:g} "
                                f"(attention-mask fill values such as -inf or finfo.min), so their "
                                f"{len(chosen['stats'].fill_nodes)} producer/consumer node(s) stay FP32: "
                                + ", ".join(filled[:8]) + (" ..." if len(filled) > 8 else ""))
    if settings.method == "percentile":
        notes["calibration"]["percentile"] = settings.percentile
    if chosen["fp32_reads"]:
        notes["fp32_nodes"] = f"{chosen['fp32_reads']} input(s) of FP32 nodes read the FP32 tensor, not its Q/DQ copy"
    if chosen["fp32_pools"]:
        notes["fp32_pools"] = (f"{chosen['fp32_pools']} MaxPool(s) after an FP32 layer pool its FP32 output, then "
                               "quantize (same numbers; ONNX Runtime runs the pool in its fast FP32 layout)")
    if fallback:
        notes["quantizer"] = fallback
    if chosen["collected"].warning:
        notes["warning"] = chosen["collected"].warning
    return notes


def fp32_islands(path: Path, source: Any, fp32_nodes: set[str]) -> tuple[int, int]:
    """The quantized model at ``path`` with its FP32 nodes reading FP32 tensors (``fp32_nodes_read_fp32``) and the
    pools after FP32 layers in FP32 (``fp32_pools.pool_fp32_outputs``), read and written once; Q/DQ pairs no node
    reads any more are dropped. Returns (inputs rewired, pools rewritten); the file is rewritten only when one is
    not 0."""
    import onnx

    from edgekit.backends.onnx.graph import prune_dead

    def rewrite(graph: Any) -> tuple[int, int]:
        return fp32_nodes_read_fp32(graph, source, fp32_nodes), pool_fp32_outputs(graph)

    model = onnx.load(str(path), load_external_data=False)  # the whole model unless its weights are external
    counts = rewrite(model.graph)
    if not any(counts):
        return counts
    if has_external_data(path):  # the weights too, to write the file again
        model = load_onnx(path)
        rewrite(model.graph)
    prune_dead(model.graph)
    save_like(model, path, path)
    return counts


def fp32_nodes_read_fp32(graph: Any, source: Any, fp32_nodes: set[str]) -> int:
    """Rewire the quantized ``graph`` (edited in place; the caller drops what no node reads any more) so that its FP32
    nodes (``fp32_nodes``, kept out of quantization) read the FP32 tensors they read in ``source`` (the graph that
    was quantized), not the Q/DQ copies ONNX Runtime's quantizer hands every consumer of a quantized tensor. Returns
    the number of inputs rewired.

    Why: a tensor is quantized once for all its readers. In a transformer the LayerNorm output feeding the Q/K/V
    projections also feeds the residual Add; keeping the projections FP32 left that tensor quantized for the Add, so the
    residual stream stayed quantized and the FP32 layers recovered nothing (docs/recovery.md has the MiniLM numbers).
    An input whose Q reads another tensor than the node read before is left as is: ONNX Runtime folds a Relu/Clip
    into the Q after it and gives the producer before it the folded node's output name, so the name alone does not
    say; the producer's node name does."""
    before = {n.name: list(n.input) for n in source.node if n.name in fp32_nodes}
    if not before:
        return 0
    made_by = {o: n.name for n in source.node for o in n.output}
    producer = {o: n for n in graph.node for o in n.output}
    rewired = 0
    for node in graph.node:
        original = before.get(node.name)
        if original is None or len(original) != len(node.input):
            continue
        for k, name in enumerate(node.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is None or q.op_type != "QuantizeLinear" or q.input[0] != original[k]:
                continue
            now = producer.get(original[k])
            if (now.name if now is not None else None) == made_by.get(original[k]):  # not a folded Relu's input renamed
                node.input[k] = original[k]
                rewired += 1
    return rewired


def collected_stats(model: Path, graph: Any, reader: FeedCalibrationReader, settings: CalibrationSettings,
                    mse: tuple[bool, int] | None, histogram: tuple[str, float] | None) -> stats_cache.Collected:
    """``qdq_ranges.activation_stats`` through the statistics cache in ``settings.cache_dir`` ("": none), keyed by
    the exact graph, the data's fingerprint and every setting the statistics depend on."""
    def collect() -> tuple[qdq_ranges.ActivationStats, int, int]:
        stats = qdq_ranges.activation_stats(model, graph, reader, mse, histogram)
        return stats, reader.samples_read, reader.batches_read

    if not settings.cache_dir:
        return stats_cache.cached_stats("", {}, collect)
    measured = {"method": settings.method, "percentile": settings.percentile, "samples": settings.samples,
                "batch_size": reader.batch_size, "mse": mse, "histogram": histogram}
    parts = stats_cache.key_parts(stats_cache.graph_sha256(model, graph), reader.source.fingerprint(), measured)
    return stats_cache.cached_stats(settings.cache_dir, parts, collect)


def range_note(reduce_range: bool | str) -> str:
    """The weights note's range part for a ``reduce_range`` setting, with the reason when ``auto`` chose 7 bits."""
    if not resolved_reduce_range(reduce_range):
        return ", 8-bit range"
    why = " (reduce_range = auto: this x86 host has no VNNI/AMX, where full-range u8 x s8 products saturate)"
    return ", 7-bit range" + (why if reduce_range == "auto" else "")
