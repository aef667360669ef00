"""The backend interface: availability, build an artifact, load it into a runner.

A backend is one folder in ``edgekit/backends/`` with its Backend in ``<name>/backend.py``, registered by name in
``__init__.py``; ``ort/backend.py`` is the smallest real one and its documentation.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgekit.errors import DataError
from edgekit.types import Artifact, Feed, FeedSource, Reference, SourceModel, TargetProfile, TensorSpec


@dataclass(frozen=True)
class Availability:
    """Whether a backend can run here; ``reason`` and ``hint`` say why not and what to do."""

    ok: bool
    reason: str = ""
    hint: str = ""
    proxy: bool = False  # not ok, but a host proxy of the artifact can still be built and measured here


@dataclass(frozen=True)
class CalibrationSettings:
    """How INT8 activations are calibrated; shared by every INT8 target."""

    method: str = "minmax"  # minmax | entropy | percentile | mse
    samples: int = 256
    percentile: float = 99.999
    batch_size: int = 32
    cache_dir: str = ""  # the activation statistics cache (backends/onnx/stats_cache.py); "": none. Not a setting:
    # where statistics are kept changes no result, so no key includes it


@dataclass
class BuildContext:
    """What a backend gets to build one target."""

    profile: TargetProfile
    reference: Reference
    source: SourceModel
    target_dir: Path  # an empty folder of the output directory, owned by this target
    root: Path  # the output directory; artifact paths are relative to it
    calibration: FeedSource | None
    calibration_settings: CalibrationSettings
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # the config's input shapes (opt sizes)
    recipe: Any = None  # the profile's recipe as parsed once by ``Backend.parse_recipe`` (in plan())


class Runner(abc.ABC):
    """Runs one loaded artifact. ``run`` checks the feed; subclasses write only ``_run``."""

    def __init__(self, inputs: tuple[TensorSpec, ...], outputs: tuple[str, ...]):
        self.inputs = inputs
        self.outputs = outputs

    def run(self, feed: Feed) -> dict[str, np.ndarray]:
        missing = [s.name for s in self.inputs if s.name not in feed]
        if missing:
            raise DataError(f"feed lacks input(s) {missing}; the model takes {[s.name for s in self.inputs]}")
        ordered = {s.name: np.ascontiguousarray(feed[s.name], dtype=s.dtype) for s in self.inputs}
        outs = self._run(ordered)
        return {name: np.asarray(out) for name, out in zip(self.outputs, outs)}

    @abc.abstractmethod
    def _run(self, feed: Feed) -> list[np.ndarray]:
        """Run one batch; return the outputs in ``self.outputs`` order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions, engines, device memory."""


class Backend(abc.ABC):
    """One runtime that turns the reference into artifacts and runs them."""

    name: str = ""

    @abc.abstractmethod
    def availability(self, profile: TargetProfile, source: SourceModel | None = None) -> Availability:
        """Cheap, never raises: can ``profile`` be built and run on this host (for this source model)?"""

    def parse_recipe(self, profile: TargetProfile) -> Any:
        """The profile's ``[recipe]`` as this backend's typed recipe (plan() calls it before any work);
        ProfileError naming the nearest valid key."""
        return dict(profile.recipe)

    def recipe_for(self, ctx: BuildContext) -> Any:
        """The recipe plan() parsed into ``ctx``; parsed here only when a caller built the context by hand."""
        return ctx.recipe if ctx.recipe is not None else self.parse_recipe(ctx.profile)

    def needs_calibration(self, profile: TargetProfile, recipe: Any) -> bool:
        """Whether building this target requires calibration data (checked in plan(), before any work)."""
        return profile.precision == "int8"

    def uses_calibration(self, profile: TargetProfile, recipe: Any) -> bool:
        """Whether the build reads calibration data when the config has some (dynamic INT8 smoothing does)."""
        return profile.precision == "int8"

    @abc.abstractmethod
    def build(self, ctx: BuildContext) -> Artifact:
        """Write the artifact's files into ``ctx.target_dir`` (atomically) and describe them."""

    @abc.abstractmethod
    def load(self, artifact: Artifact, root: Path, profile: TargetProfile, reference: Reference) -> Runner:
        """Load a built (and sha256-checked) artifact for validation on this backend."""

    def versions(self) -> Mapping[str, Any]:
        """Versions of the libraries this backend uses, for the manifest."""
        return {}
