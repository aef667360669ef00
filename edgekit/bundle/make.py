"""Write device bundles: per target, a folder holding the artifact, golden inputs, the expected outputs, bundle.json
(tolerances, sha256 of every file, the build host) and verify.py, plus a reproducible .tar.gz of that folder."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import platform
import shutil
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgekit.backends import get_backend
from edgekit.bundle import verify
from edgekit.config import parse_config
from edgekit.console import Progress, Silent
from edgekit.data import open_feed
from edgekit.errors import UsageError
from edgekit.fsutil import atomic_write_bytes, atomic_write_text
from edgekit.manifest import profile_from_dict, verify_files
from edgekit.readback import load_build
from edgekit.types import ArtifactFile, Feed, Reference, TargetProfile, TargetResult, reference_files
from edgekit.validate.run import reference_runner, validation_data

DEFAULT_COSINE = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.99}  # when a profile gates no min_cosine
RUNTIMES = {"ort": "onnxruntime", "torch_ao": "torch", "tensorrt": "tensorrt"}


@dataclass(frozen=True)
class Golden:
    """The feeds a bundle carries (one complete model feed each) and what each one is."""

    feeds: list[Feed]
    kinds: list[dict[str, Any]]


@dataclass(frozen=True)
class Written:
    target: str
    folder: Path
    archive: Path


def write_bundles(root: Path, out: Path | None = None, targets: tuple[str, ...] = (), samples: int = 32,
                  progress: Progress | None = None, skip_unbuilt: bool = False) -> list[Written]:
    """Bundle each chosen target of the built directory ``root`` (sha256-checked first) into ``out`` (default
    ``root/bundles``). A chosen target without an artifact is an error, or skipped with a note (``skip_unbuilt``)."""
    progress = progress or Silent()
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory; pass the output directory of edgekit build")
    if samples < 1:
        raise UsageError(f"bundle samples must be >= 1, got {samples}")
    manifest = load_build(root)  # structure and paths checked: a build folder is input
    unknown = [t for t in targets if t not in manifest.results]
    if unknown:
        raise UsageError(f"--target {unknown[0]!r} is not in this build; it has: {', '.join(manifest.results)}")
    without = {n: r for n, r in manifest.results.items() if r.artifact is None}
    for name in targets:
        if name in without and skip_unbuilt:
            progress.note(f"[bundle] {name}: no artifact to bundle ({without[name].status})")
        elif name in without:
            raise UsageError(f"target '{name}' has no artifact to bundle ({without[name].status}: {without[name].reason})")
    chosen = [n for n in (targets or manifest.results) if n not in without]
    reference = Reference.from_dict(manifest.reference, root)
    verify_files(root, reference_files(manifest.reference))
    for name in chosen:
        verify_files(root, list(manifest.results[name].artifact.files))
    golden = golden_feeds(manifest.config, reference, samples)
    ref_runner = reference_runner(reference, 1)
    expected_ref = _stack([ref_runner.run(f) for f in golden.feeds], reference.outputs)
    out = Path(out) if out is not None else root / "bundles"
    written = []
    for name in chosen:
        progress.step(f"bundling {name} ({len(golden.feeds)} golden samples)")
        profile = profile_from_dict(name, manifest.profiles[name])
        runner = get_backend(profile.backend).load(manifest.results[name].artifact, root, profile, reference)
        try:
            expected_host = _stack([runner.run(f) for f in golden.feeds], reference.outputs)
        finally:
            runner.close()
        meta = bundle_meta(manifest, name, profile, reference, golden, expected_ref, expected_host)
        inputs = {s.name: np.stack([f[s.name] for f in golden.feeds]) for s in reference.inputs}
        arrays = {"golden_inputs.npz": inputs, "expected_reference.npz": expected_ref, "expected_host.npz": expected_host}
        artifact = root / _artifact_file(profile, manifest.results[name]).path
        external = tuple(root / f.path for f in manifest.results[name].artifact.files if f.path.endswith(".onnx.data"))
        written.append(_write(out, name, artifact, meta, arrays, external))
    return written


def golden_feeds(config: dict[str, Any], reference: Reference, samples: int) -> Golden:
    """The first ``samples`` validation samples, plus the largest- and smallest-magnitude samples of the whole set."""
    cfg = parse_config(config, Path("/"))
    shapes = {i.name: i.shape for i in cfg.model.inputs} or {s.name: s.example_shape() for s in reference.inputs}
    source = open_feed(cfg.validation, reference.inputs, "validation") if cfg.validation else None
    data = validation_data(source, cfg.validation, reference.inputs, shapes)
    feeds, kinds = [], []
    largest: tuple[float, int, Feed] | None = None
    smallest: tuple[float, int, Feed] | None = None
    for index, feed in enumerate(_single_feeds(data.batches(), reference)):
        peak = math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in feed.values()))  # L2 norm
        if index < samples:
            feeds.append(feed)
            kinds.append({"kind": "validation", "index": index, "norm": peak})
        if largest is None or peak > largest[0]:
            largest = (peak, index, feed)
        if smallest is None or peak < smallest[0]:
            smallest = (peak, index, feed)
    for label, found in (("largest magnitude", largest), ("smallest magnitude", smallest)):
        if found is not None and found[1] >= samples:
            feeds.append(found[2])
            kinds.append({"kind": label, "index": found[1], "norm": found[0]})
        elif found is not None:
            kinds[found[1]]["also"] = label
    return Golden(feeds, kinds)


def _single_feeds(batches: Iterator[Any], reference: Reference) -> Iterator[Feed]:
    """Each batch split into batch-1 feeds when every input's axis 0 is dynamic; else each batch is one feed."""
    split = all(0 in s.dynamic_axes for s in reference.inputs)
    for batch in batches:
        if not split:
            yield {k: np.ascontiguousarray(v) for k, v in batch.feed.items()}
            continue
        for i in range(batch.size):
            yield {k: np.ascontiguousarray(v[i:i + 1]) for k, v in batch.feed.items()}


def _stack(outs: list[dict[str, np.ndarray]], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {n: np.stack([o[n] for o in outs]) for n in names}


def quantization(profile: TargetProfile, result: TargetResult) -> dict[str, Any]:
    """What the preflight needs to know of the recipe: precision, kernel engine, whether weights are 8- or 7-bit u8 x s8."""
    recipe = dict(profile.recipe)
    notes = json.dumps(result.artifact.notes if result.artifact else {}, default=str)
    engine = str(recipe.get("engine", "")) if profile.backend == "torch_ao" else RUNTIMES.get(profile.backend, "")
    activations = str(recipe.get("activation_type", "uint8" if profile.backend == "torch_ao" else ""))
    weights = str(recipe.get("weight_type", "int8"))
    seven = recipe.get("reduce_range") is True or "7-bit" in notes
    return {"precision": profile.precision, "engine": engine, "activations": activations, "weights": weights,
            "weight_bits": 7 if seven else 8, "u8s8": profile.precision == "int8" and activations == "uint8" and weights == "int8"}


def tolerances(profile: TargetProfile, expected_ref: dict[str, np.ndarray], host: dict[str, Any], task: str | None) -> dict[str, Any]:
    """The bounds verify.py applies, derived from the target's gates, never tighter than the build host's own
    result on the same golden inputs (so a device is asked to do as well as the build host did, and no better)."""
    gates = dataclasses.asdict(profile.gates)
    cosine = gates["min_cosine"] if gates["min_cosine"] is not None else DEFAULT_COSINE.get(profile.precision, 0.99)
    worst_host_cos = min(m["cosine"] for m in host["outputs"].values())
    why = {"min_cosine": f"gate min_cosine {cosine}" if gates["min_cosine"] is not None else
           f"no min_cosine gate: {profile.precision} default {cosine}"}
    if worst_host_cos < cosine:
        cosine, why["min_cosine"] = worst_host_cos, why["min_cosine"] + f", relaxed to the build host's {worst_host_cos:.6f}"
    max_abs = {}
    for name, ref in expected_ref.items():
        if gates["max_abs_error"] is not None:
            bound = float(gates["max_abs_error"])
        else:  # the largest error one sample can have and still meet the cosine bound: |e| <= |ref| sqrt(2(1 - c))
            norms = np.linalg.norm(ref.reshape(ref.shape[0], -1).astype(np.float64), axis=1)
            bound = float(np.max(norms)) * math.sqrt(2.0 * (1.0 - cosine))
        max_abs[name] = max(bound, host["outputs"][name]["max_abs_error"])
    why["max_abs_error"] = ("gate max_abs_error" if gates["max_abs_error"] is not None else
                            "per output: max over golden samples of |reference|_2 * sqrt(2 (1 - min_cosine)), the error a "
                            "sample can carry and still meet min_cosine") + "; never below the build host's own"
    agreement = None
    if task == "classification":
        if gates["min_top1_agreement"] is not None:
            agreement, why["min_top1_agreement"] = gates["min_top1_agreement"], "gate min_top1_agreement"
        elif gates["max_top1_drop"] is not None:
            agreement = 1.0 - gates["max_top1_drop"] / 100.0
            why["min_top1_agreement"] = f"1 - max_top1_drop/100 (agreement that bounds the accuracy drop by {gates['max_top1_drop']} points)"
        if agreement is not None and host.get("top1_agreement") is not None and host["top1_agreement"] < agreement:
            agreement = host["top1_agreement"]
            why["min_top1_agreement"] = why.get("min_top1_agreement", "") + ", relaxed to the build host's"
    return {"min_cosine": cosine, "max_abs_error": max_abs, "min_top1_agreement": agreement, "derived_from": why}


def bundle_meta(manifest: Any, name: str, profile: TargetProfile, reference: Reference, golden: Golden,
                expected_ref: dict[str, np.ndarray], expected_host: dict[str, np.ndarray]) -> dict[str, Any]:
    """bundle.json without its ``files`` (added once every file is written)."""
    result = manifest.results[name]
    task = manifest.config.get("model", {}).get("task")
    host_on_golden = verify.compare(expected_ref, expected_host, task == "classification")
    artifact = _artifact_file(profile, result)
    runtime = {"name": RUNTIMES.get(profile.backend, "onnxruntime"), "artifact": Path(artifact.path).name,
               "files": [Path(artifact.path).name], "install": verify.INSTALL[RUNTIMES.get(profile.backend, "onnxruntime")]}
    if profile.backend == "torch_ao":
        runtime["engine"] = str(profile.recipe.get("engine", ""))
    if profile.backend == "tensorrt":
        runtime["fallback"] = "onnxruntime (graph optimizations off, as the build host's proxy)"
    # the manifest records no OS: the one bundling (normally the build host) is said
    host = {**manifest.host, "os": platform.platform(), "versions": manifest.versions}
    return {
        "format": verify.FORMAT, "kind": "edgekit-bundle", "target": name, "profile": manifest.profiles[name],
        "runtime": runtime, "quantization": quantization(profile, result),
        "inputs": [s.to_dict() for s in reference.inputs], "outputs": list(reference.outputs), "task": task,
        "golden": {"inputs": "golden_inputs.npz", "expected_reference": "expected_reference.npz",
                   "expected_host": "expected_host.npz", "samples": golden.kinds,
                   "reference": "the FP32 reference ONNX on ONNX Runtime CPU (build host)",
                   "host": result.measured_on or "the artifact on the build host"},
        "tolerances": tolerances(profile, expected_ref, host_on_golden, task),
        "host_on_golden": host_on_golden, "host": host,
        "build_metrics": {"status": result.status, "reason": result.reason,
                          "metrics": result.metrics.to_dict() if result.metrics else {},
                          "latency": result.latency.to_dict() if result.latency else {},
                          "size": result.size.to_dict() if result.size else {}, "measured_on": result.measured_on},
        "runtime_settings": dataclasses.asdict(profile.runtime),
    }


def _artifact_file(profile: TargetProfile, result: TargetResult) -> ArtifactFile:
    files = result.artifact.files
    if profile.backend in ("ort", "tensorrt"):  # TensorRT bundles carry the precision-explicit ONNX, not an engine
        return next(f for f in files if f.path.endswith(".onnx"))
    return files[0]


README = """edgekit bundle for target {target}

On the device (needs only: {install}):
    python verify.py            # or: python verify.py /path/to/this/folder --runs 100 --threads 4 --json report.json
Exit 0: every output within tolerance; 1: outside (the output and numbers are printed); 2: bad bundle or missing
runtime. Then, on the build host: edgekit validate DIST --device-report device-report.json
"""


def _write(out: Path, name: str, artifact: Path, meta: dict[str, Any], arrays: dict[str, dict[str, np.ndarray]],
           external: tuple[Path, ...] = ()) -> Written:
    """Write the bundle folder in a staging folder, then move it into place and write the .tar.gz beside it.
    ``external``: the artifact's external data files, copied under their names (the model names them)."""
    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        shutil.copyfile(artifact, staging / meta["runtime"]["artifact"])
        for data in external:
            shutil.copyfile(data, staging / data.name)
        for file, data in arrays.items():
            atomic_write_bytes(staging / file, npz_bytes(data))
        shutil.copyfile(verify.__file__, staging / "verify.py")
        atomic_write_text(staging / "README.txt", README.format(target=name, install=meta["runtime"]["install"]))
        files = sorted(p.name for p in staging.iterdir())
        meta["files"] = {f: {"sha256": verify.sha256_file(staging / f), "bytes": (staging / f).stat().st_size} for f in files}
        atomic_write_text(staging / verify.BUNDLE_JSON, strict_json(meta))
        folder = out / name
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    archive = out / f"{name}.tar.gz"
    atomic_write_bytes(archive, tar_gz(folder))
    return Written(name, folder, archive)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz (np.load reads it) with fixed entry times: the same arrays give the same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            with zf.open(zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(arrays[key]), allow_pickle=False)
    return buf.getvalue()


def strict_json(obj: Any) -> str:
    """Strict JSON text (non-finite floats become null; numpy scalars become numbers)."""
    return json.dumps(verify.strict(json.loads(json.dumps(obj, default=_plain))), indent=2, sort_keys=True,
                      allow_nan=False) + "\n"


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serializable: {type(obj).__name__}")


def tar_gz(folder: Path) -> bytes:
    """The folder as a .tar.gz with fixed times and owners: the same files give the same bytes."""
    import gzip

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in [folder, *sorted(folder.rglob("*"))]:
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(folder.parent)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if path.is_file():
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)
    return gzip.compress(buf.getvalue(), mtime=0)
