"""The one place that knows the order of the steps; read top to bottom, it is the architecture.

    load config -> resolve profiles -> load model -> open data -> check availability
    -> (staging dir) compress -> export + simplify -> build each target -> validate -> recover failed INT8 targets
    -> manifest + report
    -> move staging into place
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.backends import get_backend
from edgekit.carry import Earlier, carry_into, check_inputs, earlier_targets
from edgekit.config import BuildConfig, DataConfig, parse_config, resolved_dict
from edgekit.console import Progress, Silent
from edgekit.data import check_label_classes, feed_warnings, open_feed, overlap, with_data
from edgekit.errors import ConfigError, ProfileError, TargetUnavailableError, UsageError
from edgekit.export import make_reference
from edgekit.faults import deferred, raise_if_signalled, write_fault
from edgekit.jobs import Built, TargetJob, WorkerInputs, build_in_workers, build_target, calibration_settings
from edgekit.fsutil import check_regular_file
from edgekit.manifest import (Manifest, input_hashes, library_versions, profile_from_dict, validation_record_dir,
                              write_outputs, write_validation_record)
from edgekit.hf import completed
from edgekit.model import load_model
from edgekit.outdir import check_output_dir, make_staging, promote
from edgekit.profiles import load_profile, profile_to_dict
from edgekit.tables import check_field_types
from edgekit.readback import changed_inputs, load_build, verify_build
from edgekit.recover.build import recover_build
from edgekit.types import FeedSource, Reference, SourceModel, TargetProfile, TargetResult
from edgekit.validate.measure import ReferenceTiming, measure, timed_on_device
from edgekit.validate.run import ValidationData, validation_data
from edgekit.validate.verdict import point_to_passing, target_status

REFERENCE_FILE = "reference/model.onnx"


@dataclass(frozen=True)
class BuildOptions:
    out: Path
    targets: tuple[str, ...] = ()
    validate: bool = True
    strict: bool = False
    jobs: int = 1  # targets built in this many worker processes (1: in this process)
    reference_timing: ReferenceTiming = ReferenceTiming()  # warm-up and runs of the onnx-fp32/torch-fp32 timing


@dataclass
class Plan:
    """Everything resolved and checked before any file is written."""

    cfg: BuildConfig
    profiles: dict[str, TargetProfile]
    source: SourceModel
    shapes: dict[str, tuple[int, ...]]
    calibration: FeedSource | None
    validation: FeedSource | None
    unavailable: dict[str, str] = field(default_factory=dict)
    proxies: set[str] = field(default_factory=set)  # unavailable, but a host proxy is built and measured
    train: FeedSource | None = None  # [train] data, opened only when a [[compress]] step trains
    recipes: dict[str, Any] = field(default_factory=dict)  # each target's recipe, parsed once by its backend
    data_warnings: list[str] = field(default_factory=list)  # the data sanity checks' findings (report + manifest)


# ---------------------------------------------------------------------------------------------- build


def plan(cfg: BuildConfig, options: BuildOptions, progress: Progress | None = None) -> Plan:
    """Resolve and check every input (config, profiles, model, data, availability); write nothing."""
    progress = progress or Silent()
    cfg = dataclasses.replace(cfg, model=completed(cfg.model))  # an hf: folder's inputs, outputs and task filled in
    chosen = _select_targets(cfg, options.targets)
    profiles = {name: load_profile(name, cfg.overrides.get(name)) for name in chosen}
    recipes = {name: get_backend(p.backend).parse_recipe(p) for name, p in profiles.items()}
    for name, recipe in recipes.items():  # a value of the wrong type (per_channel = "yes") names its key
        check_field_types(recipe, f"target '{name}' [recipe]", ProfileError)
    progress.step(f"loading model {cfg.model.source}")
    source = load_model(cfg.model)
    if source.weights_note:
        progress.note(f"weights {cfg.model.weights.name if cfg.model.weights else ''}: {source.weights_note}")
    shapes = _shapes(cfg, source)
    needs_calibration = [n for n, p in profiles.items() if get_backend(p.backend).needs_calibration(p, recipes[n])]
    if needs_calibration and cfg.calibration is None:
        raise ConfigError(f"target(s) {needs_calibration} need calibration data: add a [calibration] section with 'data'")
    # static INT8 needs calibration data; dynamic INT8 uses it when given (smoothing, FP32 fallback)
    uses_calibration = any(get_backend(p.backend).uses_calibration(p, recipes[n]) for n, p in profiles.items())
    calibration = open_feed(cfg.calibration, source.inputs, "calibration") if cfg.calibration and uses_calibration else None
    validation = open_feed(cfg.validation, source.inputs, "validation") if cfg.validation else None
    check_label_classes(validation, source)
    data_warnings = feed_warnings(calibration, validation)
    for warning in data_warnings:
        progress.warn(warning)
    if calibration is not None and validation is not None and not cfg.validation.allow_overlap:
        shared = overlap(calibration, validation)
        if shared:
            progress.warn(
                f"{shared} sample(s) appear in both [calibration] data and [validation] data; validation numbers "
                "on them are optimistic (set [validation] allow_overlap = true to silence this)"
            )
    train = None
    if cfg.compress:
        from edgekit.compress.run import prepare

        train = prepare(cfg, source, validation, progress)
    for key, note in source.notes.items():  # what loading decided (edgekit/hf.py): the head, pooling, attention
        progress.note(f"model {key}: {note}")
    unavailable, proxies = {}, set()
    for name, profile in profiles.items():
        avail = get_backend(profile.backend).availability(profile, source)
        if not avail.ok:
            reason = avail.reason + (f" ({avail.hint})" if avail.hint else "")
            if options.strict:
                raise TargetUnavailableError(f"target '{name}' cannot run on this host: {reason}")
            unavailable[name] = reason
            if avail.proxy:
                proxies.add(name)
    return Plan(cfg, profiles, source, shapes, calibration, validation, unavailable, proxies, train, recipes, data_warnings)


def build(cfg: BuildConfig, options: BuildOptions, progress: Progress | None = None) -> Manifest:
    """Build every selected target into ``options.out``; return the manifest (its exit_code is the verdict)."""
    progress = progress or Silent()
    if options.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {options.jobs}")
    out = check_output_dir(Path(options.out))
    p = plan(cfg, options, progress)
    earlier = earlier_targets(out, tuple(p.profiles), partial=bool(options.targets))
    if earlier is not None:
        check_inputs(earlier, _inputs(p), tuple(p.profiles))
        progress.note(f"keeping the earlier build's {', '.join(earlier.kept)} in {out} (sha256 re-checked)")
    staging: Path | None = None
    try:
        with deferred():  # a signal cannot leave a staging folder that nobody removes
            staging = make_staging(out)
        manifest = _build_into(staging, p, options, progress, earlier)
        raise_if_signalled()
        with deferred():  # the earlier build is either intact or replaced whole
            promote(staging, out)
    except BaseException as exc:
        if staging is not None:
            with deferred():
                shutil.rmtree(staging, ignore_errors=True)
        fault = write_fault(exc, out, staging) if isinstance(exc, Exception) else None
        if fault is not None:
            raise fault from None
        raise
    return manifest


def _build_into(root: Path, p: Plan, options: BuildOptions, progress: Progress, earlier: Earlier | None = None) -> Manifest:
    cfg, source = p.cfg, p.source
    compress_log: list[dict[str, Any]] = []
    if cfg.compress:
        from edgekit.compress.run import run_compress

        # from here on `source` is the compressed model: the reference is exported from it and the targets'
        # errors are measured against it; the compress log measures each step against `original`
        source, compress_log = run_compress(cfg, source, p.shapes, progress, train=p.train, validation=p.validation)
    progress.step(f"exporting to ONNX ({cfg.export.exporter} exporter) and simplifying")
    reference = make_reference(source, p.shapes, cfg.export, root / REFERENCE_FILE)
    results = _build_targets(root, p, reference, source, options.jobs, progress)
    manifest = Manifest(
        config=resolved_dict(cfg),
        inputs=_inputs(p),
        reference={**reference.to_dict(root), **({"model_notes": source.notes} if source.notes else {})},
        validation={},
        references={},
        results=results,
        profiles={n: profile_to_dict(pr) for n, pr in p.profiles.items()},
        strict=options.strict,
        compress=compress_log,
    )
    if options.validate:
        data = validation_data(p.validation, cfg.validation, source.inputs, p.shapes)
        _measure_into(root, manifest, reference, source if source.is_torch else None, p.profiles, data, p.shapes,
                      cfg.model.task, progress, options.reference_timing)
        recover_build(root, manifest, p.profiles, p.recipes, {n: o.recover for n, o in cfg.overrides.items()}, p.calibration,
                      calibration_settings(cfg.calibration), reference, source if source.is_torch else None, data, p.shapes,
                      cfg.model.task, progress, options.reference_timing)
        _name_passing_peers(manifest, p.profiles)
    else:
        manifest.validation = {"description": "not validated (--no-validate)", "samples": 0}
    if p.data_warnings:
        manifest.validation["data_warnings"] = list(p.data_warnings)
    if earlier is not None:
        carry_into(root, manifest, earlier, tuple(p.profiles))
    write_outputs(root, manifest)
    if cfg.bundle is not None:  # device bundles (golden I/O + verify.py), from the files just written
        from edgekit.bundle.make import write_bundles

        write_bundles(root, root / "bundles", cfg.bundle.targets, cfg.bundle.samples, progress, skip_unbuilt=True)
    return manifest


def _inputs(p: Plan) -> dict[str, Any]:
    """The manifest's ``inputs`` of this plan: the (uncompressed) model, weights, every data section, profiles."""
    hashes = input_hashes(p.source.fingerprint, p.cfg.model.weights,
                          {"calibration": p.calibration, "validation": p.validation, "train": p.train}, p.profiles)
    if p.source.weights_note:  # only when the weights file was not a plain state_dict of the model's keys
        hashes["weights_note"] = p.source.weights_note
    return hashes


def _build_targets(root: Path, p: Plan, reference: Reference, source: SourceModel, jobs: int, progress: Progress) -> dict[str, TargetResult]:
    """Build every available target (and every host proxy); in ``jobs`` worker processes when more than one."""
    settings = calibration_settings(p.cfg.calibration)
    todo: list[TargetJob] = []
    for name, profile in p.profiles.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        if name not in p.unavailable or name in p.proxies:
            todo.append(TargetJob(profile, reference, root / name, root, settings, p.shapes))
    if jobs > 1 and p.cfg.compress:
        progress.note("--jobs: a build with [[compress]] builds its targets one at a time (workers cannot re-make "
                      "the compressed model)")
    if jobs > 1 and len(todo) > 1 and not p.cfg.compress:
        progress.step(f"building {len(todo)} targets in {min(jobs, len(todo))} worker processes")
        inputs = WorkerInputs(p.cfg.model, source.fingerprint, p.cfg.calibration if p.calibration is not None else None)
        built = {b.target: b for b in build_in_workers(todo, inputs, min(jobs, len(todo)))}
    else:
        built = {}
        for job in todo:
            profile = job.profile
            progress.step(f"building {profile.name} ({profile.description or profile.backend})")
            built[profile.name] = build_target(job, source, p.calibration, p.recipes.get(profile.name))
    results: dict[str, TargetResult] = {}
    for name, profile in p.profiles.items():
        b: Built | None = built.get(name)
        if b is None or b.artifact is None:
            status, reason = target_status(b.error if b else "", unavailable=(b.unavailable if b else "") or p.unavailable.get(name, ""))
            results[name] = TargetResult(name, status, reason, device=profile.device)
            continue
        for warning in b.artifact.warnings:
            progress.warn(f"{name}: {warning}")
        status, reason = target_status(unavailable=p.unavailable.get(name, ""))
        results[name] = TargetResult(name, status, reason, b.artifact, build_seconds=b.seconds, device=profile.device)
    return results


# ----------------------------------------------------------------------------------------- revalidate


def revalidate(root: Path, targets: tuple[str, ...] = (), data: Path | None = None, progress: Progress | None = None,
               timing: ReferenceTiming = ReferenceTiming(), against_torch: bool = False) -> Manifest:
    """Check the build folder's manifest (structure, paths inside the folder) and every sha256, then measure the
    artifacts again against the ONNX reference inside the folder and rewrite manifest and report. With ``data`` the
    record goes beside the build's own, into validations/<data>-<hash>/ (the build's record is left as it is).
    ``against_torch`` also re-runs the torch model the config names: it imports and runs that Python file."""
    progress = progress or Silent()
    root = Path(root)
    manifest = load_build(root)
    unknown = [t for t in targets if t not in manifest.results]
    if unknown:
        raise UsageError(f"--target {unknown[0]!r} is not in this build; it has: {', '.join(manifest.results)}")
    chosen = targets or tuple(manifest.results)
    verify_build(root, manifest, chosen)
    progress.step("sha256 of every artifact matches the manifest")
    cfg = parse_config(manifest.config, Path("/"))
    reference = Reference.from_dict(manifest.reference, root)
    torch_source = None
    if against_torch:
        if cfg.compress:  # a compressed build's torch model is not re-made here (training is not re-run)
            raise UsageError("--against-torch: this build ran [[compress]]; its torch model is not re-made by validate")
        changed_inputs(manifest, weights=cfg.model.weights)
        torch_source = load_model(cfg.model)
        changed_inputs(manifest, model=torch_source.fingerprint)
    shapes = {i.name: i.shape for i in cfg.model.inputs} or {s.name: s.example_shape() for s in reference.inputs}
    vcfg = cfg.validation
    if data is not None:
        if not data.exists():
            raise UsageError(f"--data {data} does not exist")
        check_regular_file(data, "--data", error=UsageError) if not data.is_dir() else None
        vcfg = with_data(vcfg or DataConfig(data=str(data)), str(data.resolve()))
    validation = open_feed(vcfg, reference.inputs, "validation") if vcfg else None
    if data is None and validation is not None:
        changed_inputs(manifest, validation=validation.fingerprint())
    if torch_source is not None:  # without the torch model, a label check needs the model's class count: skipped
        check_label_classes(validation, torch_source)
    vdata = validation_data(validation, vcfg, reference.inputs, shapes)
    profiles = {name: profile_from_dict(name, manifest.profiles[name]) for name in chosen}
    sub = dataclasses.replace(manifest, results={n: dataclasses.replace(manifest.results[n]) for n in chosen})
    _measure_into(root, sub, reference, torch_source, profiles, vdata, shapes, cfg.model.task, progress, timing)
    _name_passing_peers(sub, profiles)
    sub.versions = library_versions()
    sub.validation["against"] = ("the torch model and the ONNX reference" if torch_source is not None else
                                 "the ONNX reference in this folder (the torch model is re-run with --against-torch)")
    if data is not None:
        record = validation_record_dir(root, data, validation.fingerprint() if validation is not None else "")
        sub.validation["record"] = str(record.relative_to(root))
        write_validation_record(record, sub, str(data.resolve()))
        progress.note(f"validation on {data} written to {record} (the build's own record is unchanged)")
        return sub
    manifest.results.update(sub.results)
    manifest.validation, manifest.references, manifest.versions = sub.validation, sub.references, sub.versions
    write_outputs(root, manifest)
    return manifest


# -------------------------------------------------------------------------------------------- helpers


def _measure_into(root: Path, manifest: Manifest, reference: Reference, torch_source: SourceModel | None,
                  profiles: dict[str, TargetProfile], data: ValidationData, shapes: dict[str, tuple[int, ...]], task: str | None,
                  progress: Progress, timing: ReferenceTiming) -> None:
    """Validate every built artifact of ``manifest`` and record what was measured, and each status, in it."""
    artifacts = {n: r.artifact for n, r in manifest.results.items() if r.artifact is not None}
    measured = measure(root, artifacts, reference, torch_source, profiles, data, shapes, task, progress, timing)
    manifest.validation, manifest.references = measured.validation, measured.references
    for name, m in measured.targets.items():
        m.apply(manifest.results[name], unavailable=artifacts[name].proxy)


def _name_passing_peers(manifest: Manifest, profiles: dict[str, TargetProfile]) -> None:
    """Once every status is final (after recovery): each failed target's reason names the peers that passed."""
    peers = {n: f"{profiles[n].precision} on {'the build host' if timed_on_device(profiles[n], r.artifact) else profiles[n].device}"
             for n, r in manifest.results.items() if n in profiles and r.artifact is not None}
    point_to_passing(manifest.results, peers)


def _shapes(cfg: BuildConfig, source: SourceModel) -> dict[str, tuple[int, ...]]:
    return {i.name: i.shape for i in cfg.model.inputs} or {s.name: s.example_shape() for s in source.inputs}


def _select_targets(cfg: BuildConfig, requested: tuple[str, ...]) -> tuple[str, ...]:
    for name in requested:
        if name not in cfg.targets:
            raise UsageError(f"--target {name!r} is not used by this config; it uses: {', '.join(cfg.targets)}")
    return tuple(requested) if requested else cfg.targets
