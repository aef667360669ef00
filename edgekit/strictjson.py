"""Strict JSON (no NaN/Infinity, which JSON.parse and strict parsers refuse) for every file edgekit writes.

A non-finite float under a dict key ``k`` is written as ``"k": null`` plus ``"k_nonfinite": "+inf"`` (or
``"-inf"``, ``"nan"``): an identical output's SQNR reads ``"sqnr_db": null, "sqnr_db_nonfinite": "+inf"``.
``restore`` turns that back into the float when edgekit reads its own files, so gates and reports see the number.
A non-finite float inside a list becomes ``null`` (no key to flag it beside).
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

SUFFIX = "_nonfinite"


def _flag(value: float) -> str:
    return "nan" if math.isnan(value) else ("+inf" if value > 0 else "-inf")


def encode(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced as the module docstring says (a new object; ``obj`` untouched)."""
    if isinstance(obj, dict):
        out: dict[Any, Any] = {}
        for key, value in obj.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None
                out[f"{key}{SUFFIX}"] = _flag(value)
            else:
                out[key] = encode(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [None if isinstance(v, float) and not math.isfinite(v) else encode(v) for v in obj]
    return obj


def restore(obj: Any) -> Any:
    """The inverse of ``encode`` for dicts: ``"k": null`` with its ``k_nonfinite`` flag is the float again."""
    if isinstance(obj, dict):
        out: dict[Any, Any] = {}
        for key, value in obj.items():
            flag = obj.get(f"{key}{SUFFIX}") if isinstance(key, str) else None
            if value is None and flag in ("+inf", "-inf", "nan"):
                out[key] = {"+inf": math.inf, "-inf": -math.inf, "nan": math.nan}[flag]
            elif isinstance(key, str) and key.endswith(SUFFIX) and obj.get(key[: -len(SUFFIX)], 0) is None:
                continue
            else:
                out[key] = restore(value)
        return out
    if isinstance(obj, list):
        return [restore(v) for v in obj]
    return obj


def dumps(obj: Any, default: Callable[[Any], Any] | None = None, **kwargs: Any) -> str:
    """``json.dumps`` of ``encode(obj)`` that raises rather than write NaN/Infinity (``default`` converts first)."""
    if default is not None:
        obj = json.loads(json.dumps(obj, default=default))  # numpy scalars, paths, ... -> plain values
    return json.dumps(encode(obj), allow_nan=False, **kwargs)


def _refuse(name: str) -> Any:
    raise ValueError(f"not strict JSON: {name}")


def loads_strict(text: str) -> Any:
    """``json.loads`` that refuses NaN/Infinity/-Infinity (what a strict parser does)."""
    return json.loads(text, parse_constant=_refuse)
