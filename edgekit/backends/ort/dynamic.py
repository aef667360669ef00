"""Dynamic INT8 for ONNX Runtime: transformer fusion, activation smoothing, FP32 fallback, then quantize_dynamic.

Dynamic quantization maps each MatMul/Gemm input to uint8 over its whole range at run time, one scale per tensor.
Transformer activations have a few outlier channels (the FFN input after GELU most of all) that set that range and
leave the other channels a handful of levels. Three measured remedies, in the order they run:

1. ``transformer_fusion``: graph rewrites on the FP32 graph, verified numerically before use, speed only:
   edgekit's own (passes/attention.py and passes/layernorm_rows.py: each self-attention into one ``Attention`` node that quantization turns into
   ``QAttention``, residual LayerNorms on 2-D rows so ONNX Runtime's slower ``SkipLayerNormalization`` is not used),
   then ONNX Runtime's transformer optimizer for the rest (Gelu, LayerNormalization).
2. ``smooth_alpha``: per-channel smoothing (SmoothQuant, Xiao et al. 2023) of the inputs whose predicted 8-bit SQNR
   is under ``smooth_below_sqnr_db``: ``x @ W == (x / s) @ (s * W)`` with ``s = amax(x)^a / amax(W)^(1-a)`` per input
   channel, so outlier channels shrink before quantization and the per-channel weight scales absorb ``s``. One
   ``Mul`` per smoothed tensor, shared by every MatMul that reads it. Exact in FP32; needs calibration data.
3. ``fp32_fallback_sqnr_db``: inputs still predicted under this SQNR keep their MatMul in FP32.

``gelu_approximation`` (after the fusion check, before smoothing): exact Gelu nodes become ``FastGelu``, GELU's tanh
approximation, faster on MiniLM's feed-forward, with an error far under INT8's (docs/backends.md has the numbers).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any


from edgekit.backends.base import CalibrationSettings
from edgekit.backends.onnx.graph import nodes_of_types
from edgekit.backends.onnx.qdq import preprocess, qtype, range_note, with_fallbacks
from edgekit.backends.ort.matmul_stats import activation_stats, fp32_fallback_nodes
from edgekit.backends.ort.passes import REWRITES, PassInputs
from edgekit.backends.ort.passes.smooth import smooth
from edgekit.onnxio import has_external_data, in_memory_ok, move_model
from edgekit.types import FeedSource, TensorSpec

if TYPE_CHECKING:
    from edgekit.backends.ort.recipe import OrtRecipe


def _exclusions(model: Path, names: list[str]) -> list[str]:
    """quantize_dynamic rewrites a Gemm as '<name>_MatMul' + Add before quantizing: exclude under both names."""
    import onnx

    gemms = {n.name for n in onnx.load(str(model), load_external_data=False).graph.node if n.op_type == "Gemm"}
    return [x for name in names for x in ((name, f"{name}_MatMul") if name in gemms else (name,))]


@dataclass
class Prepared:
    """The FP32 graph ``quantize_dynamic`` reads (rewritten, preprocessed, smoothed) and the nodes the FP32 fallback
    keeps: made once, so recovery's candidates (edgekit/recover/dynamic.py) quantize the very graph the build did and
    name its nodes in ``nodes_to_exclude``."""

    model: Path
    keep: tuple[str, ...]
    notes: dict[str, Any]


def prepare_dynamic(src: Path, tmp: Path, recipe: "OrtRecipe", calib: FeedSource | None = None,
                    specs: tuple[TensorSpec, ...] = (), settings: CalibrationSettings | None = None) -> Prepared:
    """Steps 1-3 of the module docstring on ``src``, written under ``tmp``."""
    settings = settings or CalibrationSettings()
    notes: dict[str, Any] = {}
    model = src
    for key, rewrite in REWRITES.items():  # the graph rewrites the recipe turns on, in their order
        if getattr(recipe, key):
            rewritten = tmp / f"{key}.onnx"
            notes[key] = rewrite(model, rewritten, PassInputs(calib, specs))
            model = rewritten
            if isinstance(notes[key], dict) and notes[key].get("warning"):  # e.g. attention left unfused
                notes["warning"] = "; ".join(filter(None, (notes.get("warning"), f"{key}: {notes[key]['warning']}")))
    pre = tmp / "pre.onnx"
    notes["preprocess"] = preprocess(model, pre)
    model = pre
    needs_data = recipe.smooth_alpha > 0 or recipe.fp32_fallback_sqnr_db > 0
    if needs_data and calib is not None and not in_memory_ok(model):
        notes["calibration"] = ("not used: the model is over protobuf's 2 GB limit and the activation statistics run it "
                                "from memory; no smoothing, every MatMul/Gemm is quantized")
        calib = None
    elif needs_data and calib is None:
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
    return Prepared(model, tuple(keep), notes)


def quantize_prepared(prepared: Prepared, out: Path, recipe: "OrtRecipe", tmp: Path,
                      exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """``quantize_dynamic`` of the prepared graph into ``out`` as ``recipe`` asks, the nodes ``exclude`` (names in
    the prepared graph) kept FP32 beside the fallback's; returns the notes of this step."""
    from onnxruntime.quantization import quantize_dynamic

    def attempt(graph: Path) -> None:
        quantize_dynamic(
            str(graph),
            str(out),
            per_channel=recipe.per_channel,
            reduce_range=recipe.resolved_reduce_range(),
            weight_type=qtype(recipe.weight_type),
            nodes_to_exclude=_exclusions(graph, nodes_of_types(graph, recipe.exclude_op_types) + list(prepared.keep)
                                         + list(exclude)),
            use_external_data_format=has_external_data(graph),
        )

    fallback = with_fallbacks(prepared.model, tmp, attempt)
    notes: dict[str, Any] = {
        "weights": f"{recipe.weight_type} {'per-channel' if recipe.per_channel else 'per-tensor'}" + range_note(recipe.reduce_range),
        "activations": "uint8, quantized at run time",
    }
    if fallback:
        notes["quantizer"] = fallback
    return notes


def quantize_dynamic_int8(
    src: Path, dst: Path, recipe: "OrtRecipe", calib: FeedSource | None = None, specs: tuple[TensorSpec, ...] = (),
    settings: CalibrationSettings | None = None,
) -> dict[str, Any]:
    """Dynamic INT8 of ``src`` into ``dst``: fusion, smoothing and FP32 fallback as the recipe asks, then quantize."""
    with tempfile.TemporaryDirectory(prefix="edgekit-ort-") as tmpdir:
        tmp = Path(tmpdir)
        prepared = prepare_dynamic(src, tmp, recipe, calib, specs, settings)
        out = tmp / dst.name  # the external data file, if any, is named after it
        notes = {**prepared.notes, **quantize_prepared(prepared, out, recipe, tmp)}
        move_model(out, dst)
    return notes
