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
from edgekit.debug.layers import Graphs, Layer, find_layers, keep_fp32
from edgekit.debug.names import module_map
from edgekit.debug.report import DEBUG_FILE, BlockReport, DebugReport, KeepFp32, LayerReport
from edgekit.debug.run import Timing, agreement, layer_errors, paired_p50
from edgekit.errors import UsageError
from edgekit.fsutil import atomic_write_json, check_regular_file
from edgekit.manifest import profile_from_dict
from edgekit.readback import load_build, verify_build
from edgekit.report.markdown import artifact_digest
from edgekit.types import Feed, Reference

DEFAULT_SAMPLES = 64
COST_FLOOR_MS = 0.01  # a keep-FP32 cost below this (or below NOISE_SHARE of the artifact's p50) counts as this
NOISE_SHARE = 0.02
BLOCK_THRESHOLD = 40  # more quantized layers than this: keep whole blocks in FP32 first, then bisect
BISECT_BLOCKS = 3


def analyze(root: Path, target: str, data: Path | None = None, top: int = 10, samples: int = DEFAULT_SAMPLES,
            progress: Progress | None = None, timing: Timing = Timing(), write: bool = True) -> DebugReport:
    """Analyze ``target`` of the build folder ``root`` layer by layer; write ``root/<target>/debug.json`` and
    re-render report.md (unless ``write`` is false). ``top`` only bounds what callers print."""
    del top
    progress = progress or Silent()
    root = Path(root)
    manifest = load_build(root)
    result = manifest.results.get(target)
    if result is None:
        raise UsageError(f"--target {target!r} is not in this build; it has: {', '.join(manifest.results)}")
    if result.artifact is None:
        raise UsageError(f"--target {target!r} was not built ({result.status}: {result.reason or 'no artifact'}); "
                         "debug needs a built INT8 target")
    profile = profile_from_dict(target, manifest.profiles[target])
    if profile.precision not in ("int8",):
        raise UsageError(f"--target {target!r} is {profile.precision}; debug analyzes INT8 targets (ort-int8, "
                         "ort-int8-dynamic, tensorrt-int8, torch-fbgemm, torch-qnnpack)")
    verify_build(root, manifest, (target,))
    progress.step("sha256 of the reference and the artifact match the manifest")
    reference = Reference.from_dict(manifest.reference, root)
    feeds, label = _feeds(manifest, reference, data, samples)
    count = sum(int(next(iter(f.values())).shape[0]) for f in feeds)
    threads = profile.runtime.threads
    files = [root / f.path for f in result.artifact.files]
    if profile.backend == "torch_ao":
        from edgekit.debug.torch_ao import analyze_torch

        report = analyze_torch(reference, files, feeds, profile, progress)
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
    """report.md again, now with the per-layer section."""
    import json

    from edgekit.fsutil import atomic_write_text
    from edgekit.report.markdown import debug_reports, render_markdown

    manifest = load_build(root)
    data = json.loads(json.dumps(manifest.to_dict(), default=str))
    atomic_write_text(root / "report.md", render_markdown(data, debug_reports(root, data)))


# ------------------------------------------------------------------------------------------------ ONNX


class _Candidates:
    """Keep-FP32 candidates of one artifact, each measured once: whole-model cosine and paired latency."""

    def __init__(self, g: Graphs, feeds: list[Feed], threads: int, timing: Timing):
        from edgekit.backends.onnx.session import session

        self.g, self.feeds, self.threads, self.timing = g, feeds, threads, timing
        self.reference = [session(g.reference.SerializeToString(), threads).run(None, f) for f in feeds]
        self.base = session(g.artifact.SerializeToString(), threads, spinning=False)
        self.end_to_end = agreement(self.reference, [self.base.run(None, f) for f in feeds])
        self.latency_feed = {k: v[:1] for k, v in feeds[0].items()}
        self.cache: dict[tuple[str, ...], KeepFp32] = {}
        self.base_p50: float | None = None

    def measure(self, layers: list[Layer]) -> KeepFp32:
        from edgekit.backends.onnx.session import session

        key = tuple(x.node for x in layers)
        if key in self.cache:
            return self.cache[key]
        try:
            sess = session(keep_fp32(self.g, layers), self.threads, spinning=False)
        except Exception as exc:  # an ORT refusal of the edited graph: this candidate cannot be measured
            import logging

            logging.getLogger(__name__).debug("keep-FP32 graph for %s refused: %s", key, exc)
            self.cache[key] = KeepFp32(None)
            return self.cache[key]
        cosine = agreement(self.reference, [sess.run(None, f) for f in self.feeds])["cosine"]
        base, p50 = paired_p50(self.base, sess, self.latency_feed, self.timing)
        cost = p50 - base if p50 is not None and base is not None else None
        self.base_p50 = base if self.base_p50 is None else self.base_p50
        floor = max(COST_FLOOR_MS, NOISE_SHARE * (base or 0.0))
        recovered = cosine - self.end_to_end["cosine"] if cosine is not None and self.end_to_end["cosine"] is not None else None
        per_ms = recovered / max(cost, floor) if recovered is not None and cost is not None else None
        self.cache[key] = KeepFp32(cosine, p50, cost, per_ms)
        return self.cache[key]


def _analyze_onnx(reference: Reference, artifact: Path, feeds: list[Feed], threads: int, progress: Progress,
                  timing: Timing) -> DebugReport:
    import onnx

    g = Graphs(onnx.load(str(reference.path)), onnx.load(str(artifact)))
    modules = module_map(g.reference)
    layers = find_layers(g)
    notes = []
    if not layers:
        notes.append("no quantized Conv/Gemm/MatMul layer was found in the artifact")
    progress.step(f"local and accumulated error of {len(layers)} quantized layer(s), {len(feeds)} batch(es)")
    errors = layer_errors(g, layers, feeds, threads, progress.advance)
    progress.step("keeping layers in FP32 one at a time: whole-model cosine and latency cost")
    candidates = _Candidates(g, feeds, threads, timing)
    keep: dict[str, KeepFp32] = {}
    blocks: list[BlockReport] = []
    if len(layers) <= BLOCK_THRESHOLD:
        for i, x in enumerate(layers):
            keep[x.node] = candidates.measure([x])
            progress.advance("keep FP32", i + 1, len(layers))
    else:
        blocks, keep = _by_blocks(layers, modules, candidates, progress)
        notes.append(f"{len(layers)} layers > {BLOCK_THRESHOLD}: each block kept in FP32, then the {BISECT_BLOCKS} "
                     "blocks that recover the most bisected; layers not reached have no keep_fp32")
    reports = []
    for x in layers:
        e = errors[x.node]
        reports.append(LayerReport(x.node, modules.get(x.node), x.op_type, e.db("full"), e.db("accumulated"), e.db("weight"),
                                   e.db("activation"), keep.get(x.node)))
    ranked = sorted((r for r in reports if r.keep_fp32 and r.keep_fp32.recovered_per_ms is not None),
                    key=lambda r: (-r.keep_fp32.recovered_per_ms, r.local_sqnr_db if r.local_sqnr_db is not None else 1e9))
    for i, r in enumerate(ranked):
        r.rank = i + 1
    rest = sorted((r for r in reports if r.rank is None),
                  key=lambda r: r.local_sqnr_db if r.local_sqnr_db is not None else 1e9)
    return DebugReport("", "", "", "", 0, candidates.end_to_end, ranked + rest, blocks, notes)


def _block_of(layers: list[Layer], modules: dict[str, str]) -> dict[str, list[Layer]]:
    """Layers grouped by the shallowest module prefix that splits them (``layer1``, ``features.3``,
    ``encoder.layer.0``); a layer with no module joins the block of the layer before it."""
    best: dict[str, list[Layer]] = {}
    for depth in (1, 2, 3, 4):
        groups: dict[str, list[Layer]] = {}
        current = "(start)"
        for x in layers:
            module = modules.get(x.node)
            if module:
                current = ".".join(module.split(".")[:depth])
            groups.setdefault(current, []).append(x)
        best = groups
        if len(groups) >= 2:
            break
    return best


def _by_blocks(layers: list[Layer], modules: dict[str, str], candidates: _Candidates,
               progress: Progress) -> tuple[list[BlockReport], dict[str, KeepFp32]]:
    groups = _block_of(layers, modules)
    blocks = []
    for i, (name, members) in enumerate(groups.items()):
        blocks.append(BlockReport(name, [x.node for x in members], candidates.measure(members)))
        progress.advance("keep blocks FP32", i + 1, len(groups))
    keep: dict[str, KeepFp32] = {}
    worst = sorted(blocks, key=lambda b: -(b.keep_fp32.cosine or 0.0) if b.keep_fp32 else 0.0)[:BISECT_BLOCKS]
    for b in worst:
        items = groups[b.name]
        while len(items) > 1:
            halves = (items[: len(items) // 2], items[len(items) // 2:])
            measured = [candidates.measure(h) for h in halves]
            for h, m in zip(halves, measured):
                if len(h) == 1:
                    keep[h[0].node] = m
            items = halves[0] if (measured[0].cosine or 0.0) >= (measured[1].cosine or 0.0) else halves[1]
        keep.setdefault(items[0].node, candidates.measure(items))
    return blocks, keep
