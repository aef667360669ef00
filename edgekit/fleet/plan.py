"""Before any task runs: check every build (pipeline.plan), key every step by its inputs, and decide per pair what
is cached and what must be rebuilt, and why (the words ``--dry-run`` prints)."""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.console import Progress
from edgekit.fleet.cache import Cache, Entry, changed, digest, step_key
from edgekit.fleet.spec import FleetBuild
from edgekit.fsutil import file_sha256
from edgekit.pipeline import BuildOptions, Plan, plan
from edgekit.profiles import profile_to_dict
from edgekit.validate.measure import ReferenceTiming


@dataclass
class PairPlan:
    """One (model, target): its step keys and inputs, the cached entries found, and what it needs."""

    model: str
    target: str
    components: dict[str, str]  # every input of the measure step, by name (the artifact's are a subset)
    artifact_key: str
    measure_key: str
    unavailable: str = ""  # non-empty: why the target cannot run here
    proxy: bool = False  # unavailable, but a host proxy is built and measured
    artifact: Entry | None = None
    measured: Entry | None = None
    why: str = ""  # why it is rebuilt / re-measured ("" when cached)
    planned: str = ""  # the action decided before the run (``action`` changes as the run fills the cache)

    @property
    def skipped(self) -> bool:
        return bool(self.unavailable) and not self.proxy

    @property
    def needs_task(self) -> bool:
        return not self.skipped and (self.artifact is None or self.measured is None)

    @property
    def action(self) -> str:
        if self.skipped:
            return "unavailable"
        if self.artifact is None:
            return "build"
        return "measure" if self.measured is None else "cached"


@dataclass
class ModelPlan:
    build: FleetBuild
    plan: Plan
    components: dict[str, str]
    reference_key: str
    reference: Entry | None = None
    reference_why: str = ""
    exported: bool = False  # the reference was made by this run (not taken from the cache)
    pairs: list[PairPlan] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.build.name

    @property
    def needs_prepare(self) -> bool:
        return self.reference is None and any(not p.skipped for p in self.pairs)


def source_digest(source: str) -> str:
    """sha256 of the model's code: the .py, .onnx or example file a source names (a module: its file)."""
    if source.startswith("example:"):
        import edgekit.examples

        folder = Path(edgekit.examples.__file__).parent
        name = source.split(":", 1)[1]
        return digest([file_sha256(p) for p in sorted(folder.glob(f"{name}.*")) if p.is_file()])
    if source.endswith(".onnx"):
        return file_sha256(Path(source))
    if ".py:" in source:
        return file_sha256(Path(source.rsplit(":", 1)[0]))
    spec = importlib.util.find_spec(source.split(":", 1)[0])
    return file_sha256(Path(spec.origin)) if spec is not None and spec.origin and Path(spec.origin).is_file() else source


def code_versions() -> dict[str, str]:
    """edgekit's and every backend's versions, and a digest of edgekit's own code (an edit is a new version)."""
    import edgekit
    from edgekit.manifest import library_versions

    package = Path(edgekit.__file__).parent
    code = digest([(str(p.relative_to(package)), file_sha256(p)) for p in sorted(package.rglob("*.py"))])
    return {**library_versions(), "edgekit code": code}


def plan_model(build: FleetBuild, cache: Cache, versions: dict[str, str], timing: ReferenceTiming, strict: bool,
               progress: Progress) -> ModelPlan:
    """Check one build's every input (as ``edgekit build`` does before any work) and key its steps."""
    cfg = build.cfg
    p = plan(cfg, BuildOptions(out=Path("."), strict=strict), progress)
    m = cfg.model
    components = {
        "model code": source_digest(m.source),
        "weights": file_sha256(m.weights) if m.weights is not None else "none",
        "model": p.source.fingerprint,
        "model settings": digest({"source": m.source.rsplit(":", 1)[-1], "inputs": [dataclasses.asdict(i) for i in m.inputs],
                                  "outputs": m.outputs, "task": m.task, "shapes": p.shapes}),
        "export settings": digest(dataclasses.asdict(cfg.export)),
        "versions": digest(versions),
    }
    mp = ModelPlan(build, p, components, step_key("reference", components))
    mp.reference, mp.reference_why = cache.check(mp.reference_key)
    from edgekit.backends import get_backend
    from edgekit.jobs import calibration_settings

    calibration = p.calibration.fingerprint() if p.calibration is not None else "none"
    validation = p.validation.fingerprint() if p.validation is not None else "none (seeded random inputs)"
    for name, profile in p.profiles.items():
        backend = get_backend(profile.backend)
        uses = cfg.calibration is not None and backend.uses_calibration(profile, p.recipes[name])
        art = {**components, "profile": digest(profile_to_dict(profile)),
               "calibration data": calibration if uses else "none",
               "calibration settings": digest({k: v for k, v in dataclasses.asdict(calibration_settings(cfg.calibration)).items()
                                                         if k != "cache_dir"}) if uses else "none"}
        v = cfg.validation
        full = {**art, "validation data": validation,
                "validation settings": digest([v.samples, v.labels, v.batch_size] if v else None),
                "timing": digest(dataclasses.asdict(timing))}
        pair = PairPlan(build.name, name, full, step_key("artifact", art), step_key("measure", full),
                        p.unavailable.get(name, ""), name in p.proxies)
        if not pair.skipped:
            pair.artifact, why_a = cache.check(pair.artifact_key)
            pair.measured, why_m = cache.check(pair.measure_key)
            if pair.needs_task:
                what = changed(cache.last_inputs(build.name, name), full)
                pair.why = what or (why_a if pair.artifact is None else why_m)
        pair.planned = pair.action
        mp.pairs.append(pair)
    return mp


def describe(mp: ModelPlan) -> list[str]:
    """``--dry-run``'s lines for one model: each pair's action and the inputs that changed."""
    lines = []
    if mp.reference is None and mp.needs_prepare:
        lines.append(f"{mp.name}: export + simplify (reference {mp.reference_why})")
    for pair in mp.pairs:
        label = f"{mp.name} x {pair.target}"
        if pair.planned == "unavailable":
            lines.append(f"{label}: unavailable here ({pair.unavailable})")
        elif pair.planned == "cached":
            lines.append(f"{label}: cached")
        else:
            verb = "rebuild" if pair.planned == "build" else "re-measure"
            lines.append(f"{label}: {verb} ({pair.why})")
    return lines


def summary(models: list[ModelPlan]) -> dict[str, Any]:
    pairs = [p for m in models for p in m.pairs]
    return {"pairs": len(pairs), "cached": sum(p.planned == "cached" for p in pairs),
            "rebuild": sum(p.planned == "build" for p in pairs), "re-measure": sum(p.planned == "measure" for p in pairs),
            "unavailable": sum(p.planned == "unavailable" for p in pairs)}
