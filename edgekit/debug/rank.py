"""Keep-FP32 candidates measured once each (whole-model cosine, latency cost timed in pairs), blocks then bisection for
big graphs, and the ranking by cosine recovered per millisecond. Shared by the ONNX and the torch.ao analyses."""

from __future__ import annotations

import logging
from typing import Any, Callable

from edgekit.console import Progress
from edgekit.debug.layers import Layer
from edgekit.debug.report import BlockReport, DebugReport, KeepFp32, LayerReport
from edgekit.debug.run import LayerErrors, Timing, agreement, paired_timing
from edgekit.types import Feed

log = logging.getLogger(__name__)

COST_FLOOR_MS = 0.01  # a keep-FP32 cost below this (or NOISE_SHARE of the artifact's p50, or the noise) counts as this
NOISE_SHARE = 0.02
BLOCK_THRESHOLD = 40  # more quantized layers than this: keep whole blocks in FP32 first, then bisect
BISECT_BLOCKS = 3

Run = Callable[[Feed], Any]  # one feed -> the model's outputs (a list of arrays)


class Candidates:
    """Keep-FP32 candidates of one artifact, each measured once: whole-model cosine and paired latency.
    ``build(layers)`` returns the artifact with those layers in FP32 as a ``Run``."""

    def __init__(self, reference: list[list[Any]], base: Run, build: Callable[[list[Layer]], Run], feeds: list[Feed],
                 timing: Timing):
        self.reference, self.base, self.build, self.feeds, self.timing = reference, base, build, feeds, timing
        self.end_to_end = agreement(reference, [base(f) for f in feeds])
        self.latency_feed = {k: v[:1] for k, v in feeds[0].items()}
        self.cache: dict[tuple[str, ...], KeepFp32] = {}

    def measure(self, layers: list[Layer]) -> KeepFp32:
        key = tuple(x.node for x in layers)
        if key not in self.cache:
            self.cache[key] = self._measure(layers)
        return self.cache[key]

    def _measure(self, layers: list[Layer]) -> KeepFp32:
        try:
            run = self.build(layers)
            cosine = agreement(self.reference, [run(f) for f in self.feeds])["cosine"]
        except Exception as exc:  # the runtime refused the edited graph: this candidate cannot be measured
            log.debug("keep-FP32 graph for %s refused: %s", [x.node for x in layers], exc)
            return KeepFp32(None)
        t = paired_timing(self.base, run, self.latency_feed, self.timing)
        # a cost within the timing's noise (2 standard errors) or under 2 % of the artifact's p50 is not told from 0
        floor = max(COST_FLOOR_MS, NOISE_SHARE * t.base_p50_ms, 2.0 * t.noise_ms)
        now = self.end_to_end["cosine"]
        recovered = cosine - now if cosine is not None and now is not None else None
        per_ms = recovered / max(t.cost_ms, floor) if recovered is not None else None
        return KeepFp32(cosine, t.p50_ms, t.cost_ms, per_ms)


def keep_each(layers: list[Layer], modules: dict[str, str], candidates: Candidates, progress: Progress,
              notes: list[str]) -> tuple[dict[str, KeepFp32], list[BlockReport]]:
    """Every layer kept in FP32 alone; past BLOCK_THRESHOLD layers, blocks first and bisection in the worst."""
    if len(layers) <= BLOCK_THRESHOLD:
        keep = {}
        for i, x in enumerate(layers):
            keep[x.node] = candidates.measure([x])
            progress.advance("keep FP32", i + 1, len(layers))
        return keep, []
    notes.append(f"{len(layers)} layers > {BLOCK_THRESHOLD}: each block kept in FP32, then the {BISECT_BLOCKS} "
                 "blocks that recover the most bisected; layers not reached have no keep_fp32")
    blocks, keep = _by_blocks(layers, modules, candidates, progress)
    return keep, blocks


def assemble(layers: list[Layer], errors: dict[str, LayerErrors], keep: dict[str, KeepFp32], modules: dict[str, str],
             end_to_end: dict[str, float | None], blocks: list[BlockReport], notes: list[str]) -> DebugReport:
    """The report: layers with a keep-FP32 measure ranked by recovered per ms (ties: lower local SQNR first), then
    the others (no rank) by local SQNR, lowest first."""
    reports = []
    for x in layers:
        e = errors[x.node]
        reports.append(LayerReport(x.node, modules.get(x.node), x.op_type, e.db("full"), e.db("accumulated"), e.db("weight"),
                                   e.db("activation"), keep.get(x.node)))

    def local(r: LayerReport) -> float:
        return r.local_sqnr_db if r.local_sqnr_db is not None else 1e9

    ranked = sorted((r for r in reports if r.keep_fp32 and r.keep_fp32.recovered_per_ms is not None),
                    key=lambda r: (-r.keep_fp32.recovered_per_ms, local(r)))
    for i, r in enumerate(ranked):
        r.rank = i + 1
    rest = sorted((r for r in reports if r.rank is None), key=local)
    return DebugReport("", "", "", "", 0, end_to_end, ranked + rest, blocks, notes)


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


def _by_blocks(layers: list[Layer], modules: dict[str, str], candidates: Candidates,
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
