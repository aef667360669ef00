"""The ``transformer_fusion`` pass: edgekit's attention and LayerNorm rewrites, then ONNX Runtime's transformer
optimizer for the rest (Gelu, LayerNormalization), checked numerically against the unfused graph before use.

The rewrites are for speed only: when nothing fuses, fusion fails or changes outputs, the graph stays as it was. When
the graph has attention (MatMul -> Softmax -> MatMul) that did not become an Attention node, the note carries a
``warning`` with the reason: dynamic INT8 then quantizes the projections but not into the fused QAttention kernel."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends.base import CalibrationSettings
from edgekit.backends.calibration import calibration_feeds
from edgekit.backends.onnx.graph import scratch_cwd
from edgekit.backends.onnx.session import session
from edgekit.backends.ort.passes.attention import fuse_attention
from edgekit.backends.ort.passes.layernorm_rows import layernorm_rows
from edgekit.onnxio import has_external_data, load_onnx, save_like
from edgekit.types import FeedSource, TensorSpec

FUSED_OPS = ("Attention", "MultiHeadAttention", "EmbedLayerNormalization", "Gelu", "FastGelu", "BiasGelu",
             "SkipLayerNormalization", "LayerNormalization")


ATTENTION_OPS = ("Attention", "MultiHeadAttention")


def attention_blocks(model: Any) -> tuple[int, bool]:
    """(how many Softmax nodes sit between two MatMuls, as self-attention does, whether any is torch's
    scaled_dot_product_attention export: the Softmax output guarded by IsNaN/Where before the second MatMul)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    count, sdpa = 0, False
    for node in model.graph.node:
        if node.op_type != "Softmax":
            continue
        up, seen = producer.get(node.input[0]), 0
        while up is not None and up.op_type in ("Add", "Mul", "Div", "Where", "Cast") and seen < 4:
            up, seen = producer.get(up.input[0]), seen + 1
        if up is None or up.op_type != "MatMul":
            continue
        frontier, guarded, found = [node.output[0]], False, False
        for _ in range(3):  # the softmax output, then through IsNaN / Where / Cast
            nxt = []
            for name in frontier:
                for c in consumers.get(name, []):
                    if c.op_type == "MatMul":
                        found = True
                    elif c.op_type in ("IsNaN", "Where", "Cast"):
                        guarded |= c.op_type == "IsNaN"
                        nxt.append(c.output[0])
            frontier = nxt
        if found:
            count += 1
            sdpa |= guarded
    return count, sdpa


def _unfused_warning(blocks: int, sdpa: bool, fused: int, why: str) -> str:
    reason = why or ("the graph is torch's scaled_dot_product_attention export (Softmax guarded by IsNaN/Where), "
                     "which neither edgekit's nor ONNX Runtime's fusion matches; export the model with "
                     "attn_implementation=\"eager\" (an hf: source does so itself)" if sdpa else
                     "the ops around Softmax match neither edgekit's attention pattern nor ONNX Runtime's")
    return (f"{blocks - fused} of {blocks} attention block(s) (MatMul-Softmax-MatMul) were not fused into Attention "
            f"({reason}); their projections are INT8, but each attention core stays separate FP32 ops instead of one "
            "QAttention kernel")


def fuse_transformer(src: Path, dst: Path, check: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """edgekit's transformer rewrites, then ONNX Runtime's transformer fusions, on ``src`` into ``dst``; checked
    against ``src`` on ``check`` inputs.

    Returns the note for the manifest; when nothing fuses, fusion fails or changes outputs, ``dst`` is ``src``. The
    note has a ``warning`` when attention the graph has was not fused."""
    import onnx

    blocks, sdpa = attention_blocks(onnx.load(str(src)))
    note = _fuse(src, dst, check)
    fused = sum(v for k, v in note.get("fused", {}).items() if k in ATTENTION_OPS) if note.get("applied") else 0
    if blocks > fused:
        note["warning"] = _unfused_warning(blocks, sdpa, fused, "" if note.get("applied") else str(note.get("why", "")))
    return note


def _fuse(src: Path, dst: Path, check: dict[str, np.ndarray] | None) -> dict[str, Any]:
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    def keep_unfused(why: str) -> dict[str, Any]:
        save_like(load_onnx(src), dst, src)  # a copy that finds its external data, if any
        return {"applied": False, "why": why}

    quiet = logging.getLogger("onnxruntime.transformers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "Model producer not matched" and per-pass chatter
    try:
        model = onnx.load(str(src))
        ours = {**fuse_attention(model), "LayerNormalization (rows)": layernorm_rows(model)}
        options = FusionOptions("bert")
        options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = False  # slower than Add + LN here
        # the optimizer print()s its shape-inference failures and may leave their temporary files in the cwd
        with contextlib.redirect_stdout(io.StringIO()), scratch_cwd():
            fused = optimize_model(model, model_type="bert", num_heads=0, hidden_size=0, opt_level=0,
                                   optimization_options=options)
        counts = {k: v for k, v in fused.get_fused_operator_statistics().items() if v and k in FUSED_OPS}
        counts.update({k: v for k, v in ours.items() if v})
        fused.save_model_to_file(str(dst), use_external_data_format=has_external_data(src))
    except Exception as exc:  # the rewrites and the optimizer raise whatever their passes raise
        return keep_unfused(f"transformer rewrites failed ({type(exc).__name__}: {str(exc)[:200]}); kept unfused")
    finally:
        quiet.setLevel(level)
    if not any(k != "LayerNormalization" for k in counts):
        return keep_unfused("no transformer pattern matched")
    if check is not None:
        try:
            runs = [session(str(p), 0).run(None, check) for p in (src, dst)]
        except Exception as exc:  # a fused kernel that refuses these inputs: ORT raises its own exception types
            return keep_unfused(f"fused graph failed to run ({type(exc).__name__}: {str(exc)[:200]}); kept unfused")
        for a, b in zip(*runs):
            err = float(np.max(np.abs(a.astype(np.float64) - b))) / max(float(np.max(np.abs(a))), 1e-12)
            if not np.isfinite(err) or err > 1e-3:
                return keep_unfused(f"fused graph changed outputs (relative max error {err:.2g}); kept unfused")
    return {"applied": True, "fused": counts}


def first_feed(calib: FeedSource | None, specs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray] | None:
    """The rewrite check's inputs: two calibration samples when the batch axis is dynamic (a rewrite that broke
    batching would pass at batch 1), else one."""
    if calib is None:
        return None
    return next(calibration_feeds(calib, specs, CalibrationSettings(samples=2, batch_size=2)), None)
