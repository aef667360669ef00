"""The ``[recipe]`` of a ``tensorrt`` profile, parsed once, and the shape of one engine input's optimization profile."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from edgekit.backends.tensorrt.fp16 import DEFAULT_KEEP_FP32_OPS
from edgekit.errors import ProfileError
from edgekit.tables import unknown_key
from edgekit.types import TargetProfile

CALIBRATORS = ("none", "entropy")

_DIM_KEYS = ("min", "opt", "max")

ProfileShapes = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
"""(min, opt, max) shape of one engine input."""


@dataclass(frozen=True)
class TensorRTRecipe:
    """The ``[recipe]`` of a ``tensorrt`` profile."""

    workspace_mb: int = 1024
    builder_optimization_level: int = 3
    timing_cache: str = "~/.cache/edgekit/tensorrt/timing.cache"  # "" turns the persistent cache off
    keep_fp32_ops: tuple[str, ...] = DEFAULT_KEEP_FP32_OPS  # fp16: stay FP32; int8: left unquantized
    keep_fp32_nodes: tuple[str, ...] = ()  # fp16 only
    calibrator: str = "none"  # int8 only; "entropy": TensorRT 10's implicit calibration, never required
    calibration_cache: str = ""  # with calibrator = "entropy"; "" -> calibration.cache beside the engine
    shapes: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # dim name -> {min, opt, max}

    @classmethod
    def parse(cls, profile: TargetProfile) -> "TensorRTRecipe":
        where = f"target '{profile.name}' recipe"
        known = tuple(cls.__dataclass_fields__)
        raw = dict(profile.recipe)
        for key in raw:
            if key not in known:
                raise unknown_key(key, known, where, ProfileError)
        if profile.precision not in ("fp16", "int8"):
            raise ProfileError(f"{where}: a tensorrt target has precision fp16 or int8, got {profile.precision!r}")
        for key, low, high in (("workspace_mb", 1, None), ("builder_optimization_level", 0, 5)):
            if key in raw:
                _int_in(raw[key], low, high, f"{where} key '{key}'")
        for key in ("timing_cache", "calibrator", "calibration_cache"):
            if key in raw and not isinstance(raw[key], str):
                raise ProfileError(f"{where} key '{key}' must be a string, got {raw[key]!r}")
        for key in ("keep_fp32_ops", "keep_fp32_nodes"):
            if key in raw:
                if not isinstance(raw[key], list) or not all(isinstance(v, str) for v in raw[key]):
                    raise ProfileError(f"{where} key '{key}' must be a list of strings, got {raw[key]!r}")
                raw[key] = tuple(raw[key])
        if raw.get("keep_fp32_nodes") and profile.precision != "fp16":
            raise ProfileError(f"{where} key 'keep_fp32_nodes' applies to precision fp16 only (int8 keeps op types)")
        if raw.get("calibrator", "none") not in CALIBRATORS:
            raise ProfileError(f"{where} key 'calibrator' = {raw['calibrator']!r}; expected one of {', '.join(CALIBRATORS)}")
        if raw.get("calibrator", "none") != "none" and profile.precision != "int8":
            raise ProfileError(f"{where} key 'calibrator' applies to precision int8 only")
        shapes = raw.get("shapes", {})
        if not isinstance(shapes, dict):
            raise ProfileError(f"{where} key 'shapes' must be a table of dimension name -> {{min, opt, max}}")
        for dim, bounds in shapes.items():
            if not isinstance(bounds, dict):
                raise ProfileError(f"{where} key 'shapes.{dim}' must be a table such as {{ min = 1, opt = 8, max = 32 }}")
            for k, v in bounds.items():
                if k not in _DIM_KEYS:
                    raise ProfileError(f"unknown key 'shapes.{dim}.{k}' in {where}; valid keys: min, opt, max")
                _int_in(v, 1, None, f"{where} key 'shapes.{dim}.{k}'")
            present = [bounds[k] for k in _DIM_KEYS if k in bounds]
            if present != sorted(present):
                raise ProfileError(f"{where} key 'shapes.{dim}' needs min <= opt <= max, got {bounds}")
        return cls(**raw)


def _int_in(value: Any, low: int, high: int | None, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
        raise ProfileError(f"{where} must be {bound}, got {value!r}")
    return value
