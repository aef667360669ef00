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
from edgekit.backends.onnx.census import onnx_census
from edgekit.recover.candidates import Spec, StaticQdq
from edgekit.recover.meter import Meter
from edgekit.recover.search import Search, write_choice
from edgekit.types import Artifact, ArtifactFile, FeedSource, LayerCensus, Reference, SourceModel, TargetProfile
from edgekit.validate.measure import ReferenceTiming, measure, timed_on_device
from edgekit.validate.run import ValidationData

BASELINE = "ort-fp32"


PROXY_NOTES = ("host_proxy", "measured_on", "proxy_method", "engine", "optimization_profile", "tensorrt_api")


def supported(profile: TargetProfile, recipe: Any, artifact: Artifact) -> bool:
    """Which targets recovery can rebuild: static and dynamic INT8 on ONNX Runtime (ort-int8, ort-int8-dynamic and
    profiles like them) in one file, tensorrt-int8's QDQ ONNX where it is measured on its host proxy (no engine built
    here), and the torch.ao targets (torch-fbgemm, torch-qnnpack)."""
    if profile.backend == "ort":
        return getattr(recipe, "mode", None) in ("static", "dynamic") and len(artifact.files) == 1
    if profile.backend == "torch_ao":
        return len(artifact.files) == 1
    return (profile.backend == "tensorrt" and bool(artifact.proxy) and len(artifact.files) == 1
            and getattr(recipe, "calibrator", "") == "none")


def needs_calibration(profile: TargetProfile, recipe: Any) -> bool:
    """Static INT8 candidates are calibrated; dynamic ones rank their layers on calibration data when there is some."""
    return getattr(recipe, "mode", "static") == "static"


def _builder(profile: TargetProfile, recipe: Any, reference: Reference, calibration: FeedSource | None,
             settings: CalibrationSettings, tmp: Path, source: SourceModel | None) -> Any:
    """The candidate builder of the target's backend family (recover/candidates.py, dynamic.py, torch_ao.py)."""
    if profile.backend == "torch_ao":
        from edgekit.recover.torch_ao import TorchAoBuilder

        assert source is not None, "torch.ao targets are built from a torch model"
        return TorchAoBuilder(profile, recipe, source, reference, calibration, settings, tmp)
    if profile.backend == "ort" and recipe.mode == "dynamic":
        from edgekit.recover.dynamic import DynamicBuilder

        return DynamicBuilder(reference.path, recipe, calibration, reference.inputs, settings, tmp, profile.runtime.threads,
                              profile.gates.min_int8_fraction or 0.0)
    assert calibration is not None
    if profile.backend == "tensorrt":
        qdq = QdqSettings(activation_type="int8", reduce_range=False, symmetric_activations=True)
        return StaticQdq(reference.path, calibration, reference.inputs, settings, qdq, tmp, tuple(recipe.keep_fp32_ops))
    return StaticQdq(reference.path, calibration, reference.inputs, settings, recipe.qdq(), tmp)


def _configured(profile: TargetProfile, recipe: Any, settings: CalibrationSettings) -> Any:
    """The spec of the build as configured: the search's starting point."""
    if profile.backend == "torch_ao":
        from edgekit.recover.torch_ao import TorchSpec

        return TorchSpec(settings.method)
    if profile.backend == "ort" and recipe.mode == "dynamic":
        from edgekit.recover.dynamic import DynamicSpec

        return DynamicSpec()
    return Spec(settings.method)


def _census(builder: Any, notes: Mapping[str, Any], path: Path) -> LayerCensus | None:
    """The INT8 layer census of the written candidate: from its build's notes, else counted in the ONNX file."""
    layers = LayerCensus.from_dict(notes.get("int8_layers"))
    if layers is None and path.suffix == ".onnx":
        
        layers = onnx_census(path)
    return layers


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
        recipe = recipes.get(name)
        if not supported(profile, recipe, result.artifact):
            progress.note(f"{name}: failed its gates; automatic recovery covers ort-int8, ort-int8-dynamic, torch-fbgemm, "
                          "torch-qnnpack and tensorrt-int8 on its host proxy (single-file artifacts), not this target")
            continue
        if calibration is None and needs_calibration(profile, recipe):
            progress.note(f"{name}: failed its gates; recovery rebuilds static INT8 with calibration data, and this "
                          "build has no [calibration] section")
            continue
        base = manifest.results.get(BASELINE)
        baseline = root / base.artifact.files[0].path if base is not None and base.artifact is not None else reference.path
        cosine = result.metrics.primary["worst"]["cosine"] if result.metrics is not None else float("nan")
        progress.step(f"recovering {name} (cosine {cosine:.6f} misses a gate): searching for up to {chosen.budget_s:g} s")
        with tempfile.TemporaryDirectory(prefix="edgekit-recover-") as tmp:
            builder = _builder(profile, recipe, reference, calibration, calibration_settings, Path(tmp), torch_source)
            meter = Meter(name, profile, reference, torch_source, data, shapes, task, baseline, _loader(name, profile, reference),
                          timed_on_device(profile, result.artifact), builder.census)
            try:
                outcome = Search(name, result, builder, meter, _configured(profile, recipe, calibration_settings),
                                 chosen.budget_s, progress, Path(tmp)).run()
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
                layers = _census(builder, notes, dst)
                if layers is not None:
                    notes["int8_layers"] = layers.to_dict()
                # a torch.ao candidate is a whole build (its notes say what it warns of); a QDQ one is the quantizer's notes
                fresh = profile.backend == "torch_ao"
                warnings = ((str(notes["warning"]),) if "warning" in notes else ()) if fresh else a.warnings
                result.artifact = Artifact(name, (ArtifactFile.of(dst, root),), notes, a.measured_on, a.proxy, warnings,
                                           layers)
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
