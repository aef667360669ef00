"""The fleet, top to bottom: check every build and key its steps, run what the cache lacks on Ray (one prepare task
per model, then one task per (model, target) pair), store each output in the cache, then write one edgekit output
folder per model, the fleet manifest and its report.

    load fleet -> plan every model (nothing written) -> [dry run: say what would be rebuilt, stop]
    -> Ray: prepare(model) -> build+measure(pair) ... -> cache -> DIR/<model>/ (manifest.json ...) -> fleet.json + reports
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgekit.console import Progress, Silent
from edgekit.errors import OutputDirError, UsageError
from edgekit.fleet.cache import Cache
from edgekit.fleet.plan import ModelPlan, PairPlan, code_versions, describe, plan_model
from edgekit.fleet.report import FLEET_MANIFEST, PairRecord, write_fleet
from edgekit.fleet.spec import FleetSpec
from edgekit.fleet.tasks import ModelInputs, PairJob, build_pair, prepare_model
from edgekit.validate.measure import ReferenceTiming

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FleetOptions:
    out: Path
    cache: Path | None = None  # default: OUT/.cache
    address: str | None = None  # an existing Ray cluster (else RAY_ADDRESS, else a local Ray started here)
    workers: int | None = None  # tasks at once (default: the local cores, or the cluster's CPUs)
    dry_run: bool = False
    strict: bool = False
    timing: ReferenceTiming = ReferenceTiming()


@dataclass
class FleetRun:
    """What a fleet run did: one record per pair, the Ray tasks it ran, and the plan lines of a dry run."""

    pairs: list[PairRecord]
    tasks: int
    lines: list[str]
    fleet: dict[str, Any]

    @property
    def exit_code(self) -> int:
        return int(self.fleet.get("exit_code", 0))


def run_fleet(spec: FleetSpec, options: FleetOptions, progress: Progress | None = None) -> FleetRun:
    """Build every (model, target) pair of ``spec`` not already in the cache; write OUT; return what was done."""
    progress = progress or Silent()
    start = time.perf_counter()
    if options.workers is not None and options.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {options.workers}")
    out = _check_out(Path(options.out), create=not options.dry_run)
    cache = Cache(options.cache or out / ".cache", repair=not options.dry_run)
    versions = code_versions()
    models = []
    for b in spec.builds:
        progress.step(f"checking {b.name}")
        models.append(plan_model(b, cache, versions, options.timing, options.strict, progress))
    lines = [line for m in models for line in describe(m)]
    if options.dry_run:
        return FleetRun([], 0, lines, {})
    outcomes: dict[tuple[str, str], dict[str, Any]] = {}
    tasks = 0
    if any(m.needs_prepare or any(p.needs_task for p in m.pairs) for m in models):
        tasks = _run_on_ray(models, cache, options, outcomes, progress)
    records = []
    for m in models:
        records += _assemble(out, m, cache, outcomes, options.strict)
    _remove_dropped(out, [b.name for b in spec.builds])
    fleet = write_fleet(out, spec, records, versions, tasks, round(time.perf_counter() - start, 3), options.strict)
    return FleetRun(records, tasks, lines, fleet)


def _check_out(out: Path, create: bool) -> Path:
    out = out.expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"output path {out} is a file; pass a directory with -o")
    if out.is_dir() and any(p for p in out.iterdir() if p.name != ".cache") and not (out / FLEET_MANIFEST).is_file():
        raise OutputDirError(f"output directory {out} holds files that edgekit fleet did not write; choose another -o")
    if not create:
        return out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputDirError(f"cannot create the output directory {out}: {exc.strerror}; choose another -o") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputDirError(f"output directory {out} is not writable; choose another -o")
    return out


def _remove_dropped(out: Path, names: list[str]) -> None:
    """Model folders an earlier run of this fleet wrote for builds the fleet file no longer lists go."""
    import json

    try:
        before = json.loads((out / FLEET_MANIFEST).read_text(encoding="utf-8")).get("models", [])
    except (OSError, ValueError, AttributeError):
        return
    for name in before:
        if isinstance(name, str) and name not in names and (out / name / "manifest.json").is_file():
            shutil.rmtree(out / name, ignore_errors=True)


# ------------------------------------------------------------------------------------------------- Ray


def _start_ray(options: FleetOptions) -> tuple[Any, bool]:
    """(the ray module, whether this run started it): a local instance unless an address is given or set."""
    try:
        import ray
    except ImportError:
        raise UsageError("edgekit fleet needs Ray: pip install 'edgekit[fleet]' (or pip install ray)") from None
    if ray.is_initialized():  # a caller (a notebook, a test) already connected: use its Ray, leave it running
        return ray, False
    address = options.address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report sent from a build machine unless asked
    if address:
        _check_reachable(address)
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=options.workers or os.cpu_count() or 1, include_dashboard=False, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"at {address}" if address else "locally"
        raise UsageError(f"cannot start or reach Ray {where}: {str(exc).splitlines()[0][:200]}; check --address") from None
    return ray, True


def _check_reachable(address: str) -> None:
    """Ray retries an unreachable address for minutes: a refused or silent host:port is exit 2 at once."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():  # "auto" and other forms Ray resolves itself
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise UsageError(f"cannot reach Ray at {address} ({exc.strerror or exc}); start the cluster (ray start --head) "
                         "or fix --address / RAY_ADDRESS") from None


Submit = Callable[[], Any]


def _run_on_ray(models: list[ModelPlan], cache: Cache, options: FleetOptions, outcomes: dict[tuple[str, str], dict[str, Any]],
                progress: Progress) -> int:
    """Run every prepare and pair task the cache lacks, at most ``workers`` at once; store each output as it lands."""
    ray, started = _start_ray(options)
    try:
        workers = options.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        prepare = ray.remote(prepare_model).options(num_cpus=1, max_retries=1)
        pair_task = ray.remote(build_pair).options(num_cpus=1, max_retries=1)
        ready: collections.deque[tuple[str, Any, Submit]] = collections.deque()
        total_tasks = sum(m.needs_prepare + sum(p.needs_task for p in m.pairs) for m in models)
        prepared: dict[str, Any] = {}  # model -> ObjectRef (or value) of its reference files

        def queue_pairs(m: ModelPlan) -> None:
            for pair in m.pairs:
                if pair.needs_task:
                    job = PairJob(_inputs(m, cache), m.plan.profiles[pair.target], pair.unavailable,
                                  pair.artifact.meta["artifact"] if pair.artifact else None, True, options.timing)
                    files = pair.artifact.read() if pair.artifact else None
                    ready.append(("pair", (m, pair), lambda job=job, ref=prepared[m.name], files=files:
                                  pair_task.remote(job, ref, files)))

        for m in models:
            if m.needs_prepare:
                ready.append(("prepare", m, lambda m=m: prepare.remote(_inputs(m, cache))))
            elif any(p.needs_task for p in m.pairs):
                prepared[m.name] = ray.put({"reference": m.reference.meta["reference"], "files": m.reference.read()})
                queue_pairs(m)
        total, done, tasks = total_tasks, 0, 0
        running: dict[Any, tuple[str, Any]] = {}
        while ready or running:
            while ready and len(running) < workers:
                kind, what, submit = ready.popleft()
                running[submit()] = (kind, what)
                tasks += 1
            finished, _ = ray.wait(list(running), num_returns=1)
            kind, what = running.pop(finished[0])
            done += 1
            try:
                value, error = ray.get(finished[0]), ""
            except Exception as exc:  # the task raised (bad input found on the worker, a crash): the others go on
                value, error = None, _task_error(exc)
            if kind == "prepare":
                m = what
                if error:
                    for pair in m.pairs:
                        if not pair.skipped:
                            outcomes[(m.name, pair.target)] = {"error": f"export failed: {error}"}
                            done += 1
                    progress.step(f"[{done}/{total}] {m.name}: export failed: {error}")
                    continue
                m.reference = cache.put(m.reference_key, "reference", value["files"],
                                        {"reference": value["reference"], "seconds": value["seconds"]})
                m.exported = True
                progress.step(f"[{done}/{total}] {m.name}: exported and simplified ({value['seconds']:.1f} s)")
                prepared[m.name] = finished[0]
                queue_pairs(m)
            else:
                m, pair = what
                outcomes[(m.name, pair.target)] = _store_pair(cache, pair, value, error)
                o = outcomes[(m.name, pair.target)]
                state = o["error"] if "error" in o else o["result"]["status"]
                progress.step(f"[{done}/{total}] {m.name} x {pair.target}: {state} ({'built' if o.get('built') else 'cached artifact, measured'})")
        return tasks
    finally:
        if started:
            ray.shutdown()


def _inputs(m: ModelPlan, cache: Cache) -> ModelInputs:
    """A model's task inputs; its INT8 target tasks share one calibration statistics cache in the fleet's cache
    (CACHE/calibration, unless the build's [calibration] cache names another), so one collects and the others hit."""
    cfg = m.build.cfg
    if cfg.calibration is not None and cfg.calibration.cache is None:
        cfg = dataclasses.replace(cfg, calibration=dataclasses.replace(cfg.calibration, cache=str(cache.root.absolute() / "calibration")))
    return ModelInputs(m.name, cfg, m.plan.source.fingerprint, m.plan.shapes)


def _task_error(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0][:300] if text else ''}"


def _store_pair(cache: Cache, pair: PairPlan, value: dict[str, Any] | None, error: str) -> dict[str, Any]:
    """Put a pair task's artifact (when it built one) and measurement into the cache; return its outcome."""
    if error or value is None:
        return {"error": f"task failed: {error}"}
    if "error" in value:
        return {"error": value["error"], "built": True}
    record = value["artifact"]
    if value["built"]:
        entry = cache.put(pair.artifact_key, "artifact", value["files"], {"artifact": record})
        sent = {f["path"]: f["sha256"] for f in record["files"]}
        if {f.path: f.sha256 for f in entry.files} != sent:
            return {"error": "the artifact's files changed on their way from the worker (sha256 mismatch)"}
        pair.artifact = entry
    pair.measured = cache.put(pair.measure_key, "measure", {}, {k: value[k] for k in ("result", "validation", "references")})
    return {"built": value["built"], "result": value["result"]}


# -------------------------------------------------------------------------------------------- assembly


def _assemble(out: Path, m: ModelPlan, cache: Cache, outcomes: dict[tuple[str, str], dict[str, Any]],
              strict: bool) -> list[PairRecord]:
    """Write OUT/<model>/ as an edgekit output folder (staging, then moved into place) from the cached entries."""
    from edgekit.config import resolved_dict
    from edgekit.manifest import Manifest, input_hashes, result_from_dict, write_outputs
    from edgekit.outdir import check_output_dir, make_staging, promote
    from edgekit.profiles import profile_to_dict
    from edgekit.types import TargetResult

    records, results, measured_meta = [], {}, None
    for pair in m.pairs:
        o = outcomes.get((m.name, pair.target), {})
        profile = m.plan.profiles[pair.target]
        if pair.skipped:
            r = TargetResult(pair.target, "unavailable", pair.unavailable, device=profile.device)
        elif "error" in o or pair.measured is None or pair.artifact is None:
            r = TargetResult(pair.target, "error", o.get("error", "not built"), device=profile.device)
        else:
            r = result_from_dict(pair.target, pair.measured.meta["result"])
            measured_meta = measured_meta or pair.measured.meta
        results[pair.target] = r
        steps = {"reference": "built" if m.exported else ("cached" if m.reference else "-"),
                 "artifact": "built" if o.get("built") else ("cached" if pair.artifact else "-"),
                 "measure": "measured" if "result" in o else ("cached" if pair.measured else "-")}
        records.append(PairRecord(m.name, pair.target, r, pair.planned, pair.why, steps,
                                  {"artifact": pair.artifact_key, "measure": pair.measure_key}))
        if pair.measured is not None and pair.artifact is not None:
            cache.record_inputs(m.name, pair.target, pair.components)
    if m.reference is None:  # the export failed: no folder vouches for anything
        return records
    target_dir = check_output_dir(out / m.name)
    cfg, p = m.build.cfg, m.plan
    manifest = Manifest(
        config=resolved_dict(cfg),
        inputs=input_hashes(p.source.fingerprint, cfg.model.weights,
                            {"calibration": p.calibration, "validation": p.validation, "train": None}, p.profiles),
        reference=m.reference.meta["reference"],
        validation=(measured_meta or {}).get("validation", {"description": "nothing measured", "samples": 0}),
        references=(measured_meta or {}).get("references", {}),
        results=results,
        profiles={n: profile_to_dict(pr) for n, pr in p.profiles.items()},
        strict=strict,
    )
    staging = make_staging(target_dir)
    try:
        m.reference.copy_into(staging)
        for pair in m.pairs:
            if results[pair.target].artifact is not None and pair.artifact is not None:
                pair.artifact.copy_into(staging)
        write_outputs(staging, manifest)
        promote(staging, target_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return records
