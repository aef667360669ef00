"""Error metrics between an artifact's outputs and a reference's (pure numpy, streamed over batches)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class OutputError:
    """Running sums for one output; ``summary()`` gives MSE, max abs error, mean cosine and SQNR (dB)."""

    sq_err: float = 0.0
    sq_ref: float = 0.0
    elements: int = 0
    max_abs: float = 0.0
    cos_sum: float = 0.0
    cos_min: float = 1.0
    samples: int = 0
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(HISTOGRAM_BINS, dtype=np.int64))

    def update(self, ref: np.ndarray, out: np.ndarray) -> None:
        ref = np.asarray(ref, dtype=np.float64)
        out = np.asarray(out, dtype=np.float64)
        if ref.shape != out.shape:
            raise ValueError(f"output shape {out.shape} differs from the reference's {ref.shape}")
        diff = out - ref
        self.sq_err += float(np.sum(diff * diff))
        self.sq_ref += float(np.sum(ref * ref))
        self.elements += ref.size
        if ref.size:
            self.max_abs = max(self.max_abs, float(np.max(np.abs(diff))))
        n = ref.shape[0] if ref.ndim > 0 else 1
        r, o = ref.reshape(n, -1), out.reshape(n, -1)
        cos = cosine_rows(r, o)
        self.cos_sum += float(np.sum(cos))
        self.cos_min = min(self.cos_min, float(np.min(cos))) if n else self.cos_min
        self.samples += n
        self.histogram += cosine_histogram(cos)

    def summary(self) -> dict[str, float]:
        mse = self.sq_err / self.elements if self.elements else 0.0
        return {
            "mse": mse,
            "max_abs_error": self.max_abs,
            "cosine": self.cos_sum / self.samples if self.samples else 1.0,
            "min_cosine": self.cos_min,
            "sqnr_db": sqnr_db(self.sq_ref, self.sq_err),
            "samples": self.samples,
        }


# The per-sample error histogram (report.html): 1 - cosine of each sample in fixed half-decade bins, so runs and batches
# add up and the same data gives the same counts. Bin i holds [HISTOGRAM_EDGES[i], HISTOGRAM_EDGES[i + 1]); the first
# bin holds 0 to 1e-9 (exact matches included), the last one 1 to 3.16 (1 - cosine is at most 2).
HISTOGRAM_BINS = 20
HISTOGRAM_EDGES = (0.0, *(10.0 ** (-9.0 + 0.5 * i) for i in range(HISTOGRAM_BINS)))


def cosine_histogram(cos: np.ndarray) -> np.ndarray:
    """Counts of ``1 - cos`` per HISTOGRAM_EDGES bin (HISTOGRAM_BINS integers)."""
    gap = np.maximum(1.0 - np.asarray(cos, dtype=np.float64).ravel(), 1e-300)
    index = np.clip(np.floor((np.log10(gap) + 9.5) / 0.5), 0, HISTOGRAM_BINS - 1).astype(np.int64)
    return np.bincount(index, minlength=HISTOGRAM_BINS)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows; two all-zero rows count as identical (1.0)."""
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    dot = np.sum(a * b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(both_zero, 1.0, dot / np.maximum(na * nb, 1e-300))
    return np.clip(cos, -1.0, 1.0)


def sqnr_db(signal_power: float, noise_power: float) -> float:
    """Signal-to-quantization-noise ratio in dB; identical outputs give +inf (reported as such)."""
    if noise_power == 0.0:
        return math.inf
    if signal_power == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal_power / noise_power)


@dataclass
class Agreement:
    """Top-1 agreement with a reference, for classification outputs."""

    same: int = 0
    total: int = 0

    def update(self, ref: np.ndarray, out: np.ndarray) -> None:
        self.same += int(np.sum(np.argmax(ref, axis=-1) == np.argmax(out, axis=-1)))
        self.total += int(np.prod(ref.shape[:-1]))

    @property
    def rate(self) -> float:
        return self.same / self.total if self.total else 0.0


@dataclass
class Accuracy:
    """Top-1 accuracy against labels (percent)."""

    correct: int = 0
    total: int = 0

    def update(self, logits: np.ndarray, labels: np.ndarray) -> None:
        self.correct += int(np.sum(np.argmax(logits, axis=-1) == labels))
        self.total += int(labels.shape[0])

    @property
    def percent(self) -> float:
        return 100.0 * self.correct / self.total if self.total else 0.0


@dataclass
class PairedAccuracy:
    """Per-sample right/wrong of a runner and of the accuracy reference on the same labelled samples: the paired
    2x2 table the accuracy-drop interval is computed from (both right, only the reference, only this runner, neither)."""

    both: int = 0
    ref_only: int = 0
    new_only: int = 0
    neither: int = 0

    def update(self, ref_logits: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> None:
        ref_ok = np.argmax(ref_logits, axis=-1) == labels
        ok = np.argmax(logits, axis=-1) == labels
        self.both += int(np.sum(ref_ok & ok))
        self.ref_only += int(np.sum(ref_ok & ~ok))
        self.new_only += int(np.sum(~ref_ok & ok))
        self.neither += int(np.sum(~ref_ok & ~ok))

    @property
    def table(self) -> tuple[int, int, int, int]:
        return self.both, self.ref_only, self.new_only, self.neither


@dataclass
class Comparison:
    """All error metrics of one artifact against one reference, output by output."""

    outputs: tuple[str, ...]
    classification: bool
    errors: dict[str, OutputError] = field(default_factory=dict)
    agreement: Agreement = field(default_factory=Agreement)

    def __post_init__(self) -> None:
        self.errors = {name: OutputError() for name in self.outputs}

    def update(self, ref: dict[str, np.ndarray], out: dict[str, np.ndarray]) -> None:
        for name in self.outputs:
            self.errors[name].update(ref[name], out[name])
        if self.classification:
            first = self.outputs[0]
            self.agreement.update(ref[first], out[first])

    def summary(self) -> dict[str, Any]:
        per_output = {name: e.summary() for name, e in self.errors.items()}
        worst = {
            "cosine": min(v["cosine"] for v in per_output.values()),
            "sqnr_db": min(v["sqnr_db"] for v in per_output.values()),
            "mse": max(v["mse"] for v in per_output.values()),
            "max_abs_error": max(v["max_abs_error"] for v in per_output.values()),
        }
        result: dict[str, Any] = {"outputs": per_output, "worst": worst}
        if self.classification:
            result["top1_agreement"] = self.agreement.rate
        return result

    def histogram(self, against: str) -> dict[str, Any]:
        """Each output's per-sample ``1 - cosine`` counts (HISTOGRAM_EDGES bins), compared with ``against``."""
        return {"quantity": "1 - cosine per sample", "against": against, "edges": list(HISTOGRAM_EDGES),
                "outputs": {name: [int(c) for c in e.histogram] for name, e in self.errors.items()}}
