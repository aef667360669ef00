"""The keep-FP32 ranking shared by `edgekit debug` and the recovery (edgekit/debug/rank.py): what decides the order
when costs are resolved, unresolved or not timed; the time budget; the interleaved timing's bookkeeping. Plain
numpy models (callables), no build: fast."""

from __future__ import annotations

import time

import numpy as np

from edgekit.console import Silent
from edgekit.debug.layers import Layer
from edgekit.debug.rank import Candidates, Cost, _with_cost, interleaved_costs, measure_layers, rank_nodes, score
from edgekit.debug.report import KeepFp32
from edgekit.debug.run import Timing

RNG = np.random.default_rng(0)
X = RNG.standard_normal((16, 4096)).astype(np.float32)
NOISE = {name: RNG.standard_normal((16, 4096)).astype(np.float32) for name in ("a", "b", "c", "d")}
SHARE = {"a": 0.02, "b": 0.05, "c": 0.01, "d": 0.0}  # each layer's share of the artifact's error


def _model(kept: set[str]):
    """The 'artifact' with ``kept`` layers in FP32: the reference plus every other layer's noise."""
    def run(feed):
        out = feed["x"].copy()
        for name, share in SHARE.items():
            if name not in kept:
                out = out + share * NOISE[name][: len(out)]
        return [out]
    return run


def _candidates(timing: Timing | None) -> tuple[list[Layer], Candidates]:
    layers = [Layer(n, "Conv", n) for n in SHARE]
    feeds = [{"x": X[:8]}, {"x": X[8:]}]
    reference = [[f["x"]] for f in feeds]
    return layers, Candidates(reference, _model(set()), lambda chosen: _model({x.node for x in chosen}), feeds, timing)


def test_untimed_rank_is_the_recovered_cosine_then_name_then_graph_order():
    layers, cands = _candidates(None)
    keep, blocks = measure_layers(layers, {}, cands, Silent(), [])
    assert blocks == [] and all(k.latency_cost_ms is None and k.recovered_per_ms is None for k in keep.values())
    assert rank_nodes(layers, keep) == ["b", "a", "c", "d"]  # d adds no error: recovers 0
    assert keep["b"].recovered > keep["a"].recovered > keep["c"].recovered > 0.0
    assert abs(keep["d"].recovered) < 1e-9
    keep["c"] = KeepFp32(None)  # a candidate the runtime refused: unranked, after the others
    assert rank_nodes(layers, keep) == ["b", "a", "d", "c"]


def test_a_spent_budget_measures_nothing_and_keeps_graph_order():
    layers, cands = _candidates(None)
    notes: list[str] = []
    keep, _ = measure_layers(layers, {}, cands, Silent(), notes, deadline=time.monotonic() - 1.0, blocks=False)
    assert keep == {} and rank_nodes(layers, keep) == ["a", "b", "c", "d"]
    assert notes and "0 of 4" in notes[0]


def test_costs_the_timing_cannot_resolve_tie_and_the_recovered_cosine_decides():
    artifact_p50 = 10.0  # resolution: 2 % of it (0.2 ms) or twice the cost's standard error, whichever is larger
    big = _with_cost(KeepFp32(0.9995, recovered=3e-4), Cost(artifact_p50, 10.15, 0.15, 0.05))
    small = _with_cost(KeepFp32(0.9993, recovered=1e-4), Cost(artifact_p50, 10.05, 0.05, 0.02))
    assert score(big) > score(small)  # 0.15 ms and 0.05 ms are both below 0.2 ms: equal cost, so what is recovered
    noisy = _with_cost(KeepFp32(0.9994, recovered=2e-4), Cost(artifact_p50, 11.0, 1.0, 0.8))
    assert noisy.recovered_per_ms == 2e-4 / 1.6  # its cost's standard error is 0.8 ms: the floor is 1.6 ms
    resolved = _with_cost(KeepFp32(0.9996, recovered=4e-4), Cost(artifact_p50, 14.0, 4.0, 0.1))
    assert score(small) > score(resolved)  # a real 4 ms for 4x the recovery is less per ms than a free 1x


def test_interleaved_costs_call_every_candidate_once_per_round():
    calls = {"base": 0, "one": 0, "two": 0}

    def counting(name):
        def run(feed):
            calls[name] += 1
            return [feed["x"]]
        return run

    costs = interleaved_costs(counting("base"), {("one",): counting("one"), ("two",): counting("two")}, {"x": X[:1]},
                              Timing(warmup=2, runs=7, max_runs=7))
    assert calls == {"base": 9, "one": 9, "two": 9}
    assert set(costs) == {("one",), ("two",)} and all(c.noise_ms >= 0.0 and c.base_p50_ms > 0.0 for c in costs.values())
    interleaved_costs(counting("base"), {("one",): counting("one")}, {"x": X[:1]}, Timing(warmup=0, runs=4, max_runs=10))
    assert calls["one"] - 9 in (4, 8)  # a cost not resolved after 4 rounds gets 4 more, never past 10 rounds


def test_timed_candidates_get_a_cost_and_a_rank_per_ms():
    layers, cands = _candidates(Timing(warmup=1, runs=9))
    keep, _ = measure_layers(layers, {}, cands, Silent(), [])
    assert all(k.latency_cost_ms is not None and k.latency_noise_ms is not None and k.p50_ms is not None
               for k in keep.values())
    # numpy adds in microseconds: every cost is under the 0.01 ms floor or its own noise: the recovered order
    assert rank_nodes(layers, keep)[0] == "b"
