"""Recovery in the build: after validation, every failed INT8 target whose recovery is enabled is searched
(search.py), its best candidate written in place of its artifact, and re-validated by the validator itself, so the
manifest's numbers, gates and status are the validator's and the sha256 is the written file's."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping

from edgekit.backends.base import CalibrationSettings
from edgekit.config import RecoverSettings
from edgekit.console import Progress
from edgekit.recover.candidates import Spec, StaticQdq
from edgekit.recover.meter import Meter
from edgekit.recover.search import Search, write_choice
from edgekit.types import Artifact, ArtifactFile, FeedSource, Reference, SourceModel, TargetProfile
from edgekit.validate.measure import ReferenceTiming, measure
from edgekit.validate.run import ValidationData

BASELINE = "ort-fp32"


def supported(profile: TargetProfile, recipe: Any) -> bool:
    """Which targets recovery can rebuild: static QDQ on ONNX Runtime (ort-int8 and profiles like it)."""
    return profile.backend == "ort" and getattr(recipe, "mode", None) == "static"


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
        if not supported(profile, recipes.get(name)) or calibration is None:
            progress.note(f"{name}: failed its gates; automatic recovery covers static ONNX Runtime INT8 (ort-int8) "
                          "so far, not this target")
            continue
        base = manifest.results.get(BASELINE)
        baseline = root / base.artifact.files[0].path if base is not None and base.artifact is not None else reference.path
        cosine = result.metrics.primary["worst"]["cosine"] if result.metrics is not None else float("nan")
        progress.step(f"recovering {name} (cosine {cosine:.6f} misses a gate): searching for up to {chosen.budget_s:g} s")
        with tempfile.TemporaryDirectory(prefix="edgekit-recover-") as tmp:
            recipe = recipes[name]
            builder = StaticQdq(reference.path, calibration, reference.inputs, calibration_settings, recipe.qdq(), Path(tmp))
            meter = Meter(name, profile, reference, torch_source, data, shapes, task, baseline)
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
                notes = {**outcome.notes, "recovery": f"{picked.step}: {picked.change}"}
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
