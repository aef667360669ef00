"""The search: when a static INT8 target misses a gate after validation, try candidates cheapest first, stop at the
first that meets every gate or at the budget, write the best so far in place of the original.

    calibration  the other calibration methods (mse: per tensor the least-error range, first; percentile, entropy,
                 minmax)
    recipe       (other models) only Conv/Gemm/MatMul quantized; cross-layer equalization; bias correction;
                 SmoothQuant-style smoothing, one alpha for every MatMul input (0.95, 0.75, 0.5), then the
                 runner-up alpha for one role's inputs at a time; 8-bit weights
    prefix       (CNNs) the first k quantized nodes kept FP32, k doubled until a candidate meets the accuracy
                 gates, then bisected down to the smallest k that does (the fastest of them)
    roles        (other models: transformers) one layer of every block kept FP32 together, a role at a time
                 (every FFN down-projection, ...), greedily
    precision    the layers ``rank_layers`` blames kept FP32 one by one (greedy), then every exclusion that
                 turns out unnecessary dropped again

Order by model kind: a CNN with depthwise convolutions tries the recipe repairs first (equalization and bias correction
are what is known to work there), then the FP32 prefix, then calibration and the greedy layers; another CNN the prefix
first; any other model calibration, recipe, roles, precision. Another backend family's builder (a ``Family``,
family.py) may name its own order (``steps``), methods, repairs, its layers for the prefix (``prefix_order``) and its
ranking, in the names its builds exclude. In a deep CNN every layer amplifies the error of the activations before it, and a lone FP32 node still reads and writes quantized tensors: only a run of FP32 nodes takes
the tensors between them out of quantization, hence the prefix.

Cost: a candidate is built from the activation statistics of its graph and method, collected once per search (the
slow part: bias correction reuses its base graph's); its accuracy is measured first, and it is timed only when it
could meet every gate or is more accurate than the best so far. The budget check estimates the next attempt from the
slowest recent one of its kind (new statistics or not), so a cheap candidate is still tried when an expensive one no
longer fits.

Best so far: a candidate meeting every gate (the one with the fewest FP32 layers); otherwise, among timed candidates
not slower than the FP32 baseline (or the original, when INT8 is slower already), the one meeting most gates, then the
most accurate (cosine to 6 digits), then the earlier. Every attempt is recorded (types.Recovery); an untimed one has no
p50 or speed-up and is never chosen.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgekit.console import Progress
from edgekit.faults import raise_if_signalled
from edgekit.recover.candidates import GRAPHS, StaticQdq, Spec, describe, iter_methods, smoothed_graph, smoothing_of
from edgekit.recover.family import Family
from edgekit.recover.meter import SPEED_GATES, Measurement, Meter
from edgekit.recover.rank import compute_nodes, quantized_nodes, rank_layers, role_groups
from edgekit.types import Metrics, Recovery, RecoveryAttempt, TargetResult

SLOWER_TOLERANCE = 0.9  # a candidate's speed-up may be this fraction of the bound and still count as "not slower"
MAX_FP32_SHARE = 0.5  # the precision step keeps at most this share of the quantized Conv/Gemm/MatMul FP32
PATIENCE = 5  # the precision step stops after this many layers in a row that did not help
ROLE_ROUNDS = 3  # the roles step keeps at most this many roles FP32
RECENT = 3  # the budget check estimates the next attempt from this many recent ones of its kind


class _OutOfBudget(Exception):
    pass


@dataclass
class Tried:
    attempt: RecoveryAttempt
    spec: Spec
    path: Path | None  # None: the original artifact
    notes: dict[str, Any] = field(default_factory=dict)
    passed_count: int = 0
    timed: bool = True
    accurate: bool = False  # every gate but the speed gates met (or not decided)


@dataclass
class Outcome:
    recovery: Recovery
    path: Path | None  # the chosen candidate's file, None when the original stays
    notes: dict[str, Any]


def _attempt(step: str, change: str, m: Measurement, seconds: float, exclude: tuple[str, ...]) -> RecoveryAttempt:
    return RecoveryAttempt(step, change, m.cosine, m.metrics.accuracy, m.p50_ms, m.speedup, round(seconds, 3), m.passed,
                           tuple(exclude))


class Search:
    """One target's search; ``run`` returns the Outcome (attempts and the file to write)."""

    def __init__(self, name: str, result: TargetResult, builder: Family, meter: Meter, configured: Spec,
                 budget_s: float, progress: Progress, tmp: Path):
        self.name, self.builder, self.meter, self.base, self.budget_s = name, builder, meter, configured, budget_s
        self.progress, self.tmp = progress, tmp
        self.start = time.monotonic()
        # seconds of the attempts so far that collected new statistics (True; before any, the original build) or not
        self.costs: dict[bool, list[float]] = {True: [float(result.build_seconds or 0.0)], False: []}
        # the model kind orders the steps of static QDQ; the other backend families (recover/dynamic.py, torch_ao.py)
        # have no prefix step and run calibration, recipe, precision
        self.kind = model_kind(builder.reference) if isinstance(builder, StaticQdq) else "other"
        gates = result.gates
        latency = result.latency
        cosine = result.metrics.primary["worst"]["cosine"] if result.metrics is not None else None
        original = RecoveryAttempt("original", "as built", cosine, result.metrics.accuracy if result.metrics else None,
                                   latency.stats.p50_ms if latency else None, latency.speedup_vs_ort_fp32 if latency else None,
                                   result.build_seconds or 0.0, all(g.passed is not False for g in gates), ())
        self.tried = [Tried(original, configured, None, passed_count=sum(g.passed is True for g in gates))]
        speed = original.speedup
        self.min_speedup = SLOWER_TOLERANCE * min(1.0, speed) if speed else 0.0
        # whether a speed gate is decided for this target (not: a model too small to time, a host that is not the
        # device); when none is, timings never steer the search (``best_start``)
        self.speed_decided = any(g.gate in SPEED_GATES and g.passed is not None for g in gates)

    # ------------------------------------------------------------------------------------------ attempts
    def remaining(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def cost(self, fresh: bool) -> float:
        """The expected seconds of an attempt of this kind: the slowest of the last RECENT ones (a one-off slow
        attempt, such as bias correction's first build, does not hold back every cheap attempt after it)."""
        return max(self.costs[fresh][-RECENT:], default=0.0)

    def fits(self, spec: Spec) -> bool:
        """Whether ``spec`` may fit in what is left of the budget; raises _OutOfBudget when not even the cheapest
        kind of attempt does."""
        left = self.remaining()
        if left <= 0 or left < self.cost(False):
            raise _OutOfBudget
        return left >= self.cost(self._fresh(spec))

    def _fresh(self, spec: Spec) -> bool:
        """Whether building ``spec`` collects new statistics (a builder that cannot tell: every build does)."""
        return self.builder.fresh(spec)

    def more_accurate(self, metrics: Metrics) -> bool:
        """Whether a candidate measuring ``metrics`` is more accurate than the best so far (worth timing)."""
        best = self.best().attempt
        if metrics.accuracy is not None and best.accuracy is not None and metrics.accuracy != best.accuracy:
            return metrics.accuracy > best.accuracy
        cosine = metrics.primary["worst"]["cosine"]
        return best.cosine is None or round(float(cosine), 6) > round(best.cosine, 6)

    def attempt(self, step: str, spec: Spec, change: str | None = None) -> bool:
        """Build and measure ``spec``; True when it meets every gate. Raises _OutOfBudget when no attempt fits."""
        if any(t.spec == spec for t in self.tried) or not self.fits(spec):
            return False
        fresh = self._fresh(spec)
        began = time.monotonic()
        path = self.tmp / f"candidate_{len(self.tried)}.onnx"
        change = change or describe(spec, self.base)
        try:
            notes = self.builder.build(spec, path)
            m = self.meter.measure(path, self.more_accurate)
        except Exception as exc:  # a candidate the quantizer or ORT rejects is skipped, the search goes on
            raise_if_signalled()  # not when it was Ctrl-C, re-raised by the library as its own error
            self.progress.note(f"{self.name}: recovery candidate '{change}' failed: {type(exc).__name__}: {str(exc)[:200]}")
            return False
        seconds = time.monotonic() - began
        self.costs[fresh].append(seconds)
        a = _attempt(step, change, m, seconds, spec.exclude)
        accurate = all(g.passed is not False for g in m.gates if g.gate not in SPEED_GATES)
        self.tried.append(Tried(a, spec, path, notes, sum(g.passed is True for g in m.gates), m.timed, accurate))
        speed = f", {a.speedup:.2f}x" if a.speedup else ("" if m.timed else ", not timed (not more accurate than the best)")
        self.progress.step(f"recovery {self.name} [{len(self.tried) - 1}] {step}: {change}: cosine {a.cosine:.6f}{speed}"
                           f"{' meets every gate' if a.gates_passed else ''}")
        return a.gates_passed

    def best(self, among: list[Tried] | None = None) -> Tried:
        """The best so far (module docstring); the original when nothing else qualifies."""
        pool = [t for t in (among or self.tried) if t.path is None or t.attempt.gates_passed
                or (t.timed and (t.attempt.speedup or 0.0) >= self.min_speedup)]

        def key(t: Tried) -> tuple[Any, ...]:
            a = t.attempt
            cosine = round(a.cosine, 6) if a.cosine is not None else -math.inf
            if a.gates_passed:  # meeting every gate: the fewest FP32 layers (what pruning found), then the most accurate
                return (1, t.passed_count, -len(a.excluded), cosine)
            return (0, t.passed_count, a.accuracy if a.accuracy is not None else -math.inf, cosine)
        # max() keeps the first of equals: a tie goes to the earlier attempt (closer to the configured recipe), not to
        # the faster one, since timing noise would make the choice differ between two builds of the same config
        return max(pool or self.tried[:1], key=key)

    # --------------------------------------------------------------------------------------------- steps
    def run(self) -> Outcome:
        met = False
        steps = {"depthwise": (self.recipe, self.prefix, self.calibration, self.precision),
                 "cnn": (self.prefix, self.recipe, self.calibration, self.precision)}.get(
                     self.kind, (self.calibration, self.recipe, self.roles, self.precision))
        own = self.builder.steps  # a family's own order (recover/torch_ao.py: its repairs first)
        if own:
            named = {"calibration": self.calibration, "recipe": self.recipe, "prefix": self.prefix, "roles": self.roles,
                     "precision": self.precision}
            steps = tuple(named[s] for s in own)
        try:
            met = any(step() for step in steps)
        except _OutOfBudget:
            self.progress.note(f"{self.name}: recovery stopped at its budget of {self.budget_s:g} s")
        chosen = self.best()
        index = self.tried.index(chosen)
        recovery = Recovery(True, self.budget_s, round(time.monotonic() - self.start, 3), met and chosen.attempt.gates_passed,
                            index if chosen.path is not None else None, tuple(t.attempt for t in self.tried))
        return Outcome(recovery, chosen.path, chosen.notes)

    def calibration(self) -> bool:
        methods = self.builder.methods(self.base.method)
        if methods is None:
            methods = iter_methods(self.base.method)
        return any(self.attempt("calibration", dataclasses.replace(self.base, method=m)) for m in methods)

    def recipe(self) -> bool:
        repairs = self.builder.repairs()
        if repairs is not None:  # other backend families: their own repairs, each applied to the best so far
            return any(self.attempt("recipe", repair(self.best_start().spec)) for repair in repairs)
        # FP32 elementwise and normalization ops fix transformers (softmax, GELU, LayerNorm); in a CNN they are only
        # Add/Relu/pools between quantized convs, where Q/DQ pairs around them cost speed and no accuracy is gained.
        # Tried first, so that the graph repairs below quantize what a transformer can quantize well.
        if self.kind == "other" and self.attempt("recipe", dataclasses.replace(self.best().spec, compute_only=True)):
            return True
        best = self.best().spec
        for graph in GRAPHS[1:]:
            if self.remaining() < self.cost(False):
                raise _OutOfBudget
            # smoothing is for the MatMul's input: a quantized LayerNorm or Reshape before it would round the tensor
            # before it is smoothed, so the ops between stay FP32
            spec = Spec(best.method, graph, compute_only=best.compute_only or graph.startswith("smoothed"))
            if self.builder.graph(graph, best.method) is not None and self.attempt("recipe", spec):
                return True
        if self.smoothing_by_role():
            return True
        from edgekit.backends.onnx.qdq import resolved_reduce_range
        from edgekit.hostinfo import has_int8_dot

        if resolved_reduce_range(self.builder.qdq.reduce_range) and has_int8_dot():
            return self.attempt("recipe", dataclasses.replace(self.best().spec, reduce_range=False))
        return False

    def smoothing_by_role(self) -> bool:
        """Transformers: after one smoothing alpha for every MatMul input, the runner-up alpha for the inputs of one
        role at a time (``StaticQdq.smoothing_roles``: every FFN down-projection's input, ...), in graph order, each
        kept when it raised the cosine. Roles differ: on MiniLM the Q/K/V input wants 0.95, the rest 0.75."""
        smoothed = [t for t in self.tried if t.spec.graph.startswith("smoothed-") and not smoothing_of(t.spec.graph)[1]
                    and t.attempt.cosine is not None]  # one alpha for every input
        if len(smoothed) < 2:
            return False
        smoothed.sort(key=lambda t: -round(t.attempt.cosine, 6))  # stable: a tie keeps the higher alpha (tried first)
        current = smoothed[0]
        alpha, other = smoothing_of(current.spec.graph)[0], smoothing_of(smoothed[1].spec.graph)[0]
        by_role: dict[str, float] = {}
        for role in self.builder.smoothing_roles():
            spec = dataclasses.replace(current.spec, graph=smoothed_graph(alpha, {**by_role, role: other}))
            if self.attempt("recipe", spec):  # (skipped when a fresh statistics pass no longer fits the budget)
                return True
            got = next((t for t in self.tried if t.spec == spec), None)
            if got is not None and got.attempt.cosine is not None and round(got.attempt.cosine, 6) > round(current.attempt.cosine, 6):
                by_role[role], current = other, got
        return False

    def best_start(self) -> Tried:
        """Where the precision steps start: the best candidate so far; where no speed gate is decided, the one
        meeting most gates, then the most accurate, then the earlier, whatever its timing (the speed floor would make
        the path depend on the timing noise of a sub-millisecond model: two builds, two searches)."""
        if not self.speed_decided:  # the original included: a repair that lost accuracy is no start
            return max(self.tried, key=lambda t: (t.passed_count, t.attempt.accuracy if t.attempt.accuracy is not None else -math.inf,
                                                  round(t.attempt.cosine, 6) if t.attempt.cosine is not None else -math.inf))
        return self.best(among=[t for t in self.tried if t.path is not None and t.timed] or None)

    def starting_point(self) -> tuple[Tried, Path]:
        """``best_start`` and its file (the original spec rebuilt when the original is the best: its file is the build's,
        not this search's)."""
        start = self.best_start()
        artifact = start.path or self.builder.tmp / "start.onnx"
        if start.path is None and not artifact.exists():
            self.builder.build(start.spec, artifact)
        return start, artifact

    def prefix(self) -> bool:
        """The first k quantized nodes (graph order) FP32 (module docstring): k = 2, 4, 8, ... while at most
        MAX_FP32_SHARE of the compute nodes are FP32, until a candidate meets the accuracy gates; then the smallest
        such k by bisection (fewer FP32 nodes: faster). True when that candidate meets the speed gates too."""
        import onnx

        own = self.builder.prefix_order()  # other families: their layers in order, names their builds exclude
        if own is not None:
            start = self.best_start()
            order, compute = own
        else:
            start, artifact = self.starting_point()
            order = [n.name for n in quantized_nodes(onnx.load(str(artifact)))]
            compute = compute_nodes(artifact)
        spec = start.spec
        limit = int(len(compute) * MAX_FP32_SHARE)
        if not order:
            return False

        def candidate(k: int) -> Spec:
            return dataclasses.replace(spec, exclude=tuple(dict.fromkeys([*spec.exclude, *order[:k]])))

        def accurate(k: int) -> bool:
            change = f"FP32 prefix: the first {k} quantized nodes ({order[0]} .. {order[k - 1]})"
            if own is not None:  # the family's own words for what the candidate keeps float
                change = f"prefix of {k} layers: {describe(candidate(k), spec)}"
            self.attempt("prefix", candidate(k), change)
            return any(t.spec == candidate(k) and t.accurate for t in self.tried)

        sizes = [k for k in (2 ** i for i in range(1, 32)) if k < len(order)]
        allowed = [k for k in sizes if len(compute.intersection([*spec.exclude, *order[:k]])) <= limit]
        # accuracy grows with k and speed falls: the smallest k meeting the accuracy gates is the fastest of them,
        # so it meets every gate or none does
        k = smallest_passing(allowed, accurate)
        return k is not None and any(t.spec == candidate(k) and t.attempt.gates_passed for t in self.tried)

    def roles(self) -> bool:
        """Transformers: one layer of every block kept FP32 together, a role at a time (``role_groups``: every FFN
        down-projection, every key projection, ...). The error of a stack of blocks is spread over its blocks, so
        no single layer recovers it while its role in every block can. Each round tries every remaining role on
        top of the best so far and keeps the one that raised the cosine most; at most ROLE_ROUNDS rounds and
        MAX_FP32_SHARE of the compute layers FP32."""
        if not isinstance(self.builder, StaticQdq):
            return False
        start, artifact = self.starting_point()
        compute = compute_nodes(artifact)
        groups = role_groups(self.builder.preprocessed(start.spec.graph, start.spec.method), compute)
        limit = int(len(compute) * MAX_FP32_SHARE)
        current = start
        for _ in range(ROLE_ROUNDS):
            best: Tried | None = None
            for role, nodes in groups.items():
                exclude = tuple(dict.fromkeys([*current.spec.exclude, *nodes]))
                if len(compute.intersection(exclude)) > limit:
                    continue
                trial = dataclasses.replace(current.spec, exclude=exclude)
                if self.attempt("roles", trial, f"FP32: every {role} ({len(nodes)} layers)"):
                    return True
                last = self.tried[-1]
                if last.spec == trial and (best is None or (last.attempt.cosine or 0.0) > (best.attempt.cosine or 0.0)):
                    best = last
            if best is None or (best.attempt.cosine or 0.0) <= (current.attempt.cosine or 0.0):
                return False
            current = best
            groups = {r: n for r, n in groups.items() if not set(n) <= set(current.spec.exclude)}
        return False

    def precision(self) -> bool:
        start, artifact = self.starting_point()
        spec = start.spec
        seconds = max(1.0, min(60.0, self.remaining() / 3))
        own = self.builder.rank(spec, artifact, seconds)  # other families rank their own layers (names they exclude)
        if own is not None:
            ranked, compute = own
        else:
            fp32 = self.builder.preprocessed(spec.graph, spec.method)
            ranked = rank_layers(artifact, fp32, self.builder.feeds(), seconds)
            compute = compute_nodes(artifact)  # never a silent FP32: at least half of them stay INT8
        limit = int(len(compute) * MAX_FP32_SHARE)
        excluded: list[str] = list(spec.exclude)
        current, idle = start, 0
        def members(entries: list[str]) -> set[str]:  # an entry may be several layers joined by "+" (torch_ao.JOIN)
            return {m for e in entries for m in e.split("+")}

        for node in ranked:
            if idle >= PATIENCE:
                break
            if members([node]) <= members(excluded):  # already FP32 (a member of a group kept FP32)
                continue
            if members([node]) & compute and len(compute & members([*excluded, node])) > limit:
                continue
            trial = dataclasses.replace(spec, exclude=tuple(excluded + [node]))
            if self.attempt("precision", trial, describe(trial, current.spec)):
                return self.prune(self.tried[-1])
            last = self.tried[-1]
            if last.spec == trial and (last.attempt.cosine or 0.0) > (current.attempt.cosine or 0.0):
                excluded.append(node)  # it helped: keep it FP32 and go on
                current, idle = last, 0
            else:
                idle += 1
        return False

    def prune(self, passing: Tried) -> bool:
        """Drop every exclusion the passing candidate does not need (each drop re-measured)."""
        keep = list(passing.spec.exclude)
        for node in list(keep[:-1]):
            trial = dataclasses.replace(passing.spec, exclude=tuple(n for n in keep if n != node))
            try:
                if self.attempt("precision", trial, describe(trial, passing.spec)):
                    keep.remove(node)
                    passing = self.tried[-1]
            except _OutOfBudget:
                break
        return True


def smallest_passing(sizes: list[int], passes: Callable[[int], bool]) -> int | None:
    """The smallest size that ``passes``, trying ``sizes`` (increasing) in turn until one does, then bisecting
    between it and the last that did not (``passes`` is assumed monotonic); None when none of ``sizes`` passes.
    Out of budget during the bisection, the smallest passing size found so far."""
    passing, failing = None, 0
    for k in sizes:
        if passes(k):
            passing = k
            break
        failing = k
    if passing is None:
        return None
    while passing - failing > 1:
        mid = (passing + failing) // 2
        try:
            ok = passes(mid)
        except _OutOfBudget:
            break
        passing, failing = (mid, failing) if ok else (passing, mid)
    return passing


def model_kind(reference: Path) -> str:
    """"depthwise" (mostly convolutions, some depthwise), "cnn" (mostly convolutions), or "other" (a ViT's patch
    embedding does not make it a CNN)."""
    import onnx

    graph = onnx.load(str(reference), load_external_data=False).graph
    dims = {i.name: list(i.dims) for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    if len(convs) * 2 < sum(n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") for n in graph.node):
        return "other"
    for n in convs:
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        weight = dims.get(n.input[1], []) if len(n.input) > 1 else []
        if group > 1 and len(weight) > 1 and weight[0] == group and weight[1] == 1:
            return "depthwise"
    return "cnn"


def write_choice(outcome: Outcome, dst: Path) -> None:
    """Replace the target's artifact file with the chosen candidate (nothing to do when the original stays)."""
    if outcome.path is None:
        return
    from edgekit.fsutil import atomic_move

    staged = dst.with_name(f".{dst.name}.recovered")
    shutil.copyfile(outcome.path, staged)
    atomic_move(staged, dst)
