"""The two kinds of fleet task, as plain functions a Ray worker runs: prepare one model, build + measure one pair.

Each task works in a temporary folder of its own and returns its output files as bytes (Ray carries them back to
the driver as objects), so the workers need no shared file system for outputs: only the fleet's input files
(model code, weights, data) must be readable at the same paths on every node. A worker re-opens the model and
checks it against the driver's fingerprint, as ``edgekit.jobs`` workers do.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.config import BuildConfig
from edgekit.errors import EdgekitError
from edgekit.types import Artifact, ArtifactFile, SourceModel, TargetProfile, TargetResult
from edgekit.validate.measure import ReferenceTiming

REFERENCE_FILE = "reference/model.onnx"


@dataclass(frozen=True)
class ModelInputs:
    """What every task of one model receives: its config, the driver's model fingerprint, the example shapes."""

    name: str
    cfg: BuildConfig
    fingerprint: str
    shapes: dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class PairJob:
    """One (model, target) task: build the artifact unless ``artifact`` (a cached one) is given, then measure it."""

    model: ModelInputs
    profile: TargetProfile
    unavailable: str  # non-empty for a host proxy: why the numbers are not the target's own
    artifact: dict[str, Any] | None  # a cached artifact record (artifact_to_record) whose files come in artifact_files
    measure: bool
    timing: ReferenceTiming


def artifact_to_record(a: Artifact) -> dict[str, Any]:
    return {"target": a.target, "files": [vars(f) for f in a.files], "notes": a.notes, "measured_on": a.measured_on,
            "proxy": a.proxy, "warnings": list(a.warnings)}


def artifact_from_record(d: dict[str, Any]) -> Artifact:
    return Artifact(d["target"], tuple(ArtifactFile(**f) for f in d["files"]), dict(d["notes"]), d["measured_on"],
                    d["proxy"], tuple(d["warnings"]))


def _open_model(m: ModelInputs) -> SourceModel:
    from edgekit.model import load_model

    source = load_model(m.cfg.model)
    if source.fingerprint != m.fingerprint:
        raise EdgekitError(f"fleet build '{m.name}': the model {m.cfg.model.source} loads differently on this worker "
                           "than on the driver (its files differ here); give every node the same files")
    return source


def _files_under(root: Path, folder: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / folder).rglob("*")) if p.is_file()}


def prepare_model(m: ModelInputs) -> dict[str, Any]:
    """Load the model, export it to ONNX and simplify it: the reference every target of the model is built from."""
    from edgekit.export import make_reference

    start = time.perf_counter()
    source = _open_model(m)
    with tempfile.TemporaryDirectory(prefix="edgekit-fleet-") as tmp:
        root = Path(tmp)
        reference = make_reference(source, m.shapes, m.cfg.export, root / REFERENCE_FILE)
        return {"reference": reference.to_dict(root), "files": _files_under(root, "reference"),
                "seconds": round(time.perf_counter() - start, 3)}


def build_pair(job: PairJob, prepared: dict[str, Any], artifact_files: dict[str, bytes] | None) -> dict[str, Any]:
    """Build one target from the model's reference (unless cached) and measure it; return files and records.

    A backend failure is returned as ``error`` (the other tasks go on); bad input raises, as in ``edgekit build``."""
    from edgekit.jobs import TargetJob, build_target, calibration_settings
    from edgekit.types import Reference
    from edgekit.validate.verdict import target_status

    m, profile, name = job.model, job.profile, job.profile.name
    source = _open_model(m)
    with tempfile.TemporaryDirectory(prefix="edgekit-fleet-") as tmp:
        root = Path(tmp)
        _write(root, prepared["files"])
        reference = Reference.from_dict(prepared["reference"], root)
        (root / name).mkdir(parents=True, exist_ok=True)
        out: dict[str, Any] = {"built": job.artifact is None}
        if job.artifact is None:
            calibration = _calibration(m.cfg, source, profile)
            settings = calibration_settings(m.cfg.calibration)
            built = build_target(TargetJob(profile, reference, root / name, root, settings, m.shapes), source, calibration)
            if built.artifact is None:
                return {**out, "error": built.error}
            artifact, seconds = built.artifact, built.seconds
            out["files"] = {f.path: (root / f.path).read_bytes() for f in artifact.files}
        else:
            _write(root, artifact_files or {})
            artifact, seconds = artifact_from_record(job.artifact), job.artifact.get("seconds")
        out["artifact"] = {**artifact_to_record(artifact), "seconds": seconds}
        status, reason = target_status(unavailable=job.unavailable)
        result = TargetResult(name, status, reason, artifact, build_seconds=seconds, device=profile.device)
        if job.measure:
            out.update(_measure(root, m, source, reference, profile, artifact, result, job.timing))
        return out


def _write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def _calibration(cfg: BuildConfig, source: SourceModel, profile: TargetProfile) -> Any:
    from edgekit.backends import get_backend
    from edgekit.data import open_feed

    backend = get_backend(profile.backend)
    if cfg.calibration is None or not backend.uses_calibration(profile, backend.parse_recipe(profile)):
        return None
    return open_feed(cfg.calibration, source.inputs, "calibration")


def _measure(root: Path, m: ModelInputs, source: SourceModel, reference: Any, profile: TargetProfile,
             artifact: Artifact, result: TargetResult, timing: ReferenceTiming) -> dict[str, Any]:
    """The validator on this one artifact, against the references, timed with them (interleaved) in this task."""
    from edgekit.console import Silent
    from edgekit.data import open_feed
    from edgekit.manifest import result_to_dict
    from edgekit.validate.measure import measure
    from edgekit.validate.run import validation_data

    cfg = m.cfg
    feed = open_feed(cfg.validation, reference.inputs, "validation") if cfg.validation else None
    data = validation_data(feed, cfg.validation, reference.inputs, m.shapes)
    torch_source = source if source.is_torch else None
    measured = measure(root, {profile.name: artifact}, reference, torch_source, {profile.name: profile}, data,
                       m.shapes, cfg.model.task, Silent(), timing)
    measured.targets[profile.name].apply(result, unavailable=artifact.proxy)
    return {"result": result_to_dict(result), "validation": measured.validation, "references": measured.references}

