"""What edgekit's static INT8 recipe measures and decides before ``onnxruntime.quantization.quantize_static`` runs.

Three things, each measured on the benchmark CNNs (benchmarks/recipe_sweep.py, docs/ort-targets.md):

* **MSE activation ranges** (``[calibration] method = "mse"``): per activation tensor, the clipping range that
  minimizes the expected quantization error (clipping + rounding) over a histogram of the calibration data, the same
  criterion as torch.ao's HistogramObserver. Handed to ORT as ``TensorQuantOverrides`` rmin/rmax.
* **8-bit weights where the kernel is exact.** Without VNNI/AMX, ONNX Runtime's u8 x s8 GEMM adds product pairs in
  int16 and saturates, hence 7-bit weights (``reduce_range``). Two kernels do not saturate, so their weights keep
  8 bits: depthwise convolutions (a separate kernel accumulating in int32), and convolutions given *uint8* weights
  (u8 x u8 widens before multiplying; slower per MAC, so used only for the stem).
* **Which input layers stay FP32** (``fp32_input_layers = "auto"``): the stem stays FP32 when its output feeds
  quantized compute directly; when a pooling op sits between, the FP32 stem and pool cost more (+0.4 ms of 5.8 on
  the ResNet-18-shaped CNN, docs/ort-targets.md), so the stem is quantized instead, with exact 8-bit uint8 weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from edgekit.backends.onnx.graph import TensorReader, tensor_reader

COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
POOLS = ("MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool", "LpPool")
BINS = 2048
PASSES = {"activation_stats": 0}  # statistics passes run in this process (tests count cache hits with it)
FILL_VALUE = 1e4  # an activation reaching this magnitude holds fill values (masks), not a range 8 bits can cover


def input_layers(graph: Any) -> list[Any]:
    """The Conv/Gemm/MatMul nodes that take a graph input as their data input."""
    inits = {i.name for i in graph.initializer}
    inputs = {i.name for i in graph.input if i.name not in inits}
    return [n for n in graph.node if n.op_type in COMPUTE and n.input and n.input[0] in inputs]


def feeds_a_pool(graph: Any, node: Any) -> bool:
    """Whether a pooling op lies between ``node`` and the next compute layers (through activations, adds, ...)."""
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    seen, todo = set(), list(node.output)
    while todo:
        for c in consumers.get(todo.pop(), []):
            if c.op_type in POOLS:
                return True
            if c.op_type not in COMPUTE and id(c) not in seen:
                seen.add(id(c))
                todo.extend(c.output)
    return False


def fp32_input_layer_names(graph: Any, setting: bool | str) -> list[str]:
    """The input layers to keep FP32 for ``fp32_input_layers`` = true / false / "auto" (see the module docstring)."""
    if setting is False:
        return []
    layers = input_layers(graph)
    if setting == "auto":
        layers = [n for n in layers if not feeds_a_pool(graph, n)]
    return [n.name for n in layers]


def exact_weight_overrides(graph: Any, fp32_layers: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """TensorQuantOverrides giving 8-bit weights to the layers whose ONNX Runtime kernels cannot saturate.

    Only meant for hosts where the rest of the weights get 7 bits (reduce_range); per-channel along axis 0."""
    from onnxruntime.quantization import QuantType

    inits = {i.name: i for i in graph.initializer}
    keep_fp32 = set(fp32_layers)
    s8 = {"quant_type": QuantType.QInt8, "symmetric": True, "reduce_range": False, "axis": 0}
    u8 = {"quant_type": QuantType.QUInt8, "symmetric": False, "reduce_range": False, "axis": 0}
    out: dict[str, list[dict[str, Any]]] = {}
    for n in graph.node:
        if n.op_type != "Conv" or len(n.input) < 2 or n.input[1] not in inits or n.name in keep_fp32:
            continue
        dims = list(inits[n.input[1]].dims)
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        if group > 1 and dims[0] == group and dims[1] == 1:  # depthwise, multiplier 1: MLAS's int32 depthwise kernel
            out[n.input[1]] = [dict(s8)]
    for n in input_layers(graph):
        if n.op_type == "Conv" and n.name not in keep_fp32 and n.input[1] in inits:
            out[n.input[1]] = [dict(u8)]
    return out


def best_range(hist: np.ndarray, lo: float, hi: float, levels: int, symmetric: bool) -> tuple[float, float]:
    """The clipping range of a histogram (bins over [lo, hi]) with the least expected squared quantization error.

    Error of clipping to [a, b] with ``levels`` steps: every value outside is moved to the nearer end, every value
    inside is off by step^2/12 on average (step = (b - a) / levels). Prefix sums make each candidate O(1).
    ``symmetric``: the histogram is of |x| over [0, hi] and the range is [-b, b] (step 2b / levels)."""
    edges = np.linspace(lo, hi, len(hist) + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    s0 = np.concatenate([[0.0], np.cumsum(hist)])
    s1 = np.concatenate([[0.0], np.cumsum(hist * centers)])
    s2 = np.concatenate([[0.0], np.cumsum(hist * centers * centers)])
    zero = int(np.clip(np.searchsorted(edges, 0.0), 0, len(hist)))  # the range must hold 0
    starts = np.unique(np.linspace(0, zero, min(zero + 1, 256)).astype(int))
    ends = np.unique(np.linspace(max(zero, 1), len(hist), 512).astype(int))
    a, b = edges[starts][:, None], edges[ends][None, :]
    below = s2[starts][:, None] - 2 * a * s1[starts][:, None] + a * a * s0[starts][:, None]
    above = (s2[-1] - s2[ends])[None] - 2 * b * (s1[-1] - s1[ends])[None] + b * b * (s0[-1] - s0[ends])[None]
    width = 2 * b if symmetric else b - a
    inside = (s0[ends][None] - s0[starts][:, None]) * (width / levels) ** 2 / 12
    error = below + above + inside
    i, j = np.unravel_index(np.argmin(error), error.shape)
    best_hi = float(edges[ends[j]])
    return (-best_hi, best_hi) if symmetric else (float(edges[starts[i]]), best_hi)


def tensor_values(tensors: TensorReader, feeds: Any) -> Iterator[tuple[str, np.ndarray]]:
    """(name, value) of every tensor over one pass of the calibration batches (a rewindable reader), each batch a
    slice of samples at a time when its tensors exceed ``TensorReader``'s budget (graph.py): exact for min, max and
    summed histogram counts, and the pass holds one slice's tensors, not a whole batch's."""
    for feed in feeds.passes():
        for run in tensors.runs(feed):
            yield from run.items()


def tensor_bounds(tensors: TensorReader, feeds: Any) -> dict[str, tuple[float, float]]:
    """(min, max) of every tensor ``tensors`` returns over the calibration feeds (a rewindable reader), each range
    widened to hold 0. One pass that keeps two numbers per tensor."""
    bounds: dict[str, tuple[float, float]] = {}
    for t, v in tensor_values(tensors, feeds):
        if v.size:
            lo, hi = bounds.get(t, (0.0, 0.0))
            bounds[t] = (min(lo, float(v.min())), max(hi, float(v.max())))
    return bounds


def fill_value_nodes(graph: Any, bounds: Mapping[str, tuple[float, float]]) -> tuple[list[str], list[str]]:
    """Tensors holding fill values (|x| >= FILL_VALUE or not finite: an attention mask's -inf / finfo.min / -10000,
    and the scores it is added to) and the nodes that produce or read them, which must stay FP32: one 8-bit scale
    cannot hold both -3.4e38 and a score of 5, so every real value would round to zero. Returns (tensors, nodes)."""
    tensors = [t for t, (lo, hi) in bounds.items() if not (abs(lo) < FILL_VALUE and abs(hi) < FILL_VALUE)]
    marked = set(tensors)
    nodes = [n.name for n in graph.node if n.name and marked.intersection([*n.input, *n.output])]
    return tensors, nodes


def mse_ranges(tensors: TensorReader, feeds: Any, symmetric: bool, levels: int,
               bounds: Mapping[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """MSE-optimal ranges of the tensors in ``bounds`` (their min/max, from ``tensor_bounds``) over the
    calibration feeds: one pass of histograms. Only ranges narrower than min/max are returned."""
    lo = {t: 0.0 if symmetric else a for t, (a, b) in bounds.items()}
    hi = {t: max(-a, b) if symmetric else b for t, (a, b) in bounds.items()}
    hists = {t: np.zeros(BINS) for t in bounds if hi[t] > lo[t]}
    for t, v in tensor_values(tensors, feeds):
        if t in hists:
            hists[t] += np.histogram(np.abs(v) if symmetric else v, bins=BINS, range=(lo[t], hi[t]))[0]
    out = {}
    for t, h in hists.items():
        a, b = best_range(h, lo[t], hi[t], levels, symmetric)
        if (b - a) < (2 * hi[t] if symmetric else hi[t] - lo[t]) * 0.999:
            out[t] = (a, b)
    return out


# ONNX Runtime's own histogram settings per method (onnxruntime.quantization.calibrate.create_calibrator's defaults,
# as quantize_static uses them): bins, symmetric (a histogram of |x|), quantized bins (entropy).
HISTOGRAM_METHODS = {"percentile": (2048, True, 128), "entropy": (128, False, 128)}


def histogram_ranges(tensors: TensorReader, feeds: Any, method: str, percentile: float,
                     skip: Iterable[str]) -> dict[str, tuple[float, float]]:
    """Percentile or entropy ranges of every tensor but ``skip``, in two streaming passes over the calibration
    batches: each tensor's min / max (and min |x|), then its histogram over exactly the bins ONNX Runtime's
    calibrator would use for all the data at once, summed batch by batch. The histograms are then ORT's one-shot
    histograms, and ORT's own HistogramCollector turns them into ranges, so the ranges are ORT's; but memory stays
    one batch's tensors plus a fixed number of bins per tensor, whatever the sample count (ORT's calibrator keeps
    every batch's intermediate outputs until the end: onnxruntime issue 18893)."""
    import contextlib
    import io

    from onnxruntime.quantization.calibrate import HistogramCollector

    bins, symmetric, quantized_bins = HISTOGRAM_METHODS[method]
    skipped = set(skip)
    lo: dict[str, np.floating] = {}
    hi: dict[str, np.floating] = {}
    abs_lo: dict[str, np.floating] = {}
    for t, v in tensor_values(tensors, feeds):
        if t in skipped or not v.size:
            continue
        a, b, m = np.nanmin(v), np.nanmax(v), np.nanmin(np.abs(v))
        lo[t], hi[t] = (min(lo[t], a), max(hi[t], b)) if t in lo else (a, b)
        abs_lo[t] = min(abs_lo[t], m) if t in abs_lo else m
    # the edges ORT computes from the whole data: |x| over [min |x|, max |x|], or x over [-max |x|, max |x|]
    edges_range = {t: (abs_lo[t], max(abs(lo[t]), abs(hi[t]))) if symmetric else
                   (-max(abs(lo[t]), abs(hi[t])), max(abs(lo[t]), abs(hi[t]))) for t in lo}
    counts: dict[str, np.ndarray] = {}
    edges: dict[str, np.ndarray] = {}
    for t, v in tensor_values(tensors, feeds):
        if t in edges_range:
            h, e = np.histogram(np.abs(v) if symmetric else v, bins=bins, range=edges_range[t])
            counts[t] = counts[t] + h if t in counts else h
            edges[t] = e
    collector = HistogramCollector(method=method, symmetric=symmetric, num_bins=bins, num_quantized_bins=quantized_bins,
                                   percentile=percentile, scenario="same")
    for t in counts:
        e = edges[t].astype(np.float32) if symmetric else edges[t]
        collector.histogram_dict[t] = (counts[t], e, lo[t], hi[t]) if symmetric else (counts[t], e, lo[t], hi[t], edges_range[t][1])
    if not collector.histogram_dict:
        return {}
    with contextlib.redirect_stdout(io.StringIO()):  # the collector prints its settings
        result = collector.compute_collection_result()
    return {t: (float(r[0]), float(r[1])) for t, r in result.items()}


@dataclass
class ActivationStats:
    bounds: dict[str, tuple[float, float]]
    fill_tensors: list[str]
    fill_nodes: list[str]
    mse_ranges: dict[str, tuple[float, float]]
    histogram_ranges: dict[str, tuple[float, float]]  # method percentile / entropy: edgekit's streaming histograms


def activation_stats(src: Path, graph: Any, feeds: Any, mse: tuple[bool, int] | None,
                     histogram: tuple[str, float] | None = None) -> ActivationStats:
    """What edgekit measures on the calibration data before ORT's own calibration: the fill-value tensors and, with
    ``mse`` = (symmetric, levels), the MSE ranges of the others. Its session with every tensor as an output is
    released on return, so its memory is not held while ORT's calibrator runs."""
    PASSES["activation_stats"] += 1
    tensors = tensor_reader(src)
    bounds = tensor_bounds(tensors, feeds)
    filled, nodes = fill_value_nodes(graph, bounds)
    ranges = {}
    if mse is not None:
        skip = set(filled)
        usable = {t: b for t, b in bounds.items() if t not in skip}
        ranges = mse_ranges(tensors, feeds, mse[0], mse[1], usable)
    hist = histogram_ranges(tensors, feeds, histogram[0], histogram[1], filled) if histogram is not None else {}
    return ActivationStats(bounds, filled, nodes, ranges, hist)


def write_minmax_cache(bounds: Mapping[str, tuple[float, float]], skip: Iterable[str], path: Path) -> None:
    """``bounds`` (all but ``skip``) as ONNX Runtime's calibration cache (``quantize_static(calibration_cache_path=)``)
    with method MinMax: ORT then takes these ranges instead of running its own calibration pass."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData, save_tensors_data

    skipped = set(skip)
    data = {t: (np.float32(lo), np.float32(hi)) for t, (lo, hi) in bounds.items() if t not in skipped}
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), path)


def range_overrides(ranges: Mapping[str, tuple[float, float]]) -> dict[str, list[dict[str, Any]]]:
    return {t: [{"rmin": np.float32(a), "rmax": np.float32(b)}] for t, (a, b) in ranges.items()}
