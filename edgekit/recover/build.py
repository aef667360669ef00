"""Recovery in the build: after validation, every failed INT8 target whose recovery is enabled is searched
(search.py), its best candidate written in place of its artifact, and re-validated by the validator itself, so the
manifest's numbers, gates and status are the validator's and the sha256 is the written file's."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

from edgekit.backends import get_backend
from edgekit.backends.base import CalibrationSettings, Runner
from edgekit.backends.onnx.qdq import QdqSettings
from edgekit.config import RecoverSettings
from edgekit.console import Progress
from edgekit.recover.candidates import Spec, StaticQdq
from edgekit.recover.meter import Meter
from edgekit.recover.search import Search, write_choice
from edgekit.types import Artifact, ArtifactFile, FeedSource, Reference, SourceModel, TargetProfile
from edgekit.validate.measure import ReferenceTiming, measure, timed_on_device
from edgekit.validate.run import ValidationData

BASELINE = "ort-fp32"


PROXY_NOTES = ("host_proxy", "measured_on", "proxy_method", "engine", "optimization_profile", "tensorrt_api")


def supported(profile: TargetProfile, recipe: Any, artifact: Artifact) -> bool:
    """Which targets recovery can rebuild: static QDQ on ONNX Runtime (ort-int8 and profiles like it), and
    tensorrt-int8's QDQ ONNX where it is measured on its host proxy (no engine built here)."""
    if profile.backend == "ort":
        return getattr(recipe, "mode", None) == "static"
    return (profile.backend == "tensorrt" and bool(artifact.proxy) and len(artifact.files) == 1
            and getattr(recipe, "calibrator", "") == "none")


def _builder(profile: TargetProfile, recipe: Any, reference: Reference, calibration: FeedSource,
             settings: CalibrationSettings, tmp: Path) -> StaticQdq:
    if profile.backend == "tensorrt":
        qdq = QdqSettings(activation_type="int8", reduce_range=False, symmetric_activations=True)
        return StaticQdq(reference.path, calibration, reference.inputs, settings, qdq, tmp, tuple(recipe.keep_fp32_ops))
    return StaticQdq(reference.path, calibration, reference.inputs, settings, recipe.qdq(), tmp)


def _loader(name: str, profile: TargetProfile, reference: Reference) -> Callable[[Path], Runner]:
    """A candidate file run as the target's backend runs its artifact (tensorrt-int8: its host proxy)."""
    backend = get_backend(profile.backend)
    return lambda path: backend.load(Artifact(name, (ArtifactFile.of(path, path.parent),), {}), path.parent, profile, reference)


def recover_build(root: Path, manifest: Any, profiles: Mapping[str, TargetProfile], recipes: Mapping[str, Any],
                  settings: Mapping[str, RecoverSettings | None], calibration: FeedSource | None,
                  calibration_settings: CalibrationSettings, reference: Reference, torch_source: SourceModel | None,
                  data: ValidationData, shapes: dict[str, tuple[int, ...]], task: str | None, progress: Progress,
                  timing: ReferenceTiming = ReferenceTiming()) -> list[str]:
    """Recover every failed INT8 target of ``manifest`` (recorded in its results); returns the targets rewritten."""
    changed = []
    for name, result in manifest.results.items():
        profile = profiles[name]
        chosen = settings.get(name) or RecoverSettings()
        if profile.precision != "int8" or result.status != "failed" or result.artifact is None or not chosen.enabled:
            continue
        if not supported(profile, recipes.get(name), result.artifact) or calibration is None:
            progress.note(f"{name}: failed its gates; automatic recovery covers static QDQ INT8 (ort-int8, tensorrt-int8 "
                          "on its host proxy) so far, not this target")
            continue
        base = manifest.results.get(BASELINE)
        baseline = root / base.artifact.files[0].path if base is not None and base.artifact is not None else reference.path
        cosine = result.metrics.primary["worst"]["cosine"] if result.metrics is not None else float("nan")
        progress.step(f"recovering {name} (cosine {cosine:.6f} misses a gate): searching for up to {chosen.budget_s:g} s")
        with tempfile.TemporaryDirectory(prefix="edgekit-recover-") as tmp:
            builder = _builder(profile, recipes[name], reference, calibration, calibration_settings, Path(tmp))
            meter = Meter(name, profile, reference, torch_source, data, shapes, task, baseline, _loader(name, profile, reference),
                          timed_on_device(profile, result.artifact))
            try:
                outcome = Search(name, result, builder, meter, Spec(calibration_settings.method), chosen.budget_s,
                                 progress, Path(tmp)).run()
            finally:
                meter.close()
            result.recovery = outcome.recovery
            if outcome.path is not None:
                dst = root / result.artifact.files[0].path
                write_choice(outcome, dst)
                a = result.artifact
                picked = outcome.recovery.attempts[outcome.recovery.chosen or 0]
                kept = {k: a.notes[k] for k in PROXY_NOTES if k in a.notes}
                notes = {**outcome.notes, **kept, "recovery": f"{picked.step}: {picked.change}"}
                result.artifact = Artifact(name, (ArtifactFile.of(dst, root),), notes, a.measured_on, a.proxy, a.warnings)
                changed.append(name)
        r = result.recovery
        verdict = "meets every gate" if r.met else "still misses a gate (the best candidate is kept)"
        progress.note(f"{name}: recovery tried {len(r.attempts) - 1} candidate(s) in {r.seconds:.0f} s; {verdict}")
    if changed:  # the validator measures what was written, with the FP32 baseline timed beside it
        names = [*changed, *([BASELINE] if BASELINE in manifest.results and manifest.results[BASELINE].artifact else [])]
        artifacts = {n: manifest.results[n].artifact for n in names}
        measured = measure(root, artifacts, reference, torch_source, {n: profiles[n] for n in names}, data, shapes, task,
                           progress, timing)
        for n in changed:
            measured.targets[n].apply(manifest.results[n], unavailable=artifacts[n].proxy)
    return changed
