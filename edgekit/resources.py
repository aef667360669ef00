"""Where the bundled target profiles and sample data live, in a wheel or in a source checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _bundled(name: str) -> Path:
    # A wheel carries the top-level folders inside the package as _data/<name>; a checkout has them beside it.
    inside = _PACKAGE / "_data" / name
    return inside if inside.is_dir() else _PACKAGE.parent / name


def targets_dir() -> Path:
    return _bundled("targets")


def calibration_dir() -> Path:
    return _bundled("calibration")
