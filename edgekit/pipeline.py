"""The one place that knows the order of the steps; read top to bottom, it is the architecture.

    load config -> resolve profiles -> load model -> open data -> check availability
    -> (staging dir) compress -> export + simplify -> build each target -> validate -> manifest + report
    -> move staging into place
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.backends import BuildContext, CalibrationSettings, Runner, get_backend
from edgekit.config import BuildConfig, DataConfig, parse_config, resolved_dict
from edgekit.console import Silent
from edgekit.data import open_feed, overlap
from edgekit.errors import ConfigError, EdgekitError, OutputDirError, TargetUnavailableError, UsageError
from edgekit.export import make_reference
from edgekit.fsutil import atomic_write_json, atomic_write_text
from edgekit.manifest import MANIFEST, Manifest, read_manifest, result_to_dict, verify_files
from edgekit.model import file_sha256, load_model
from edgekit.profiles import load_profile, profile_to_dict
from edgekit.report import render_markdown
from edgekit.types import Artifact, ArtifactFile, Reference, SourceModel, TargetProfile, TargetResult, TensorSpec
from edgekit.validate import gates as gates_mod
from edgekit.validate.run import TorchRunner, ValidationData, compare, latency_feed, reference_runner, synthetic, time_runners

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference/model.onnx"
REFERENCE_THREADS = 2


@dataclass(frozen=True)
class BuildOptions:
    out: Path
    targets: tuple[str, ...] = ()
    validate: bool = True
    strict: bool = False


@dataclass
class Plan:
    """Everything resolved and checked before any file is written."""

    cfg: BuildConfig
    profiles: dict[str, TargetProfile]
    source: SourceModel
    shapes: dict[str, tuple[int, ...]]
    calibration: Any
    validation: Any
    unavailable: dict[str, str] = field(default_factory=dict)
    proxies: set[str] = field(default_factory=set)  # unavailable, but a host proxy is built and measured
    train: Any = None  # [train] data, opened only when a [[compress]] step trains
    recipes: dict[str, Any] = field(default_factory=dict)  # each target's recipe, parsed once by its backend


# ---------------------------------------------------------------------------------------------- build


def plan(cfg: BuildConfig, options: BuildOptions, progress: Any = None) -> Plan:
    """Resolve and check every input (config, profiles, model, data, availability); write nothing."""
    progress = progress or Silent()
    chosen = _select_targets(cfg, options.targets)
    profiles = {name: load_profile(name, cfg.overrides.get(name)) for name in chosen}
    recipes = {name: get_backend(p.backend).parse_recipe(p) for name, p in profiles.items()}
    progress.step(f"loading model {cfg.model.source}")
    source = load_model(cfg.model)
    shapes = {i.name: i.shape for i in cfg.model.inputs} or {s.name: s.example_shape() for s in source.inputs}
    needs_calibration = [n for n, p in profiles.items() if get_backend(p.backend).needs_calibration(p, recipes[n])]
    if needs_calibration and cfg.calibration is None:
        raise ConfigError(f"target(s) {needs_calibration} need calibration data: add a [calibration] section with 'data'")
    # static INT8 needs calibration data; dynamic INT8 uses it when given (smoothing, FP32 fallback)
    uses_calibration = any(get_backend(p.backend).uses_calibration(p, recipes[n]) for n, p in profiles.items())
    calibration = open_feed(cfg.calibration, source.inputs, "calibration") if cfg.calibration and uses_calibration else None
    validation = open_feed(cfg.validation, source.inputs, "validation") if cfg.validation else None
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
    return Plan(cfg, profiles, source, shapes, calibration, validation, unavailable, proxies, train, recipes)


def build(cfg: BuildConfig, options: BuildOptions, progress: Any = None) -> Manifest:
    """Build every selected target into ``options.out``; return the manifest (its exit_code is the verdict)."""
    progress = progress or Silent()
    out = _check_output_dir(Path(options.out))
    p = plan(cfg, options, progress)
    staging = _make_staging(out)
    try:
        manifest = _build_into(staging, p, options, progress)
        _promote(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _build_into(root: Path, p: Plan, options: BuildOptions, progress: Any) -> Manifest:
    cfg, source = p.cfg, p.source
    original = source
    compress_log: list[dict[str, Any]] = []
    if cfg.compress:
        from edgekit.compress.run import run_compress

        # from here on `source` is the compressed model: the reference is exported from it and the targets'
        # errors are measured against it; the compress log measures each step against `original`
        source, compress_log = run_compress(cfg, source, p.shapes, progress, train=p.train, validation=p.validation)
    progress.step(f"exporting to ONNX ({cfg.export.exporter} exporter) and simplifying")
    reference = make_reference(source, p.shapes, cfg.export, root / REFERENCE_FILE)
    settings = _calibration_settings(cfg.calibration)
    results: dict[str, TargetResult] = {}
    for name, profile in p.profiles.items():
        target_dir = root / name
        target_dir.mkdir(parents=True, exist_ok=True)
        if name in p.unavailable and name not in p.proxies:
            results[name] = TargetResult(name, "unavailable", p.unavailable[name], device=profile.device)
            continue
        progress.step(f"building {name} ({profile.description or profile.backend})")
        start = time.perf_counter()
        ctx = BuildContext(profile, reference, source, target_dir, root, p.calibration, settings, shapes=p.shapes,
                           recipe=p.recipes.get(name))
        try:
            artifact = get_backend(profile.backend).build(ctx)
        except EdgekitError:
            raise
        except Exception as exc:  # a backend failure is this target's error; the other targets go on
            log.debug("building %s failed", name, exc_info=True)
            results[name] = TargetResult(name, "error", f"build failed: {type(exc).__name__}: {str(exc)[:400]}", device=profile.device)
            continue
        for warning in artifact.warnings:
            progress.warn(f"{name}: {warning}")
        status, reason = ("unavailable", p.unavailable[name]) if name in p.proxies else ("passed", "")
        results[name] = TargetResult(name, status, reason, artifact, build_seconds=round(time.perf_counter() - start, 3), device=profile.device)
    manifest = Manifest(
        config=resolved_dict(cfg),
        inputs=_input_hashes(cfg, original, p),
        reference=_reference_dict(reference, root),
        validation={},
        references={},
        results=results,
        profiles={n: profile_to_dict(pr) for n, pr in p.profiles.items()},
        strict=options.strict,
        compress=compress_log,
    )
    if options.validate:
        data = _validation_data(p.validation, cfg.validation, source.inputs, p.shapes)
        _measure(root, manifest, reference, source if source.is_torch else None, p.profiles, data, p.shapes, cfg.model.task, progress)
    else:
        manifest.validation = {"description": "not validated (--no-validate)", "samples": 0}
    _write_outputs(root, manifest)
    return manifest


# ------------------------------------------------------------------------------------------- validate


def validate(root: Path, targets: tuple[str, ...] = (), data: Path | None = None, progress: Any = None) -> Manifest:
    """Re-check every sha256 of a built directory, then re-run the validator and rewrite manifest and report."""
    progress = progress or Silent()
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory; pass the output directory of edgekit build")
    manifest = read_manifest(root)
    ref_file = ArtifactFile(**manifest.reference["file"])
    verify_files(root, [ref_file])
    unknown = [t for t in targets if t not in manifest.results]
    if unknown:
        raise UsageError(f"--target {unknown[0]!r} is not in this build; it has: {', '.join(manifest.results)}")
    chosen = targets or tuple(manifest.results)
    for name in chosen:
        r = manifest.results[name]
        if r.artifact is not None:
            verify_files(root, list(r.artifact.files))
    progress.step("sha256 of every artifact matches the manifest")
    cfg = parse_config(manifest.config, Path("/"))
    if data is not None:
        if not data.exists():
            raise UsageError(f"--data {data} does not exist")
        base = cfg.validation or DataConfig(data=str(data))
        cfg = dataclasses.replace(cfg, validation=dataclasses.replace(base, data=str(data.resolve()), samples=None))
    source = load_model(cfg.model)
    shapes = {i.name: i.shape for i in cfg.model.inputs} or {s.name: s.example_shape() for s in source.inputs}
    r = manifest.reference
    reference = Reference(
        root / ref_file.path,
        tuple(TensorSpec(s["name"], tuple(s["shape"]), s["dtype"]) for s in r["inputs"]),
        tuple(r["outputs"]), r["exporter"], r["opset"], r["simplified"], r["simplify_note"],
    )
    profiles = {}
    for name in chosen:
        d = manifest.profiles[name]
        from edgekit.profiles import parse_profile

        raw = {k: d[k] for k in ("description", "backend", "precision", "device", "host_is_device", "recipe", "runtime", "gates")}
        profiles[name] = parse_profile(name, raw, d.get("source", "manifest"))
    validation = open_feed(cfg.validation, reference.inputs, "validation") if cfg.validation else None
    vdata = _validation_data(validation, cfg.validation, reference.inputs, shapes)
    sub = dataclasses.replace(manifest, results={n: manifest.results[n] for n in chosen})
    # a compressed build's torch model is not re-made here (training is not re-run): its ONNX reference stands in
    torch_source = source if source.is_torch and not cfg.compress else None
    _measure(root, sub, reference, torch_source, profiles, vdata, shapes, cfg.model.task, progress)
    manifest.results.update(sub.results)
    manifest.validation, manifest.references = sub.validation, sub.references
    manifest.versions = Manifest.__dataclass_fields__["versions"].default_factory()
    _write_outputs(root, manifest)
    return manifest


# -------------------------------------------------------------------------------------------- helpers


def _measure(
    root: Path, manifest: Manifest, reference: Reference, torch_source: SourceModel | None,
    profiles: dict[str, TargetProfile], data: ValidationData, shapes: dict[str, tuple[int, ...]],
    task: str | None, progress: Any,
) -> None:
    """Run the validator on every built artifact; fill metrics, latency, size and gate verdicts."""
    runners: dict[str, Runner] = {}
    for name, result in manifest.results.items():
        if result.artifact is None:
            continue
        profile = profiles[name]
        try:
            runners[name] = get_backend(profile.backend).load(result.artifact, root, profile, reference)
        except Exception as exc:
            result.status, result.reason = "error", f"loading the artifact failed: {type(exc).__name__}: {str(exc)[:300]}"
    torch_ref = TorchRunner(torch_source, reference.outputs, REFERENCE_THREADS) if torch_source is not None else None
    onnx_ref = reference_runner(reference, REFERENCE_THREADS)
    classification = task == "classification"
    progress.step(f"validating {len(runners)} artifact(s) on {data.description}")
    measured = compare(runners, torch_ref, onnx_ref, data, classification, reference.outputs, progress.advance)
    feed = latency_feed(data, reference.inputs, shapes, None)
    batch = int(next(iter(feed.values())).shape[0])
    timed = {"onnx-fp32": (onnx_ref, 10, 100)}
    if torch_ref is not None:
        timed["torch-fp32"] = (torch_ref, 10, 100)
    for name, runner in runners.items():
        rt = profiles[name].runtime
        timed[name] = (runner, rt.warmup, rt.runs)
    progress.step(f"timing {len(timed)} runners (batch {batch})")
    lat = time_runners(timed, feed, progress.advance)
    fp32_bytes = (root / REFERENCE_FILE).stat().st_size
    baseline = lat.get("ort-fp32", {}).get("p50_ms") if "ort-fp32" in runners else None
    baseline_name = "ort-fp32"
    if baseline is None:
        baseline, baseline_name = lat["onnx-fp32"].get("p50_ms"), "onnx-fp32 reference (no ort-fp32 target in this run)"
    ref_acc = measured.get("torch-fp32", measured["onnx-fp32"]).accuracy
    ref_accuracy = ref_acc.percent if ref_acc is not None and ref_acc.total else None
    manifest.references = {}
    for name in ("torch-fp32", "onnx-fp32"):
        if name in measured:
            entry: dict[str, Any] = {"latency": {**lat[name], "batch": batch, "threads": REFERENCE_THREADS}}
            entry.update(measured[name].metrics())
            if name == "onnx-fp32":
                entry["bytes"] = fp32_bytes
            manifest.references[name] = entry
    samples = next(iter(measured["onnx-fp32"].vs_onnx.errors.values())).samples
    manifest.validation = {"description": data.description, "samples": samples, "labelled": data.labelled, "latency_batch": batch}
    for name, runner in runners.items():
        result, m, profile = manifest.results[name], measured[name], profiles[name]
        runner.close()
        if m.error:
            result.status, result.reason = "error", m.error
            continue
        result.metrics = m.metrics()
        if ref_accuracy is not None and "accuracy" in result.metrics:
            result.metrics["top1_drop"] = ref_accuracy - result.metrics["accuracy"]
        t = lat[name]
        if "error" in t:
            result.status, result.reason = "error", f"timing failed: {t['error']}"
            continue
        speedup = baseline / t["p50_ms"] if baseline else None
        result.latency = {**t, "batch": batch, "threads": profile.runtime.threads, "warmup": profile.runtime.warmup,
                          "speedup_vs_ort_fp32": speedup, "speedup_baseline": baseline_name}
        size = result.artifact.bytes
        result.size = {"bytes": size, "ratio_to_fp32": size / fp32_bytes, "fp32_bytes": fp32_bytes}
        result.measured_on = _measured_on(profile, result.artifact)
        primary = result.metrics.get("vs_torch") or result.metrics["vs_onnx"]
        flat = {**primary["worst"], "top1_agreement": primary.get("top1_agreement"),
                "top1_drop": result.metrics.get("top1_drop"), "p50_ms": t["p50_ms"],
                "size_mb": size / 1e6, "size_ratio": size / fp32_bytes}
        result.gates = gates_mod.evaluate(name, profile.gates, flat)
        failed = [g["message"] for g in result.gates if g["passed"] is False]
        if failed:
            result.status, result.reason = "failed", "; ".join(failed)
        elif result.artifact.proxy:  # a host proxy that passes is still not the real target
            result.status, result.reason = "unavailable", result.artifact.proxy
        else:
            result.status, result.reason = "passed", ""


def _measured_on(profile: TargetProfile, artifact: Artifact) -> str:
    if artifact.measured_on:
        return artifact.measured_on
    if profile.host_is_device:
        return "build host (a device of this target's kind)"
    return "build host, not the target device"


def _write_outputs(root: Path, manifest: Manifest) -> None:
    data = manifest.to_dict()
    for name, result in manifest.results.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        atomic_write_json(root / name / "metrics.json", {"target": name, **result_to_dict(result)})
    atomic_write_json(root / MANIFEST, data)
    atomic_write_text(root / "report.md", render_markdown(json.loads(json.dumps(data, default=str))))


def _validation_data(source: Any, cfg: DataConfig | None, specs: tuple[TensorSpec, ...], shapes: dict[str, tuple[int, ...]]) -> ValidationData:
    if source is None:
        return synthetic(specs, shapes)
    dynamic_batch = all(0 in s.dynamic_axes for s in specs)
    size = cfg.batch_size if dynamic_batch else 1
    labelled = cfg.labels is not None
    return ValidationData(lambda: source.batches(size), source.description + (f", labels '{cfg.labels}'" if labelled else ""), labelled)


def _select_targets(cfg: BuildConfig, requested: tuple[str, ...]) -> tuple[str, ...]:
    for name in requested:
        if name not in cfg.targets:
            raise UsageError(f"--target {name!r} is not used by this config; it uses: {', '.join(cfg.targets)}")
    return tuple(requested) if requested else cfg.targets


def _calibration_settings(cfg: DataConfig | None) -> CalibrationSettings:
    if cfg is None:
        return CalibrationSettings()
    return CalibrationSettings(method=cfg.method, samples=cfg.samples or 256, percentile=cfg.percentile, batch_size=cfg.batch_size)


def _reference_dict(reference: Reference, root: Path) -> dict[str, Any]:
    return {
        "file": vars(ArtifactFile.of(reference.path, root)),
        "exporter": reference.exporter,
        "opset": reference.opset,
        "simplified": reference.simplified,
        "simplify_note": reference.simplify_note,
        "inputs": [s.to_dict() for s in reference.inputs],
        "outputs": list(reference.outputs),
    }


def _input_hashes(cfg: BuildConfig, source: SourceModel, p: Plan) -> dict[str, Any]:
    hashes: dict[str, Any] = {"model": source.fingerprint}
    if cfg.model.weights is not None:
        hashes["weights"] = file_sha256(cfg.model.weights)
    if p.calibration is not None:
        hashes["calibration"] = p.calibration.fingerprint()
    if p.validation is not None:
        hashes["validation"] = p.validation.fingerprint()
    if p.train is not None:
        hashes["train"] = p.train.fingerprint()
    hashes["profiles"] = {
        n: hashlib.sha256(json.dumps(profile_to_dict(pr), sort_keys=True).encode()).hexdigest() for n, pr in p.profiles.items()
    }
    return hashes


# ---------------------------------------------------------------------------------- output directory


def _check_output_dir(out: Path) -> Path:
    out = out.expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"output path {out} is a file; pass a directory with -o")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise OutputDirError(f"output directory {out} holds files that edgekit did not write; choose another -o or empty it")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK | os.X_OK)):
        raise OutputDirError(f"output directory {out} is not writable; choose another -o")
    return out


def _make_staging(out: Path) -> Path:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = out.parent / f".{out.name}.edgekit-partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    except OSError as exc:
        raise OutputDirError(f"cannot create the output directory {out}: {exc.strerror}; choose another -o") from None
    return staging


def _promote(staging: Path, out: Path) -> None:
    """Replace ``out`` with the finished staging folder; an earlier build there is removed only after."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.edgekit-old-{os.getpid()}"
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
