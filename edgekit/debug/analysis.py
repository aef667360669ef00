"""`edgekit debug`: per-layer analysis of a built INT8 target against the FP32 reference of its build folder.

    load_build + sha256 -> the data (validation, else calibration, or --data) -> the quantized layers
    -> local and accumulated SQNR, chunk by chunk -> keep each layer (or block, then bisect) in FP32: cosine and
    latency cost -> rank by cosine recovered per ms -> DIR/<target>/debug.json, report.md
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.config import parse_config
from edgekit.console import Progress, Silent
from edgekit.data import open_feed, with_data
from edgekit.debug.keep import keep_fp32
from edgekit.debug.layers import Graphs, Layer, find_layers
from edgekit.debug.names import module_map
from edgekit.debug.rank import Candidates, Run, assemble, measure_layers
from edgekit.debug.report import DEBUG_FILE, DebugReport
from edgekit.debug.run import Timing, layer_errors
from edgekit.errors import UsageError
from edgekit.fsutil import atomic_write_json, check_regular_file
from edgekit.manifest import profile_from_dict, write_reports
from edgekit.readback import load_build, verify_build
from edgekit.report import read_report_data
from edgekit.report.markdown import artifact_digest
from edgekit.types import Feed, Reference

DEFAULT_SAMPLES = 64
MAX_SAMPLES = 100_000  # every sample is run once per keep-FP32 candidate


def analyze(root: Path, target: str, data: Path | None = None, top: int = 10, samples: int = DEFAULT_SAMPLES,
            progress: Progress | None = None, timing: Timing = Timing(), write: bool = True) -> DebugReport:
    """Analyze ``target`` of the build folder ``root`` layer by layer; write ``root/<target>/debug.json`` and
    re-render report.md (unless ``write`` is false). Every layer is analyzed; ``top`` is the table's length, for
    callers that print it (the CLI)."""
    progress = progress or Silent()
    if not 1 <= samples <= MAX_SAMPLES:
        raise UsageError(f"--samples {samples}: give 1 .. {MAX_SAMPLES:,} samples")
    root = Path(root)
    manifest = load_build(root)
    result = manifest.results.get(target)
    if result is None:
        raise UsageError(f"--target {target!r} is not in this build; it has: {', '.join(manifest.results)}")
    if result.artifact is None:
        raise UsageError(f"--target {target!r} was not built ({result.status}: {result.reason or 'no artifact'}); "
                         "debug needs a built INT8 target")
    profile = profile_from_dict(target, manifest.profiles[target])
    if profile.precision not in ("int8", "fp16"):
        raise UsageError(f"--target {target!r} is {profile.precision}; debug analyzes INT8 and FP16 targets (ort-int8, "
                         "ort-int8-dynamic, tensorrt-int8, tensorrt-fp16, torch-fbgemm, torch-qnnpack)")
    verify_build(root, manifest, (target,))
    progress.step("sha256 of the reference and the artifact match the manifest")
    reference = Reference.from_dict(manifest.reference, root)
    feeds, label = _feeds(manifest, reference, data, samples)
    count = sum(int(next(iter(f.values())).shape[0]) for f in feeds)
    threads = profile.runtime.threads
    files = [root / f.path for f in result.artifact.files]
    if profile.backend == "torch_ao":
        from edgekit.debug.torch_ao import analyze_torch

        report = analyze_torch(reference, files, feeds, profile, progress, timing)
    else:
        onnx_file = next((f for f in files if f.suffix == ".onnx"), None)
        if onnx_file is None:
            raise UsageError(f"--target {target!r} has no ONNX file to analyze")
        report = _analyze_onnx(reference, onnx_file, feeds, threads, progress, timing)
    report.target, report.backend, report.precision = target, profile.backend, profile.precision
    report.data, report.samples = label, count
    report.artifact_sha256 = artifact_digest([vars(f) for f in result.artifact.files])
    if write:
        report.path = root / target / DEBUG_FILE
        atomic_write_json(report.path, report.to_dict())
        _rerender(root)
    return report


def _feeds(manifest: Any, reference: Reference, data: Path | None, samples: int) -> tuple[list[Feed], str]:
    """At most ``samples`` samples of the data to analyze on, in the build's validation batch size."""
    from edgekit.types import batch_rows

    cfg = parse_config(manifest.config, Path("/"))
    section, label = (cfg.validation, "validation") if cfg.validation is not None else (cfg.calibration, "calibration")
    if data is not None:
        if not Path(data).exists():
            raise UsageError(f"--data {data} does not exist")
        if not Path(data).is_dir():
            check_regular_file(Path(data), "--data", error=UsageError)
        from edgekit.config import DataConfig

        section, label = with_data(section or DataConfig(data=str(data)), str(Path(data).resolve())), str(data)
    if section is None:
        raise UsageError("this build has neither [validation] nor [calibration] data; pass --data PATH")
    source = open_feed(section, reference.inputs, label if data is None else "--data")
    size = batch_rows(reference.inputs, min(section.batch_size, samples))
    feeds: list[Feed] = []
    taken = 0
    for batch in source.batches(size):
        n = min(batch.size, samples - taken)
        feeds.append({k: v[:n] for k, v in batch.feed.items()})
        taken += n
        if taken >= samples:
            break
    if not feeds:
        raise UsageError(f"{label} data {section.data} holds no samples")
    return feeds, label


def _rerender(root: Path) -> None:
    """report.md and report.html again, now with the per-layer section and plot."""
    manifest = load_build(root)
    write_reports(root, manifest.to_dict(), read_report_data(root, manifest.results))


# ------------------------------------------------------------------------------------------------ ONNX


def _analyze_onnx(reference: Reference, artifact: Path, feeds: list[Feed], threads: int, progress: Progress,
                  timing: Timing) -> DebugReport:
    import onnx

    from edgekit.backends.onnx.session import session

    g = Graphs(onnx.load(str(reference.path)), onnx.load(str(artifact)))
    modules = module_map(g.reference)
    layers = find_layers(g)
    notes: list[str] = []
    if not layers:
        notes.append("no quantized Conv/Gemm/MatMul layer was found in the artifact")
    progress.step(f"local and accumulated error of {len(layers)} quantized layer(s), {len(feeds)} batch(es)")
    errors = layer_errors(g, layers, feeds, threads, progress.advance)
    progress.step("keeping layers in FP32 one at a time: whole-model cosine and latency cost")
    ref = session(g.reference.SerializeToString(), threads)
    base = session(g.artifact.SerializeToString(), threads)

    def build(chosen: list[Layer]) -> Run:
        sess = session(keep_fp32(g, chosen), threads)
        return lambda feed: sess.run(None, feed)

    candidates = Candidates([ref.run(None, f) for f in feeds], lambda feed: base.run(None, feed), build, feeds, timing)
    keep, blocks = measure_layers(layers, modules, candidates, progress, notes)
    return assemble(layers, errors, keep, modules, candidates.end_to_end, blocks, notes)
