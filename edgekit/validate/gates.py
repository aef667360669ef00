"""Gates: compare measured numbers with a profile's bounds; each verdict names value, bound and target."""

from __future__ import annotations

import dataclasses
from typing import Any

from edgekit.types import Gates, GateVerdict

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
}


def check(target: str, gates: Gates, measured: dict[str, float | None]) -> list[GateVerdict]:
    """One verdict per configured gate: passed True/False, or None when the number could not be measured."""
    verdicts = []
    for gate, bound in dataclasses.asdict(gates).items():
        if bound is None:
            continue
        key, kind, unit = _GATES[gate]
        value = measured.get(key)
        if value is None:
            verdicts.append(GateVerdict(gate, bound, None, None, f"{target}: {gate} not checked ({key} was not measured)"))
            continue
        ok = value >= bound if kind == "min" else value <= bound
        rel = ">=" if kind == "min" else "<="
        message = f"{target}: {key} {value:.6g}{unit} {'meets' if ok else 'fails'} {gate} ({rel} {bound:g}{unit})"
        verdicts.append(GateVerdict(gate, bound, value, ok, message))
    return verdicts


def evaluate(target: str, gates: Gates, measured: dict[str, float | None]) -> list[dict[str, Any]]:
    """``check`` as the manifest writes it: one dict per verdict."""
    return [v.to_dict() for v in check(target, gates, measured)]
