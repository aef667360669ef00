"""Build the targets: one at a time in this process, or in N worker processes (``--jobs N``).

A worker gets only picklable data (the profile, the reference, the model and calibration config sections) and
re-opens the model and the data itself; it runs the same ``build_target`` as the one-process path, so the
artifacts are byte for byte the same.
"""

from __future__ import annotations

import contextlib
import io
import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from edgekit.backends import BuildContext, CalibrationSettings, get_backend
from edgekit.config import DataConfig, ModelConfig
from edgekit.console import silenced_fds
from edgekit.errors import EdgekitError
from edgekit.faults import raise_if_signalled, write_fault
from edgekit.types import Artifact, FeedSource, Reference, SourceModel, TargetProfile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Built:
    """One target's build: its artifact, or the error that stopped it (``error`` non-empty), or why the target
    cannot be built for this model here (``unavailable``: a build step past protobuf's 2 GB limit)."""

    target: str
    artifact: Artifact | None
    error: str
    seconds: float
    unavailable: str = ""


@dataclass(frozen=True)
class TargetJob:
    """One target to build, as data a worker process can receive."""

    profile: TargetProfile
    reference: Reference
    target_dir: Path
    root: Path
    settings: CalibrationSettings
    shapes: dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class WorkerInputs:
    """What a worker re-opens: the model (checked against the parent's fingerprint) and the calibration data."""

    model: ModelConfig
    fingerprint: str
    calibration: DataConfig | None


def calibration_settings(cfg: DataConfig | None) -> CalibrationSettings:
    """The [calibration] section's settings every INT8 target shares (defaults without one), with the statistics
    cache folder its ``cache`` (or ``--calibration-cache``) names."""
    if cfg is None:
        return CalibrationSettings()
    from edgekit.backends.onnx.stats_cache import resolve_dir

    return CalibrationSettings(method=cfg.method, samples=cfg.samples or 256, percentile=cfg.percentile, batch_size=cfg.batch_size,
                               cache_dir=resolve_dir(cfg.cache))


def build_target(job: TargetJob, source: SourceModel, calibration: FeedSource | None, recipe: object = None) -> Built:
    """Build one target; a backend failure (not bad input, which raises) is this target's error."""
    start = time.perf_counter()
    backend = get_backend(job.profile.backend)
    ctx = BuildContext(job.profile, job.reference, source, job.target_dir, job.root, calibration, job.settings,
                       shapes=job.shapes, recipe=recipe)
    try:
        # libraries print to stdout (onnxruntime's "failed in shape inference") and C++ code to the descriptors:
        # kept out of the terminal, in the debug log
        with silenced_fds() as native, contextlib.redirect_stdout(io.StringIO()) as printed:
            artifact = backend.build(ctx)
    except EdgekitError:
        raise
    except Exception as exc:  # the other targets go on
        raise_if_signalled()  # not when it was Ctrl-C, re-raised by a library as its own error
        fault = write_fault(exc, job.root)
        if fault is not None:  # a full disk or read-only folder is the build's problem, not this target's
            raise fault from None
        log.debug("building %s failed", job.profile.name, exc_info=True)
        too_large = over_protobuf_limit(exc, job.reference)
        if too_large:
            return Built(job.profile.name, None, "", 0.0, unavailable=too_large)
        return Built(job.profile.name, None, f"build failed: {type(exc).__name__}: {str(exc)[:400]}", 0.0)
    for text in (printed.getvalue(), *native):
        if text.strip():
            log.debug("output of building %s:\n%s", job.profile.name, text)
    return Built(job.profile.name, artifact, "", round(time.perf_counter() - start, 3))


def over_protobuf_limit(exc: BaseException, reference: Reference) -> str:
    """Why a build step that failed serializing the model cannot work for this model ("" when that is not what
    happened): some steps (static INT8 range measurement, the FP16 rewrite) hold the whole model as one protobuf."""
    from google.protobuf.message import EncodeError

    from edgekit.onnxio import file_bytes, in_memory_ok

    text = str(exc)
    serializing = isinstance(exc, EncodeError) or ("2GB" in text and "protobuf" in text)
    if not serializing or in_memory_ok(reference.path):
        return ""
    size = file_bytes(reference.path) / 1e9
    return (f"not available at this size: this target's build holds the whole model as one protobuf, and the model "
            f"({size:.2f} GB with its external data) is over protobuf's 2 GB limit; docs/limits.md lists the targets "
            "that build models this large")


_worker: dict[str, object] = {}  # a worker process's opened model and calibration data, shared by its jobs


def _open_inputs(inputs: WorkerInputs) -> None:
    from edgekit.data import open_feed
    from edgekit.model import load_model

    source = load_model(inputs.model)
    if source.fingerprint != inputs.fingerprint:
        raise EdgekitError(f"the model {inputs.model.source} loads differently in a worker process "
                           "(its weights are not fixed); build with --jobs 1")
    _worker["source"] = source
    _worker["calibration"] = open_feed(inputs.calibration, source.inputs, "calibration") if inputs.calibration else None


def _build_in_worker(job: TargetJob, inputs: WorkerInputs) -> Built:
    if "source" not in _worker:  # the first job of this worker opens what all its jobs share
        _open_inputs(inputs)
    return build_target(job, _worker["source"], _worker["calibration"])  # type: ignore[arg-type]


def build_in_workers(jobs: list[TargetJob], inputs: WorkerInputs, workers: int) -> list[Built]:
    """``build_target`` for every job in ``workers`` spawned processes (spawn: safe with torch's threads)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(_build_in_worker, jobs, [inputs] * len(jobs)))
