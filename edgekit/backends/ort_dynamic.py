"""Dynamic INT8 for ONNX Runtime: transformer fusion, activation smoothing, FP32 fallback, then quantize_dynamic.

Dynamic quantization maps each MatMul/Gemm input to uint8 over its whole range at run time, one scale per tensor.
Transformer activations have a few outlier channels (the FFN input after GELU most of all) that set that range and
leave the other channels a handful of levels. Three measured remedies, in the order they run:

1. ``transformer_fusion``: graph rewrites on the FP32 graph, verified numerically before use, speed only:
   edgekit's own (ort_fusions.py: each self-attention into one ``Attention`` node that quantization turns into
   ``QAttention``, residual LayerNorms on 2-D rows so ONNX Runtime's slower ``SkipLayerNormalization`` is not used),
   then ONNX Runtime's transformer optimizer for the rest (Gelu, LayerNormalization).
2. ``smooth_alpha``: per-channel smoothing (SmoothQuant, Xiao et al. 2023) of the inputs whose predicted 8-bit SQNR
   is under ``smooth_below_sqnr_db``: ``x @ W == (x / s) @ (s * W)`` with ``s = amax(x)^a / amax(W)^(1-a)`` per input
   channel, so outlier channels shrink before quantization and the per-channel weight scales absorb ``s``. One
   ``Mul`` per smoothed tensor, shared by every MatMul that reads it. Exact in FP32; needs calibration data.
3. ``fp32_fallback_sqnr_db``: inputs still predicted under this SQNR keep their MatMul in FP32.

``gelu_approximation`` (after the fusion check, before smoothing): exact Gelu nodes become ``FastGelu``, GELU's tanh
approximation: up to 1.5x faster on MiniLM's feed-forward (benchmarks/kernels.py), error under 5e-4 per element.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.backends.base import CalibrationSettings
from edgekit.fsutil import atomic_move
from edgekit.types import FeedSource, TensorSpec

if TYPE_CHECKING:
    from edgekit.backends.ort import OrtRecipe

log = logging.getLogger(__name__)

FUSED_OPS = ("Attention", "MultiHeadAttention", "EmbedLayerNormalization", "Gelu", "FastGelu", "BiasGelu",
             "SkipLayerNormalization", "LayerNormalization")
SCALE_LIMITS = (1e-4, 1e4)


@dataclass
class TensorStats:
    """What calibration showed of one MatMul input: per-channel |max| (last axis) and predicted 8-bit SQNR."""

    channel_absmax: np.ndarray
    sqnr_db: float


WEIGHTED_OPS = ("MatMul", "Gemm", "Attention")  # Attention: edgekit's fused self-attention, [in, 3 * hidden] weight


def weighted_matmuls(model: Any) -> list[Any]:
    """MatMul/Gemm/Attention nodes with a constant weight (the ones dynamic quantization turns into INT8 kernels)."""
    inits = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type in WEIGHTED_OPS and len(n.input) > 1 and n.input[1] in inits]


def _predicted_sqnr_db(x: np.ndarray) -> float:
    """uint8 over [min(x, 0), max(x, 0)]: noise step/sqrt(12), step = range/255."""
    step = (max(float(x.max()), 0.0) - min(float(x.min()), 0.0)) / 255.0
    rms = float(np.sqrt(np.mean(x * x)))
    return 200.0 if step == 0 or rms == 0 else 20.0 * float(np.log10(rms / (step / np.sqrt(12.0))))


def activation_stats(
    model_path: Path, calib: FeedSource, specs: tuple[TensorSpec, ...], settings: CalibrationSettings, max_samples: int = 32
) -> dict[str, TensorStats]:
    """Run up to ``max_samples`` calibration samples one at a time (batch 1, the latency case) and collect, for every
    weighted MatMul/Gemm input tensor, its per-channel |max| and its predicted SQNR averaged in dB."""
    import onnx
    import onnxruntime as ort

    from edgekit.backends.ort import FeedCalibrationReader

    model = onnx.load(str(model_path))
    tensors = sorted({n.input[0] for n in weighted_matmuls(model)})
    present = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in present:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor name
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in sess.get_outputs()]
    absmax: dict[str, np.ndarray] = {}
    db: dict[str, list[float]] = defaultdict(list)
    reader = FeedCalibrationReader(calib, specs, dataclasses.replace(settings, samples=min(settings.samples, max_samples)))
    for feed in iter(reader.get_next, None):
        for i in range(next(iter(feed.values())).shape[0]):
            values = dict(zip(out_names, sess.run(out_names, {k: v[i : i + 1] for k, v in feed.items()})))
            for t in tensors:
                x = values[t].astype(np.float64)
                rows = np.abs(x.reshape(-1, x.shape[-1])).max(axis=0)
                absmax[t] = rows if t not in absmax else np.maximum(absmax[t], rows)
                db[t].append(_predicted_sqnr_db(x))
    return {t: TensorStats(absmax[t], float(np.mean(db[t]))) for t in tensors if db[t]}


def fp32_fallback_nodes(
    model_path: Path, calib: FeedSource, specs: tuple[TensorSpec, ...], settings: CalibrationSettings, min_sqnr_db: float,
    max_samples: int = 32,
) -> tuple[list[str], dict[str, float]]:
    """Names of the MatMul/Gemm nodes to keep in FP32 under dynamic quantization, and each node's predicted SQNR.

    Inputs whose range is set by a few outliers (e.g. a transformer's FFN down-projection after GELU) score low."""
    import onnx

    stats = activation_stats(model_path, calib, specs, settings, max_samples)
    nodes = weighted_matmuls(onnx.load(str(model_path)))
    predicted = {n.name: stats[n.input[0]].sqnr_db for n in nodes if n.input[0] in stats}
    keep = [name for name, v in sorted(predicted.items(), key=lambda kv: kv[1]) if v < min_sqnr_db]
    return keep, predicted


def _weight_rows_axis(node: Any) -> int | None:
    """Axis of the weight that runs over input channels, or None when smoothing can't apply to this node."""
    attrs = {a.name: a.i for a in node.attribute if a.type == a.INT}
    if node.op_type in ("MatMul", "Attention"):
        return 0
    if attrs.get("transA", 0):
        return None
    return 1 if attrs.get("transB", 0) else 0


def smooth(src: Path, dst: Path, stats: dict[str, TensorStats], alpha: float, below_db: float) -> dict[str, float]:
    """Write ``src`` with every low-SQNR MatMul input smoothed (see module docstring) to ``dst``.

    Returns the smoothed tensors and their predicted SQNR before smoothing. A tensor is skipped when one of its
    weights is shared with another node, is not 2-D, or its node is a Gemm with transA."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    uses: dict[str, int] = defaultdict(int)
    for n in graph.node:
        for name in n.input:
            uses[name] += 1
    groups: dict[str, list[Any]] = defaultdict(list)
    for n in weighted_matmuls(model):
        groups[n.input[0]].append(n)
    done: dict[str, float] = {}
    for tensor, nodes in groups.items():
        st = stats.get(tensor)
        if st is None or st.sqnr_db >= below_db:
            continue
        axes = [_weight_rows_axis(n) for n in nodes]
        stored = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]
        weights = [w.astype(np.float64) for w in stored]
        if None in axes or any(uses[n.input[1]] != 1 or w.ndim != 2 for n, w in zip(nodes, weights)):
            continue
        w_absmax = np.max([np.abs(w).max(axis=1 - a) for w, a in zip(weights, axes)], axis=0)
        a_absmax = st.channel_absmax
        if w_absmax.shape != a_absmax.shape:
            continue
        live = (a_absmax > 0) & (w_absmax > 0)
        scale = np.ones_like(a_absmax)
        scale[live] = np.clip(a_absmax[live] ** alpha / w_absmax[live] ** (1.0 - alpha), *SCALE_LIMITS)
        for n, w, a, original in zip(nodes, weights, axes, stored):
            scaled = w * (scale[:, None] if a == 0 else scale[None, :])
            inits[n.input[1]].CopyFrom(numpy_helper.from_array(scaled.astype(original.dtype), n.input[1]))
        inverse = f"{tensor}__smooth_inv"
        smoothed = f"{tensor}__smoothed"
        graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), inverse))
        first = min(list(graph.node).index(n) for n in nodes)
        graph.node.insert(first, helper.make_node("Mul", [tensor, inverse], [smoothed], name=f"{nodes[0].name}_smooth"))
        for n in nodes:
            n.input[0] = smoothed
        done[tensor] = round(st.sqnr_db, 1)
    onnx.save(model, str(dst))
    return done


def fuse_transformer(src: Path, dst: Path, check: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """edgekit's transformer rewrites, then ONNX Runtime's transformer fusions, on ``src`` into ``dst``; checked
    against ``src`` on ``check`` inputs.

    Returns the note for the manifest; when nothing fuses, fusion fails or changes outputs, ``dst`` is ``src``."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    from edgekit.backends.ort_fusions import fuse_attention, layernorm_rows

    def keep_unfused(why: str) -> dict[str, Any]:
        dst.write_bytes(src.read_bytes())
        return {"applied": False, "why": why}

    quiet = logging.getLogger("onnxruntime.transformers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "Model producer not matched" and per-pass chatter
    try:
        model = onnx.load(str(src))
        ours = {**fuse_attention(model), "LayerNormalization (rows)": layernorm_rows(model)}
        options = FusionOptions("bert")
        options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = False  # slower than Add + LN here
        fused = optimize_model(model, model_type="bert", num_heads=0, hidden_size=0, opt_level=0,
                               optimization_options=options)
        counts = {k: v for k, v in fused.get_fused_operator_statistics().items() if v and k in FUSED_OPS}
        counts.update({k: v for k, v in ours.items() if v})
        fused.save_model_to_file(str(dst))
    except Exception as exc:  # the rewrites and the optimizer raise whatever their passes raise
        return keep_unfused(f"transformer rewrites failed ({type(exc).__name__}: {str(exc)[:200]}); kept unfused")
    finally:
        quiet.setLevel(level)
    if not any(k != "LayerNormalization" for k in counts):
        return keep_unfused("no transformer pattern matched")
    if check is not None:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            runs = [ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]).run(None, check)
                    for p in (src, dst)]
        except Exception as exc:  # a fused kernel that refuses these inputs: ORT raises its own exception types
            return keep_unfused(f"fused graph failed to run ({type(exc).__name__}: {str(exc)[:200]}); kept unfused")
        for a, b in zip(*runs):
            err = float(np.max(np.abs(a.astype(np.float64) - b))) / max(float(np.max(np.abs(a))), 1e-12)
            if not np.isfinite(err) or err > 1e-3:
                return keep_unfused(f"fused graph changed outputs (relative max error {err:.2g}); kept unfused")
    return {"applied": True, "fused": counts}


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
    onnx.save(model, str(dst))
    return count


def _first_feed(calib: FeedSource | None, specs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray] | None:
    """The rewrite check's inputs: two calibration samples when the batch axis is dynamic (a rewrite that broke
    batching would pass at batch 1), else one."""
    if calib is None:
        return None
    rows = 2 if specs and all(0 in s.dynamic_axes for s in specs) else 1
    batch = next(iter(calib.batches(rows)), None)
    return None if batch is None else {s.name: np.ascontiguousarray(batch.feed[s.name][:rows], dtype=s.dtype) for s in specs}


def _exclusions(model: Path, names: list[str]) -> list[str]:
    """quantize_dynamic rewrites a Gemm as '<name>_MatMul' + Add before quantizing: exclude under both names."""
    import onnx

    gemms = {n.name for n in onnx.load(str(model)).graph.node if n.op_type == "Gemm"}
    return [x for name in names for x in ((name, f"{name}_MatMul") if name in gemms else (name,))]


def quantize_dynamic_int8(
    src: Path, dst: Path, recipe: "OrtRecipe", calib: FeedSource | None = None, specs: tuple[TensorSpec, ...] = (),
    settings: CalibrationSettings | None = None,
) -> dict[str, Any]:
    """Dynamic INT8 of ``src`` into ``dst``: fusion, smoothing and FP32 fallback as the recipe asks, then quantize."""
    from onnxruntime.quantization import quantize_dynamic

    from edgekit.backends.ort import _nodes_of_types, _qtype, _range_note, _with_fallbacks, preprocess

    settings = settings or CalibrationSettings()
    notes: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgekit-ort-") as tmpdir:
        tmp = Path(tmpdir)
        model = src
        if recipe.transformer_fusion:
            model = tmp / "fused.onnx"
            notes["transformer_fusion"] = fuse_transformer(src, model, _first_feed(calib, specs))
        if recipe.gelu_approximation:
            approx = tmp / "fast_gelu.onnx"
            count = approximate_gelu(model, approx)
            notes["gelu_approximation"] = (f"{count} Gelu -> FastGelu (tanh approximation)" if count
                                           else "no exact Gelu node in the graph")
            model = approx
        pre = tmp / "pre.onnx"
        notes["preprocess"] = preprocess(model, pre)
        model = pre
        needs_data = recipe.smooth_alpha > 0 or recipe.fp32_fallback_sqnr_db > 0
        if needs_data and calib is None:
            notes["calibration"] = "no calibration data reached this target: no smoothing, every MatMul/Gemm is quantized"
        if recipe.smooth_alpha > 0 and calib is not None:
            smoothed = tmp / "smoothed.onnx"
            stats = activation_stats(model, calib, specs, settings)
            done = smooth(model, smoothed, stats, recipe.smooth_alpha, recipe.smooth_below_sqnr_db)
            notes["smoothing"] = {
                "rule": f"MatMul/Gemm/Attention inputs with predicted 8-bit SQNR < {recipe.smooth_below_sqnr_db:g} dB, "
                f"alpha {recipe.smooth_alpha:g}",
                "smoothed_inputs": len(done), "predicted_sqnr_db_before": dict(sorted(done.items(), key=lambda kv: kv[1])[:5]),
            }
            model = smoothed
        keep: list[str] = []
        if recipe.fp32_fallback_sqnr_db > 0 and calib is not None:
            keep, predicted = fp32_fallback_nodes(model, calib, specs, settings, recipe.fp32_fallback_sqnr_db)
            lowest = sorted(predicted.items(), key=lambda kv: kv[1])[:5]
            notes["fp32_fallback"] = {
                "rule": f"MatMul/Gemm/Attention inputs with predicted 8-bit SQNR < {recipe.fp32_fallback_sqnr_db:g} dB stay FP32",
                "kept_fp32": keep, "quantized": len(predicted) - len(keep),
                "lowest_predicted_sqnr_db": {k: round(v, 1) for k, v in lowest},
            }
        out = tmp / "quant.onnx"

        def attempt(graph: Path) -> None:
            quantize_dynamic(
                str(graph),
                str(out),
                per_channel=recipe.per_channel,
                reduce_range=recipe.resolved_reduce_range(),
                weight_type=_qtype(recipe.weight_type),
                nodes_to_exclude=_exclusions(graph, _nodes_of_types(graph, recipe.exclude_op_types) + keep),
            )

        fallback = _with_fallbacks(model, tmp, attempt)
        atomic_move(out, dst)
    notes["weights"] = f"{recipe.weight_type} {'per-channel' if recipe.per_channel else 'per-tensor'}" + _range_note(recipe)
    notes["activations"] = "uint8, quantized at run time"
    if fallback:
        notes["quantizer"] = fallback
    return notes
