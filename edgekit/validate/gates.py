"""Gates: compare measured numbers with a profile's bounds; each verdict names value, bound and target.

A gate is decided only where the data can resolve its bound (docs/gates.md): an accuracy gate whose bound is finer
than one sample is decided by the 95% interval (not decided while the interval straddles the bound), and a speed gate
is not decided when the FP32 baseline is too fast to time or the target was not timed on a device of its kind.
Not decided is ``passed = None``, which never fails a target; the message says why and what would decide it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from edgekit.types import Gates, GateVerdict, LayerCensus, Metrics, SizeInfo, TargetLatency
from edgekit.validate.stats import DropInterval, Paired, RateInterval, samples_to_decide, straddles

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
            why = ("the artifact does not count its INT8 layers" if gate == "min_int8_fraction" and measured.get("int8_layers") is None
                   else f"{key} was not measured")
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
            verdict = _resolved(verdict, target, shown, DropInterval(Paired(*measured["paired"])),
                                sum(measured["paired"]), 100.0, "points", ".1f")
        elif gate == "min_top1_agreement" and measured.get("agreement_counts"):
            same, total = measured["agreement_counts"]
            verdict = _resolved(verdict, target, shown, RateInterval(same, total), total, 1.0, "", ".4f")
        verdicts.append(verdict)
    return verdicts


def _resolved(v: GateVerdict, target: str, shown: str, interval_at: Any, n: int, per_sample_scale: float, unit: str,
              fmt: str) -> GateVerdict:
    """An accuracy verdict with its 95% interval; when one sample weighs more than the bound's slack, decided by the
    interval alone (not decided while it straddles the bound), with the sample count a decision would need."""
    interval = interval_at(n)
    low, high = (round(x, 6) for x in interval)
    one = per_sample_scale / n  # what one flipped prediction moves the value by
    slack = v.bound if v.gate.startswith("max_") else per_sample_scale - v.bound  # how far the value may move
    if slack <= 0 or one <= slack:  # an exact bound (no flip allowed), or a fine enough sample: the point estimate decides
        return dataclasses.replace(v, interval=(low, high))
    u = f" {unit}" if unit else ""
    resolution = f"too few samples: one sample = {one:{fmt}}{u}, bound {v.bound:g}{u}"
    ci = f"95% CI [{interval[0]:{fmt}}, {interval[1]:{fmt}}]"
    if not straddles(interval, v.bound):
        passed = interval[1] <= v.bound if v.gate.startswith("max_") else interval[0] >= v.bound
        word = "meets" if passed else "fails"
        return GateVerdict(v.gate, v.bound, v.value, passed, f"{target}: {shown} {word} {v.gate} ({'<=' if v.gate.startswith('max_') else '>='} "
                           f"{v.bound:g}{u}) — {n} samples resolve only {one:{fmt}}{u}, but the {ci} lies on one side",
                           resolution, (low, high))
    needed = samples_to_decide(interval_at, n, v.bound)
    needed = max(needed, math.floor(per_sample_scale / slack) + 1) if needed is not None else None
    need = f"~{needed:,} samples needed" if needed is not None else "more samples than can be counted needed at this rate"
    return GateVerdict(v.gate, v.bound, v.value, None,
                       f"{target}: {shown}, {v.gate} ({'<=' if v.gate.startswith('max_') else '>='} {v.bound:g}{u}) not decided: "
                       f"{n} samples cannot resolve {v.bound:g}{u} (one sample = {one:{fmt}}{u}); {ci}; {need}",
                       resolution, (low, high))


def evaluate(target: str, gates: Gates, measured: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``check`` as the manifest writes it: one dict per verdict."""
    return [v.to_dict() for v in check(target, gates, measured)]
