"""Recovery candidates of a dynamic INT8 target on ONNX Runtime (ort-int8-dynamic): each is a ``DynamicSpec``
(weight granularity, weight range, MatMul-only, nodes kept FP32) quantized by the target's own quantizer
(edgekit/backends/ort/dynamic.py) from one prepared FP32 graph: the build's rewrites, smoothing and FP32 fallback
run once, so a candidate differs from the original build only in what its spec changes, and the node names the
ranking blames are the ones ``nodes_to_exclude`` reads. Dynamic mode has no calibration step (ranges are taken at
run time)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from edgekit.backends.base import CalibrationSettings
from edgekit.backends.calibration import calibration_feeds
from edgekit.backends.onnx.census import onnx_census
from edgekit.backends.ort.dynamic import Prepared, prepare_dynamic, quantize_prepared
from edgekit.backends.ort.recipe import OrtRecipe
from edgekit.recover.candidates import exclusion_changes
from edgekit.recover.family import Family
from edgekit.types import FeedSource, TensorSpec

RANK_SAMPLES = 16  # calibration samples the layer ranking reads (as for static QDQ: recover/candidates.py)
CONV_OPS = ("Conv", "ConvTranspose")
MATMUL_OPS = ("MatMul", "Gemm")
JOIN = "+"  # an exclusion entry of several nodes kept FP32 together (a role group: ``rank``)


@dataclass(frozen=True)
class DynamicSpec:
    """How one dynamic candidate is built; None: the recipe's value."""

    method: str = "dynamic"  # activations get their range at run time: no calibration method to vary
    per_channel: bool | None = None
    reduce_range: bool | None = None
    matmul_only: bool = False  # Conv/ConvTranspose stay FP32 (ConvInteger is slow and per-tensor on its input)
    exclude: tuple[str, ...] = ()  # nodes of the prepared graph kept FP32

    def describe(self, base: "DynamicSpec") -> str:
        parts = []
        if self.per_channel is not None and self.per_channel != base.per_channel:
            parts.append(f"per_channel = {str(self.per_channel).lower()}")
        if self.reduce_range is not None and self.reduce_range != base.reduce_range:
            parts.append(f"reduce_range = {str(self.reduce_range).lower()} (8-bit weights: this host has exact INT8 dot products)")
        if self.matmul_only and not base.matmul_only:
            parts.append("only MatMul/Gemm quantized (Conv/ConvTranspose FP32)")
        parts += exclusion_changes(self.exclude, base.exclude, "FP32")
        return "; ".join(parts) or "as before"


class DynamicBuilder(Family):
    """Builds, describes and ranks candidates of one ort dynamic INT8 target."""

    def __init__(self, reference: Path, recipe: OrtRecipe, calib: FeedSource | None, specs: tuple[TensorSpec, ...],
                 settings: CalibrationSettings, tmp: Path, threads: int = 2, min_int8_fraction: float = 0.0):
        """``min_int8_fraction``: the target's gate; MatMul-only is not tried where it would leave fewer INT8 layers."""
        self.reference, self.recipe, self.calib, self.specs, self.settings, self.tmp = reference, recipe, calib, specs, settings, tmp
        self.threads, self.min_int8_fraction = threads, min_int8_fraction
        self._prepared: Prepared | None = None

    # the search's order (recover/search.py): no calibration step (ranges are taken at run time), and no roles step:
    # the ranking below measures role groups beside single layers, from the same start whatever the timings
    steps = ("recipe", "precision")

    @property
    def prepared(self) -> Prepared:
        if self._prepared is None:
            where = self.tmp / "prepared"
            where.mkdir(parents=True, exist_ok=True)
            self._prepared = prepare_dynamic(self.reference, where, self.recipe, self.calib, self.specs, self.settings)
        return self._prepared

    def recipe_for(self, spec: DynamicSpec) -> OrtRecipe:
        r = self.recipe
        changes: dict[str, Any] = {}
        if spec.per_channel is not None:
            changes["per_channel"] = spec.per_channel
        if spec.reduce_range is not None:
            changes["reduce_range"] = spec.reduce_range
        if spec.matmul_only:
            changes["exclude_op_types"] = tuple(sorted(set(r.exclude_op_types) | set(CONV_OPS)))
        return dataclasses.replace(r, **changes)

    def build(self, spec: DynamicSpec, dst: Path) -> dict[str, Any]:
        work = self.tmp / f"work_{dst.stem}"
        work.mkdir(parents=True, exist_ok=True)
        exclude = tuple(dict.fromkeys(n for entry in spec.exclude for n in entry.split(JOIN)))
        notes = {**self.prepared.notes, **quantize_prepared(self.prepared, dst, self.recipe_for(spec), work, exclude)}
        if spec.exclude:
            notes["recovery_fp32"] = list(exclude)
        notes["int8_layers"] = onnx_census(dst).to_dict()
        return notes

    # ------------------------------------------------------------------------------------ the search's steps
    def methods(self, configured: str) -> tuple[str, ...]:
        return ()

    def repairs(self) -> list[Callable[[DynamicSpec], DynamicSpec]]:
        """The recipe repairs that apply to this recipe, host and graph, cheapest first."""
        import onnx

        from edgekit.backends.onnx.qdq import resolved_reduce_range
        from edgekit.hostinfo import has_int8_dot

        out: list[Callable[[DynamicSpec], DynamicSpec]] = []
        if not self.recipe.per_channel:
            out.append(lambda s: dataclasses.replace(s, per_channel=True))
        if resolved_reduce_range(self.recipe.reduce_range) and has_int8_dot():
            out.append(lambda s: dataclasses.replace(s, reduce_range=False))
        ops = [n.op_type for n in onnx.load(str(self.prepared.model), load_external_data=False).graph.node]
        convs, matmuls = sum(o in CONV_OPS for o in ops), sum(o in MATMUL_OPS for o in ops)
        if convs and matmuls and not set(CONV_OPS) <= set(self.recipe.exclude_op_types) \
                and matmuls / (convs + matmuls) >= self.min_int8_fraction:
            out.append(lambda s: dataclasses.replace(s, matmul_only=True))
        return out


    def feeds(self) -> list[Mapping[str, np.ndarray]]:
        if self.calib is None:
            return []
        settings = dataclasses.replace(self.settings, samples=min(RANK_SAMPLES, self.settings.samples))
        return list(calibration_feeds(self.calib, self.specs, settings))

    def rank(self, spec: DynamicSpec, artifact: Path, seconds: float) -> tuple[list[str], set[str]]:
        """The quantized layers of ``artifact`` and their role groups (joined by JOIN), the one whose FP32 recovers
        the most end-to-end cosine first (each replaced by the prepared graph's FP32 node inside the INT8 graph:
        edgekit/debug/keep.py), the rest ranked again on top of that first one; and the set of the layers. Entries
        not measured within ``seconds`` follow in graph order; ties in name order."""
        import onnx

        from edgekit.backends.onnx.session import session
        from edgekit.debug.keep import keep_fp32
        from edgekit.debug.layers import Graphs, find_layers
        from edgekit.debug.run import agreement
        from edgekit.recover.rank import role_groups

        g = Graphs(onnx.load(str(self.prepared.model)), onnx.load(str(artifact)))
        layers = find_layers(g)
        names = [x.node for x in layers]
        feeds = self.feeds()
        if not feeds:  # no calibration data: no ranking, the layers in graph order
            return names, set(names) | _members(spec.exclude)
        ref = session(g.reference.SerializeToString(), self.threads)
        reference = [ref.run(None, dict(f)) for f in feeds]

        def cosine(model: bytes) -> float:
            sess = session(model, self.threads)
            return float(agreement(reference, [sess.run(None, dict(f)) for f in feeds])["cosine"] or 0.0)

        base = cosine(g.artifact.SerializeToString())
        deadline = time.monotonic() + seconds
        by_name = {x.node: x for x in layers}
        # each layer, then each role group (every block's expand conv, ...: role_groups) as one entry: in a stack of
        # blocks the error can be spread so that no single layer recovers it and the whole role does
        entries = [[x.node] for x in layers] + [list(nodes) for nodes in role_groups(self.prepared.model, set(names)).values()]

        def measure(on_top: list[str], base_cosine: float) -> dict[str, float]:
            out: dict[str, float] = {}
            for entry in entries:
                if time.monotonic() > deadline or set(entry) <= set(on_top):
                    continue
                try:
                    chosen = [by_name[n] for n in dict.fromkeys([*on_top, *entry])]
                    out[JOIN.join(entry)] = cosine(keep_fp32(g, chosen)) - base_cosine
                except Exception:  # a copy ONNX Runtime refuses is not a candidate
                    continue
            return out

        def order(found: dict[str, float]) -> list[str]:
            return sorted(found, key=lambda n: (-round(found[n], 9), n))

        gains = measure([], base)
        ranked = order(gains)
        if ranked:
            # the rest ranked again with the first kept FP32: one layer (the head of a CNN reading a wide residual sum)
            # can hide what the others are worth once it is FP32 (every block's expand conv together, on
            # tests/small_models.py's MobileNetV2-style model)
            top = ranked[0].split(JOIN)
            again = measure(top, base + gains[ranked[0]])
            ranked = [ranked[0]] + order(again) + [n for n in ranked[1:] if n not in again]
        return ranked + [n for n in names if n not in gains], set(names) | _members(spec.exclude)


def _members(exclude: tuple[str, ...]) -> set[str]:
    """The node names of exclusion entries (a role group is its nodes joined by JOIN)."""
    return {n for entry in exclude for n in entry.split(JOIN)}
