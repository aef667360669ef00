"""The one ranking of keep-FP32 candidates, for `edgekit debug` (the full table) and for the recovery's precision
step (the ONNX node names to try, within a time budget; edgekit/recover/rank.py).

Each candidate (a layer, or a block of layers, kept in FP32 with the rest as built) is measured once for accuracy
(whole-model cosine against the FP32 reference). Its latency cost is timed afterwards, beside the other candidates:
a group of them and the artifact take turns call by call in a shuffled order, so every cost in a group is measured
under the same host load (a loaded host drifts between candidates timed one after another).

The rank is cosine recovered per millisecond of cost. Raw cosine, not dB: for small errors 1 - cosine is
proportional to the output's noise power, and the noise the layers add sums, so the cosine a layer's FP32 recovers
is additive across layers -- the quantity a greedy "most recovered per unit cost" choice needs. A cost the timing
cannot resolve (below max(COST_FLOOR_MS, NOISE_SHARE of the artifact's p50, twice the cost's standard error)) counts
as that floor, so unresolvable costs tie and the recovered cosine decides. Without timing (the recovery: its choices
must not depend on timing, so that two builds pick the same candidate) the rank is the recovered cosine alone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from edgekit.console import Progress
from edgekit.debug.layers import LAYER_OPS, Layer
from edgekit.debug.report import BlockReport, DebugReport, KeepFp32, LayerReport
from edgekit.debug.run import LayerErrors, Timing, agreement, sample_cosines
from edgekit.types import Feed

log = logging.getLogger(__name__)

COST_FLOOR_MS = 0.01  # a keep-FP32 cost below this (or NOISE_SHARE of the artifact's p50, or the noise) counts as this
NOISE_SHARE = 0.02
BLOCK_THRESHOLD = 40  # more quantized layers than this: keep whole blocks in FP32 first, then bisect
BISECT_BLOCKS = 3
TIME_GROUP = 8  # candidates timed together with the artifact (each a session in memory while timed)
DIGITS = 9  # recovered cosine compared to this many digits, so the order does not hang on float rounding

Run = Callable[[Feed], Any]  # one feed -> the model's outputs (a list of arrays)
Key = tuple[str, ...]


class Candidates:
    """Keep-FP32 candidates of one artifact. ``build(layers)`` returns the artifact with those layers in FP32 as a
    ``Run``. ``measure`` gives each one's whole-model cosine (once per set of layers); ``time_costs`` then times
    every measured candidate against the artifact (skipped when ``timing`` is None)."""

    def __init__(self, reference: list[list[Any]], base: Run, build: Callable[[list[Layer]], Run], feeds: list[Feed],
                 timing: Timing | None):
        self.reference, self.base, self.build, self.feeds, self.timing = reference, base, build, feeds, timing
        outputs = [base(f) for f in feeds]
        self.end_to_end = agreement(reference, outputs)
        # per-sample cosines of the output ``agreement`` reports (the lowest mean), for the recovered cosine's spread
        per_output = [sample_cosines(reference, outputs, i) for i in range(len(reference[0]))] if feeds else []
        self.output = int(np.argmin([c.mean() for c in per_output])) if per_output else 0
        self.base_cosines = per_output[self.output] if per_output else np.zeros(0)
        self.latency_feed = {k: v[:1] for k, v in feeds[0].items()}
        self.cache: dict[Key, KeepFp32] = {}
        self.layers: dict[Key, list[Layer]] = {}

    def measure(self, layers: list[Layer]) -> KeepFp32:
        key = tuple(x.node for x in layers)
        if key not in self.cache:
            self.cache[key], self.layers[key] = self._measure(layers), list(layers)
        return self.cache[key]

    def _measure(self, layers: list[Layer]) -> KeepFp32:
        try:
            run = self.build(layers)
            outputs = [run(f) for f in self.feeds]
            cosine = agreement(self.reference, outputs)["cosine"]
        except Exception as exc:  # the runtime refused the edited graph: this candidate cannot be measured
            log.debug("keep-FP32 graph for %s refused: %s", [x.node for x in layers], exc)
            return KeepFp32(None)
        now = self.end_to_end["cosine"]
        recovered = cosine - now if cosine is not None and now is not None else None
        gains = sample_cosines(self.reference, outputs, self.output) - self.base_cosines
        se = float(gains.std(ddof=1) / np.sqrt(len(gains))) if len(gains) > 1 else None
        return KeepFp32(cosine, recovered=recovered, recovered_se=se)

    def time_costs(self, progress: Progress | None = None) -> None:
        """The latency cost of every measured candidate, TIME_GROUP at a time, filled into its KeepFp32."""
        if self.timing is None:
            return
        keys = [k for k, v in self.cache.items() if v.cosine is not None]
        for start in range(0, len(keys), TIME_GROUP):
            group = keys[start:start + TIME_GROUP]
            runs = {k: self.build(self.layers[k]) for k in group}
            costs = interleaved_costs(self.base, runs, self.latency_feed, self.timing, seed=start)
            for k, c in costs.items():
                self.cache[k] = _with_cost(self.cache[k], c)
            if progress is not None:
                progress.advance("keep-FP32 latency", min(start + TIME_GROUP, len(keys)), len(keys))


@dataclass(frozen=True)
class Cost:
    """A candidate's timing against the artifact in one interleaved group: its p50, the artifact's, the cost as the
    median of the per-round differences, and that median's standard error."""

    base_p50_ms: float
    p50_ms: float
    cost_ms: float
    noise_ms: float


def interleaved_costs(base: Run, runs: dict[Key, Run], feed: Feed, timing: Timing, seed: int = 0) -> dict[Key, Cost]:
    """Time each of ``runs`` against ``base``: in every round each is called once, in a shuffled order (seeded), and a
    candidate's cost is the median over rounds of its time minus the artifact's in the same round. The difference
    within a round cancels the host's drift, the median ignores the calls a busy host stalls, and candidates timed in
    one group see the same load. Rounds are added (``timing.runs`` at a time, up to ``timing.max_runs``) while some
    cost's noise is above the resolution a quiet host gives (NOISE_SHARE of the artifact's p50)."""
    calls = {("__base__",): base, **runs}
    names = list(calls)
    for _ in range(timing.warmup):
        for name in names:
            calls[name](feed)
    spent: dict[Key, list[float]] = {name: [] for name in names}
    order = np.random.default_rng(seed)
    while True:
        for _ in range(timing.runs):
            for i in order.permutation(len(names)):
                name = names[int(i)]
                start = time.perf_counter()
                calls[name](feed)
                spent[name].append((time.perf_counter() - start) * 1e3)
        costs = {name: _cost(spent[("__base__",)], spent[name]) for name in runs}
        done = len(spent[("__base__",)]) + timing.runs > max(timing.max_runs, timing.runs)
        if done or all(2.0 * c.noise_ms <= max(COST_FLOOR_MS, NOISE_SHARE * c.base_p50_ms) for c in costs.values()):
            return costs


def _cost(base_ms: list[float], candidate_ms: list[float]) -> Cost:
    b, c = np.asarray(base_ms), np.asarray(candidate_ms)
    diff = c - b
    mad = float(np.median(np.abs(diff - np.median(diff)))) * 1.4826
    return Cost(float(np.median(b)), float(np.median(c)), float(np.median(diff)), 1.2533 * mad / np.sqrt(len(diff)))


def cost_floor(cost: Cost) -> float:
    """The smallest cost the timing resolves: below it a cost counts as the floor (and ties with the others there)."""
    return max(COST_FLOOR_MS, NOISE_SHARE * cost.base_p50_ms, 2.0 * cost.noise_ms)


def _with_cost(k: KeepFp32, c: Cost) -> KeepFp32:
    k.p50_ms, k.latency_cost_ms, k.latency_noise_ms = c.p50_ms, c.cost_ms, c.noise_ms
    if k.recovered is None:
        return k
    cost = max(c.cost_ms, cost_floor(c))
    k.recovered_per_ms = k.recovered / cost
    if k.recovered_se is not None:  # a cost at the floor is the floor, exactly; above it, its error adds
        cost_share = c.noise_ms / cost if c.cost_ms > cost_floor(c) else 0.0
        k.recovered_per_ms_se = float(np.hypot(k.recovered_se / cost, abs(k.recovered_per_ms) * cost_share))
    return k


def ranked(keys: list[Any], keep: Callable[[Any], KeepFp32 | None], tie: Callable[[Any], Any]) -> list[Any]:
    """``keys`` (each with a score) highest score first, where the measurement resolves it: the keys after a run's
    first whose score it cannot tell apart from the first's (their two-standard-error intervals overlap) join the
    run, and a run is ordered by the cosine recovered, the larger first. Without standard errors (the recovery's
    untimed ranking) each key is its own run. Ties left: ``tie``."""

    def k(x: Any) -> KeepFp32:
        found = keep(x)
        assert found is not None
        return found

    by_score = sorted(keys, key=lambda x: (-(score(k(x)) or 0.0), tie(x)))
    out: list[Any] = []
    i = 0
    while i < len(by_score):
        first, j = k(by_score[i]), i + 1
        if first.recovered_per_ms_se is not None:
            low = (score(first) or 0.0) - 2.0 * first.recovered_per_ms_se
            while j < len(by_score):
                other = k(by_score[j])
                if other.recovered_per_ms_se is None or (score(other) or 0.0) + 2.0 * other.recovered_per_ms_se < low:
                    break
                j += 1
        out += sorted(by_score[i:j], key=lambda x: (-round(k(x).recovered or 0.0, DIGITS), tie(x)))
        i = j
    return out


def score(k: KeepFp32 | None) -> float | None:
    """What the rank sorts by, highest first: recovered per ms when timed, else the recovered cosine."""
    if k is None:
        return None
    value = k.recovered_per_ms if k.recovered_per_ms is not None else k.recovered
    return round(value, DIGITS) if value is not None else None


def measure_layers(layers: list[Layer], modules: dict[str, str], candidates: Candidates, progress: Progress,
                   notes: list[str], deadline: float | None = None,
                   blocks: bool = True) -> tuple[dict[str, KeepFp32], list[BlockReport]]:
    """Every layer kept in FP32 alone; past BLOCK_THRESHOLD layers, blocks first and bisection in the worst
    (``blocks``), or the Conv/Gemm/MatMul layers first, one at a time. With a ``deadline`` (time.monotonic()),
    measuring stops there. Costs are timed afterwards (Candidates.time_costs), outside the deadline."""
    if blocks and len(layers) > BLOCK_THRESHOLD:
        notes.append(f"{len(layers)} layers > {BLOCK_THRESHOLD}: each block kept in FP32, then the {BISECT_BLOCKS} "
                     "blocks that recover the most bisected; layers not reached have no keep_fp32")
        found, keep = _by_blocks(layers, modules, candidates, progress, deadline)
    else:
        order = layers
        if len(layers) > BLOCK_THRESHOLD:
            order = [x for x in layers if x.op_type in LAYER_OPS] + [x for x in layers if x.op_type not in LAYER_OPS]
        found, keep = [], {}
        for i, x in enumerate(order):
            if _past(deadline):
                notes.append(f"time budget reached: {i} of {len(order)} layers kept in FP32 and measured")
                break
            keep[x.node] = candidates.measure([x])
            progress.advance("keep FP32", i + 1, len(order))
    candidates.time_costs(progress)
    return keep, found


def rank_nodes(layers: list[Layer], keep: dict[str, KeepFp32]) -> list[str]:
    """Node names, the measured ones by score (highest first; ties in name order), then the others in graph order."""
    scored = [x.node for x in layers if score(keep.get(x.node)) is not None]
    return ranked(scored, keep.get, lambda n: n) + [x.node for x in layers if x.node not in set(scored)]


def assemble(layers: list[Layer], errors: dict[str, LayerErrors], keep: dict[str, KeepFp32], modules: dict[str, str],
             end_to_end: dict[str, float | None], blocks: list[BlockReport], notes: list[str]) -> DebugReport:
    """The report: layers with a keep-FP32 measure ranked by score (ties: lower local SQNR first), then the others
    (no rank) by local SQNR, lowest first."""
    reports = []
    for x in layers:
        e = errors[x.node]
        reports.append(LayerReport(x.node, modules.get(x.node), x.op_type, e.db("full"), e.db("accumulated"), e.db("weight"),
                                   e.db("activation"), keep.get(x.node)))

    def local(r: LayerReport) -> float:
        return r.local_sqnr_db if r.local_sqnr_db is not None else 1e9

    order = ranked([r for r in reports if score(r.keep_fp32) is not None], lambda r: r.keep_fp32, local)
    for i, r in enumerate(order):
        r.rank = i + 1
    rest = sorted((r for r in reports if r.rank is None), key=local)
    return DebugReport("", "", "", "", 0, end_to_end, order + rest, blocks, notes)


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() > deadline


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


def _by_blocks(layers: list[Layer], modules: dict[str, str], candidates: Candidates, progress: Progress,
               deadline: float | None) -> tuple[list[BlockReport], dict[str, KeepFp32]]:
    groups = _block_of(layers, modules)
    blocks = []
    for i, (name, members) in enumerate(groups.items()):
        if _past(deadline):
            break
        blocks.append(BlockReport(name, [x.node for x in members], candidates.measure(members)))
        progress.advance("keep blocks FP32", i + 1, len(groups))
    keep: dict[str, KeepFp32] = {}
    worst = sorted(blocks, key=lambda b: -(b.keep_fp32.cosine or 0.0) if b.keep_fp32 else 0.0)[:BISECT_BLOCKS]
    for b in worst:
        items = groups[b.name]
        while len(items) > 1 and not _past(deadline):
            halves = (items[: len(items) // 2], items[len(items) // 2:])
            measured = [candidates.measure(h) for h in halves]
            for h, m in zip(halves, measured):
                if len(h) == 1:
                    keep[h[0].node] = m
            items = halves[0] if (measured[0].cosine or 0.0) >= (measured[1].cosine or 0.0) else halves[1]
        if len(items) == 1:
            keep.setdefault(items[0].node, candidates.measure(items))
    return blocks, keep
