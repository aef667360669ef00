"""Sanity checks on data that is well-formed but probably not what the model wants: warnings, not errors.

The check pass of every source gathers ``InputStats`` per input; ``data_warnings`` turns them into one-line
warnings (too few samples for the calibration method, constant or all-zero inputs, raw 0-255 pixel values for a
float input), ``range_mismatch`` compares calibration with validation (a preprocessing mismatch), and
``check_label_classes`` refuses labels the model cannot predict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from edgekit.errors import DataError

# The fewest calibration samples each method is fit for: minmax ranges come from extremes, the histogram methods
# need enough samples to fill their histograms.
MIN_SAMPLES = {"minmax": 8, "entropy": 32, "percentile": 32, "mse": 32}


@dataclass
class InputStats:
    """Running statistics of one input over a pass: range, mean, spread, integrality, constant and all-zero samples."""

    name: str
    dtype: str
    count: int = 0
    values: int = 0
    low: float = math.inf
    high: float = -math.inf
    total: float = 0.0
    squares: float = 0.0
    integral: bool = True
    zero_samples: int = 0

    def update(self, arr: np.ndarray) -> None:
        if arr.size == 0:
            return
        a = arr.astype(np.float64, copy=False)
        self.count += arr.shape[0]
        self.values += a.size
        self.low = min(self.low, float(a.min()))
        self.high = max(self.high, float(a.max()))
        self.total += float(a.sum())
        self.squares += float(np.square(a).sum())
        if self.integral and arr.dtype.kind == "f":
            self.integral = bool(np.all(a == np.round(a)))
        self.zero_samples += int(np.count_nonzero(~a.reshape(a.shape[0], -1).any(axis=1)))

    @property
    def mean(self) -> float:
        return self.total / self.values if self.values else 0.0

    @property
    def std(self) -> float:
        if not self.values:
            return 0.0
        return math.sqrt(max(self.squares / self.values - self.mean ** 2, 0.0))

    def span(self) -> str:
        return f"[{self.low:.4g}, {self.high:.4g}]"


class Checked(Protocol):
    description: str
    stats: dict[str, InputStats]
    total: int | None


def data_warnings(source: Checked, role: str, method: str | None = None, wanted: int | None = None) -> list[str]:
    """The warnings one checked source earns on its own; ``method`` and ``wanted`` for calibration data."""
    out: list[str] = []
    total = source.total or 0
    if method is not None:
        need = MIN_SAMPLES.get(method, 1)
        if total < need:
            out.append(f"{source.description} holds {total} sample(s); method '{method}' needs at least {need} for "
                       "ranges that represent the data (give more samples)")
    if wanted is not None and total < wanted:
        out.append(f"{source.description} holds {total} sample(s), fewer than [{role}] samples = {wanted}")
    for s in source.stats.values():
        if np.dtype(s.dtype).kind != "f" or not s.count:
            continue
        if s.low == s.high:
            out.append(f"{source.description}: input '{s.name}' is constant (every value {s.low:g}) over all {s.count} "
                       "samples; check the data holds real inputs")
        elif s.zero_samples:
            out.append(f"{source.description}: input '{s.name}' is all zeros in {s.zero_samples} of {s.count} samples")
        if s.integral and s.low >= 0 and 16 < s.high <= 255:
            out.append(f"{source.description}: input '{s.name}' holds integer values in {s.span()}, like raw 0-255 "
                       f"pixels, for a {s.dtype} input; if the model was trained on normalized inputs, scale them "
                       "(e.g. [images] scale/mean/std)")
    return out


def range_mismatch(calibration: Checked, validation: Checked) -> list[str]:
    """Inputs whose calibration and validation ranges differ by more than 10x in scale: a preprocessing mismatch
    (one set in [0, 255], the other normalized) that makes either the calibrated ranges or the measured errors wrong."""
    out = []
    for name, c in calibration.stats.items():
        v = validation.stats.get(name)
        if v is None or not c.count or not v.count or np.dtype(c.dtype).kind != "f":
            continue
        sc, sv = max(abs(c.low), abs(c.high)), max(abs(v.low), abs(v.high))
        if min(sc, sv) > 0 and max(sc, sv) / min(sc, sv) > 10 or (min(sc, sv) == 0 < max(sc, sv)):
            out.append(f"input '{name}' ranges over {c.span()} in [calibration] data but {v.span()} in [validation] "
                       "data: the two sets are preprocessed differently; prepare both the same way")
    return out


def classes_of(source_model: Any, feed: dict[str, np.ndarray]) -> int | None:
    """How many classes the model's first output has: from the ONNX output shape, else one forward pass."""
    onnx_path = getattr(source_model, "onnx_path", None)
    if onnx_path is not None:
        import onnx

        graph = onnx.load(str(onnx_path), load_external_data=False).graph
        dims = graph.output[0].type.tensor_type.shape.dim if graph.output else []
        return int(dims[-1].dim_value) if dims and dims[-1].dim_value > 0 else None
    module = getattr(source_model, "module", None)
    if module is None:
        return None
    import torch

    with torch.no_grad():
        args = [torch.from_numpy(np.ascontiguousarray(feed[s.name][:1])) for s in source_model.inputs]
        out = module(*args)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    return int(out.shape[-1]) if hasattr(out, "shape") and len(out.shape) else None


def check_label_classes(source: Any, model: Any) -> None:
    """Labels outside the classes the model predicts make its accuracy meaningless: exit 2 naming the label."""
    if source is None or getattr(source, "label_range", None) is None or getattr(model, "task", None) != "classification":
        return
    first = next(iter(source.batches(1)), None)
    if first is None:
        return
    try:
        classes = classes_of(model, first.feed)
    except (Exception, SystemExit):  # the model's own errors (a sys.exit too) surface, with context, at export
        return
    high = source.label_range[1]
    if classes is not None and high >= classes:
        raise DataError(f"{source.description}: label {high} is outside the model's {classes} classes (0..{classes - 1}); "
                        "check the labels match the model's class ids")
