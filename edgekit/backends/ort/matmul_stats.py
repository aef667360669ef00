"""What calibration shows of the inputs of a graph's weighted MatMul/Gemm/Attention nodes: per-channel |max| and the
8-bit SQNR that dynamic quantization would give them; and the nodes to keep FP32 by that prediction."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends.base import CalibrationSettings
from edgekit.backends.onnx.calibration import FeedCalibrationReader
from edgekit.backends.onnx.session import session
from edgekit.types import FeedSource, TensorSpec

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


def predicted_sqnr_db(x: np.ndarray) -> float:
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

    model = onnx.load(str(model_path))
    tensors = sorted({n.input[0] for n in weighted_matmuls(model)})
    present = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in present:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    sess = session(model.SerializeToString(), 0, optimize=False)  # no graph optimization: every tensor keeps its name
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
                db[t].append(predicted_sqnr_db(x))
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
