"""Gates: compare measured numbers with a profile's bounds; each verdict names value, bound and target. A gate the
data cannot resolve (too few samples for an accuracy bound, a model too fast to time, a speed-up not timed on the
target's kind of device) is not decided (``passed = None``, never a failure) and says why (docs/gates.md)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

from edgekit.types import Gates, GateVerdict, LayerCensus, Metrics, SizeInfo, TargetLatency
from edgekit.validate.stats import MAX_SAMPLES, DropInterval, Paired, RateInterval, samples_to_decide, straddles

# gate -> (how to read the measured value from the flat metrics, "min" or "max" bound, unit)
_GATES: dict[str, tuple[str, str, str]] = {
    "min_cosine": ("cosine", "min", ""),
    "min_sqnr_db": ("sqnr_db", "min", " dB"),
    "max_mse": ("mse", "max", ""),
    "max_abs_error": ("max_abs_error", "max", ""),
    "min_top1_agreement": ("top1_agreement", "min", ""),
    "max_top1_drop": ("top1_drop", "max", " points"),
    "max_p50_ms": ("p50_ms", "max", " ms"),
    "max_size_mb": ("size_mb", "max", " MB"),
    "max_size_ratio": ("size_ratio", "max", ""),
    "min_speedup": ("speedup", "min", "x"),
    "min_int8_fraction": ("int8_fraction", "min", ""),
}

TIMING_FLOOR_MS = 1.0
"""Below this FP32 time per call (its fastest call), per-call overhead (feed conversion, session dispatch, thread wake-up) rather than
arithmetic decides a runtime's latency, so a speed-up says nothing about the model: min_speedup is not decided."""


def measured_key(gate: str) -> str:
    """The measured number a gate reads (``min_cosine`` -> ``cosine``)."""
    return _GATES[gate][0]


def speed_resolution(fastest_ms: float | None, baseline: str, on_device: bool) -> str:
    """Why a speed-up measured against ``baseline`` cannot decide a speed gate; "" when it can. ``fastest_ms``: the
    baseline's fastest timed call (a busy host slows the median, never the fastest call below the model's cost)."""
    if not on_device:
        return "not timed on a device of this target's kind (its speed-up over the build host's FP32 says nothing)"
    if fastest_ms is not None and fastest_ms < TIMING_FLOOR_MS:
        return (f"model too small to time: {baseline} runs in {fastest_ms:.2g} ms, under the {TIMING_FLOOR_MS:g} ms "
                "below which per-call overhead, not arithmetic, decides the time")
    return ""


def measured_values(metrics: Metrics, latency: TargetLatency | None, size: SizeInfo | None, layers: LayerCensus | None,
                    speed_undecided: str = "") -> dict[str, Any]:
    """The flat numbers (and the evidence behind them) ``check`` reads, from what the validator measured."""
    flat: dict[str, Any] = {**metrics.primary["worst"], "top1_agreement": metrics.primary.get("top1_agreement"),
                            "top1_drop": metrics.top1_drop, "paired": metrics.paired, "agreement_counts": metrics.agreement_counts}
    if latency is not None:
        flat.update(p50_ms=latency.stats.p50_ms, speedup=latency.speedup_vs_ort_fp32, speed_undecided=speed_undecided,
                    speedup_baseline=latency.speedup_baseline)
    if size is not None:
        flat.update(size_mb=size.bytes / 1e6, size_ratio=size.ratio_to_fp32)
    if layers is not None:
        flat.update(int8_fraction=layers.fraction, int8_layers=layers)
    return flat


def check(target: str, gates: Gates, measured: Mapping[str, Any]) -> list[GateVerdict]:
    """One verdict per configured gate: passed True/False, or None when the number could not be measured or the
    data cannot decide it. ``measured``: flat numbers by key (``measured_values``), with optional evidence keys
    (``paired``, ``agreement_counts``, ``speed_undecided``, ``int8_layers``) that let a gate know its resolution."""
    verdicts = []
    for gate, bound in dataclasses.asdict(gates).items():
        if bound is None:
            continue
        key, kind, unit = _GATES[gate]
        value = measured.get(key)
        if value is None:
            why = f"{key} was not measured"
            if gate == "min_int8_fraction":
                why = ("the artifact does not count its INT8 layers" if measured.get("int8_layers") is None
                       else "the model has no Conv, MatMul, Gemm or RNN layer with weights")
            verdicts.append(GateVerdict(gate, bound, None, None, f"{target}: {gate} not checked ({why})"))
            continue
        ok = value >= bound if kind == "min" else value <= bound
        rel = ">=" if kind == "min" else "<="
        shown = f"{key} {value:.3g}{unit}" if gate == "min_speedup" else f"{key} {value:.6g}{unit}"
        if gate == "min_int8_fraction":
            census: LayerCensus = measured["int8_layers"]
            shown = f"{census.int8} of {census.total} compute layers INT8 ({value:.0%})"
        message = f"{target}: {shown} {'meets' if ok else 'fails'} {gate} ({rel} {bound:g}{unit})"
        verdict = GateVerdict(gate, bound, value, ok, message)
        if gate == "min_speedup" and measured.get("speed_undecided"):
            verdict = GateVerdict(gate, bound, value, None, f"{target}: {shown}, {gate} ({rel} {bound:g}{unit}) not decided: "
                                  f"{measured['speed_undecided']}", measured["speed_undecided"])
        elif gate == "max_top1_drop" and measured.get("paired"):
            paired = Paired(*measured["paired"])
            verdict = _resolved(verdict, target, shown, DropInterval(paired), paired.n, 100.0, "points", ".1f")
        elif gate == "min_top1_agreement" and measured.get("agreement_counts"):
            same, total = measured["agreement_counts"]
            verdict = _resolved(verdict, target, shown, RateInterval(same, total), total, 1.0, "", ".4f")
        verdicts.append(verdict)
    return verdicts


def _resolved(v: GateVerdict, target: str, shown: str, interval_at: Callable[[int], tuple[float, float]], n: int,
              scale: float, unit: str, fmt: str) -> GateVerdict:
    """An accuracy verdict with its 95% interval (``scale``: what all n samples weigh, 100 points or a rate of 1).
    When one sample weighs more than the bound's slack, the interval alone decides (not decided while it straddles
    the bound), and the message gives the sample count a decision would need."""
    interval = interval_at(n)
    rounded = (round(interval[0], 6), round(interval[1], 6))
    upper = v.gate.startswith("max_")  # max_top1_drop bounds from above; min_top1_agreement from below
    one = scale / n  # what one flipped prediction moves the value by
    slack = v.bound if upper else scale - v.bound  # how far from perfect the value may be
    if slack <= 0 or one <= slack:  # an exact bound (no flip allowed), or fine enough samples: the point estimate decides
        return dataclasses.replace(v, interval=rounded)
    u = f" {unit}" if unit else ""
    gate = f"{v.gate} ({'<=' if upper else '>='} {v.bound:g}{u})"
    resolution = f"too few samples: one sample = {one:{fmt}}{u}, bound {v.bound:g}{u}"
    ci = f"95% CI [{interval[0]:{fmt}}, {interval[1]:{fmt}}]"
    if not straddles(interval, v.bound):
        passed = interval[1] <= v.bound if upper else interval[0] >= v.bound
        message = (f"{target}: {shown} {'meets' if passed else 'fails'} {gate} — {n} samples resolve only {one:{fmt}}{u}, "
                   f"but the {ci} lies on one side")
        return GateVerdict(v.gate, v.bound, v.value, passed, message, resolution, rounded)
    needed = samples_to_decide(interval_at, n, v.bound)
    needed = max(needed, math.floor(scale / slack) + 1) if needed is not None else None
    need = f"~{needed:,} samples needed" if needed is not None else f"over {MAX_SAMPLES:,} samples needed at this rate"
    message = (f"{target}: {shown}, {gate} not decided: {n} samples cannot resolve {v.bound:g}{u} "
               f"(one sample = {one:{fmt}}{u}); {ci}; {need}")
    return GateVerdict(v.gate, v.bound, v.value, None, message, resolution, rounded)


def evaluate(target: str, gates: Gates, measured: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``check`` as the manifest writes it: one dict per verdict."""
    return [v.to_dict() for v in check(target, gates, measured)]
