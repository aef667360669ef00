"""Backends by name. Adding a backend = one folder here (its Backend in ``<name>/backend.py``, registered below) + one
profile in targets/; tests/test_contract.py then covers it."""

from __future__ import annotations

import importlib

from edgekit.backends.base import Availability, Backend, BuildContext, CalibrationSettings, Runner

# name -> "module:class"; modules are imported on first use so optional runtimes stay optional.
_REGISTRY = {
    "ort": "edgekit.backends.ort.backend:OrtBackend",
    "tensorrt": "edgekit.backends.tensorrt.backend:TensorRTBackend",
    "torch_ao": "edgekit.backends.torch_ao.backend:TorchAoBackend",
}

__all__ = ["Availability", "Backend", "BuildContext", "CalibrationSettings", "Runner", "get_backend", "names", "versions"]


def names() -> tuple[str, ...]:
    """Every backend name a profile may give (``backend = "..."``); profiles.py validates against this."""
    return tuple(sorted(_REGISTRY))


def versions() -> dict[str, str]:
    """Each backend's runtime versions, for the manifest; a backend that cannot be imported here answers nothing."""
    found: dict[str, str] = {}
    for name in names():
        try:
            found.update({k: str(v) for k, v in get_backend(name).versions().items()})
        except Exception:  # noqa: BLE001 - an absent runtime is recorded by the caller as "not installed"
            continue
    return found


def get_backend(name: str) -> Backend:
    module, _, cls = _REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), cls)()
