"""Recovery candidates of a static QDQ target (ort-int8): each is a ``Spec`` (calibration method, which FP32 graph,
weight range, nodes kept FP32) that ``StaticQdq.build`` quantizes with the target's own quantizer
(edgekit/backends/onnx/qdq.py), so a candidate differs from the original build only in what its spec changes."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from edgekit.backends.base import CalibrationSettings
from edgekit.backends.calibration import calibration_feeds
from edgekit.backends.onnx.qdq import QdqSettings, preprocess, quantize_static_qdq
from edgekit.backends.ort.passes.smooth import SMOOTH_SUFFIX, smooth
from edgekit.recover import graphs
from edgekit.recover.family import Family
from edgekit.types import FeedSource, TensorSpec

COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# SmoothQuant's alpha, the highest first: transformers' static INT8 suffers from a few outlier hidden dimensions, which a
# high alpha flattens (all-MiniLM-L6-v2, every MatMul/Gemm INT8: 0.9939 at 0.75, 0.9970 at 0.95)
SMOOTH_ALPHAS = (0.95, 0.75, 0.5)
GRAPHS = ("reference", "equalized", "corrected", *(f"smoothed-{a:g}" for a in SMOOTH_ALPHAS))


def smoothed_graph(alpha: float, by_role: Mapping[str, float] | None = None) -> str:
    """The name of the smoothed graph with ``alpha`` for every MatMul input but the inputs of the roles in
    ``by_role`` (``StaticQdq.smoothing_roles``), which get their own: ``smoothed-0.95|<role>=0.75|...``."""
    return "|".join([f"smoothed-{alpha:g}", *(f"{role}={a:g}" for role, a in sorted((by_role or {}).items()))])


def smoothing_of(graph: str) -> tuple[float, dict[str, float]]:
    """``smoothed_graph``'s arguments back from its name."""
    first, *rest = graph.split("|")
    return float(first.split("-", 1)[1]), {role: float(a) for role, a in (r.rsplit("=", 1) for r in rest)}
RANK_SAMPLES = 16  # calibration samples the layer ranking and bias correction read


@dataclass(frozen=True)
class Spec:
    """How one candidate is built."""

    method: str
    graph: str = "reference"  # one of GRAPHS
    reduce_range: bool | str | None = None  # None: the recipe's
    exclude: tuple[str, ...] = ()
    compute_only: bool = False  # quantize only COMPUTE ops; the others (elementwise, norms, softmax, reshapes) stay FP32


class StaticQdq(Family):
    """Builds candidates of one static QDQ target from its reference, calibration data and recipe settings."""

    def __init__(self, reference: Path, calib: FeedSource, specs: tuple[TensorSpec, ...], settings: CalibrationSettings,
                 qdq: QdqSettings, tmp: Path, tensorrt_keep_ops: tuple[str, ...] | None = None):
        """``tensorrt_keep_ops``: build tensorrt-int8's QDQ ONNX (these op types unquantized) instead of ort-int8's."""
        # without the build's statistics cache, a private one: candidates that differ only in FP32 nodes or op types
        # reuse the statistics of their graph and method instead of collecting them again
        settings = settings if settings.cache_dir else dataclasses.replace(settings, cache_dir=str(tmp / "statistics"))
        self.reference, self.calib, self.specs, self.settings, self.qdq, self.tmp = reference, calib, specs, settings, qdq, tmp
        self.tensorrt_keep_ops = tensorrt_keep_ops
        self.graphs: dict[str, Path | None] = {"reference": reference}
        self.matmul_stats: dict[str, Any] | None = None  # the smoothing's statistics, one pass for every alpha
        self._smoothing_roles: dict[str, tuple[str, ...]] | None = None
        self.built: dict[Spec, Path] = {}
        self.measured: set[tuple[str, str]] = set()  # (statistics graph, method) whose statistics this search has
        self._nodes: dict[Path, tuple[set[str], tuple[str, ...]]] = {}

    def statistics_of(self, spec: Spec) -> str:
        """The graph whose activation statistics ``spec`` is calibrated with: bias correction changes only biases,
        so the corrected graph reuses its base graph's statistics."""
        if spec.graph == "corrected":
            return "equalized" if self.graph("equalized", spec.method) is not None else "reference"
        return spec.graph

    def fresh(self, spec: Spec) -> bool:
        """Whether building ``spec`` collects activation statistics (the slow part of a build) this search has not."""
        return (self.statistics_of(spec), spec.method) not in self.measured

    def feeds(self, samples: int = RANK_SAMPLES) -> list[Mapping[str, np.ndarray]]:
        settings = dataclasses.replace(self.settings, samples=min(samples, self.settings.samples))
        return list(calibration_feeds(self.calib, self.specs, settings))

    def build(self, spec: Spec, dst: Path) -> dict[str, Any]:
        src = self.graph(spec.graph, spec.method)
        assert src is not None, spec
        qdq = self.qdq if spec.reduce_range is None else dataclasses.replace(self.qdq, reduce_range=spec.reduce_range)
        keep = set(qdq.exclude_op_types) | set(self.tensorrt_keep_ops or ())
        exclude = spec.exclude
        if spec.compute_only or spec.graph.startswith("smoothed"):
            op_types, smoothing = self._nodes_of(src)
            if spec.compute_only:
                keep |= op_types - set(COMPUTE)
            exclude += smoothing  # the smoothing Mul stays FP32: quantizing its input too would add a rounding
        settings = dataclasses.replace(self.settings, method=spec.method)
        base = self.statistics_of(spec)
        stats_from = self.preprocessed(base, spec.method) if base != spec.graph else None
        if self.tensorrt_keep_ops is not None:
            from edgekit.backends.tensorrt.int8 import make_int8_qdq_onnx

            notes = make_int8_qdq_onnx(src, dst, self.calib, self.specs, settings, tuple(sorted(keep)), exclude, stats_from)
        else:
            notes = quantize_static_qdq(src, dst, self.calib, self.specs, settings,
                                        dataclasses.replace(qdq, exclude_op_types=tuple(sorted(keep))), exclude, stats_from)
        self.built[spec] = dst
        self.measured.add((base, spec.method))
        return notes

    def _nodes_of(self, src: Path) -> tuple[set[str], tuple[str, ...]]:
        """(the op types of the graph at ``src``, its smoothing Mul nodes), read once per graph."""
        if src not in self._nodes:
            import onnx

            nodes = onnx.load(str(src), load_external_data=False).graph.node
            self._nodes[src] = ({n.op_type for n in nodes},
                                tuple(n.name for n in nodes if n.op_type == "Mul" and n.name.endswith(SMOOTH_SUFFIX)))
        return self._nodes[src]

    def preprocessed(self, name: str, method: str) -> Path:
        """The graph the quantizer reads for ``name`` (its node names are the QDQ graph's), named as
        ``quantize_static_qdq`` names its own, so statistics collected on either are one cache entry."""
        dst = self.tmp / f"pre_{name}" / "pre.onnx"
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            preprocess(self.graph(name, method), dst)
        return dst

    def graph(self, name: str, method: str) -> Path | None:
        """The FP32 graph ``name`` (GRAPHS), made on first use; None when the repair finds nothing to change."""
        if name not in self.graphs:
            if name.startswith("smoothed-"):
                self.graphs[name] = self._smoothed(*smoothing_of(name))
            else:
                self.graphs[name] = getattr(self, f"_{name}")(method)
        return self.graphs[name]

    def _equalized(self, method: str) -> Path | None:
        dst = self.tmp / "equalized.onnx"
        return dst if graphs.equalize(self.reference, dst) else None

    def _corrected(self, method: str) -> Path | None:
        base = "equalized" if self.graph("equalized", method) is not None else "reference"
        quantized = self.tmp / f"for_correction_{base}.onnx"
        self.build(Spec(method, base), quantized)
        dst = self.tmp / "corrected.onnx"
        return dst if graphs.correct_biases(self.preprocessed(base, method), quantized, self.feeds(), dst) else None

    def _smoothed(self, alpha: float, by_role: dict[str, float]) -> Path | None:
        """SmoothQuant-style smoothing (backends/ort/passes/smooth.py) of every weighted MatMul/Gemm input, with
        ``alpha`` or, for the inputs of a role in ``by_role``, the role's; only in graphs with a LayerNormalization
        (transformers, whose outlier hidden dimensions it is for): None otherwise."""
        from edgekit.backends.ort.matmul_stats import activation_stats

        if "LayerNormalization" not in self._nodes_of(self.reference)[0]:
            return None  # nothing to smooth: no calibration pass for it
        if self.matmul_stats is None:
            self.matmul_stats = activation_stats(self.reference, self.calib, self.specs, self.settings, max_samples=RANK_SAMPLES * 2)
        alphas = {t: alpha for t in self.matmul_stats}
        roles = self.smoothing_roles()
        for role, a in by_role.items():
            alphas.update((t, a) for t in roles[role])
        dst = self.tmp / f"smoothed_{len(self.graphs)}.onnx"
        return dst if smooth(self.reference, dst, self.matmul_stats, alphas, below_db=math.inf) else None

    def smoothing_roles(self) -> dict[str, tuple[str, ...]]:
        """The weighted MatMul/Gemm inputs grouped by what reads them in every block of a stack (the readers'
        roles, ``rank.block_roles``: ``bert.encoder.layer.#.attention.self.query+key+value`` for the block input),
        in graph order; roles met in one block only are left out."""
        if self._smoothing_roles is not None:
            return self._smoothing_roles
        import onnx

        from edgekit.backends.ort.matmul_stats import weighted_matmuls
        from edgekit.recover.rank import block_roles, role_label

        model = onnx.load(str(self.reference), load_external_data=False)
        readers: dict[str, list[str]] = {}
        for n in weighted_matmuls(model):
            readers.setdefault(n.input[0], []).append(n.name)
        roles = block_roles(model, {n for names in readers.values() for n in names})
        tensors: dict[str, list[str]] = {}
        for tensor, names in readers.items():
            if all(n in roles for n in names):
                tensors.setdefault(role_label([roles[n] for n in names]), []).append(tensor)
        self._smoothing_roles = {role: tuple(ts) for role, ts in tensors.items() if "#" in role and len(ts) >= 2}
        return self._smoothing_roles


def _smoothing_text(graph: str) -> str:
    alpha, by_role = smoothing_of(graph)
    roles: dict[float, list[str]] = {}
    for role, a in by_role.items():
        roles.setdefault(a, []).append(role)
    own = "".join(f"; {a:g} for the inputs of every {', '.join(r)}" for a, r in roles.items())
    return f"SmoothQuant-style smoothing, alpha {alpha:g}{own}"


def describe(spec: Spec, base: Spec) -> str:
    """What ``spec`` changes against ``base``, for the manifest and the report."""
    if hasattr(spec, "describe"):  # the candidates of other backend families (recover/dynamic.py, recover/torch_ao.py)
        return spec.describe(base)
    parts = []
    if spec.method != base.method:
        parts.append(f"calibrate_method = {spec.method}")
    if spec.graph != base.graph:
        parts.append({"equalized": "cross-layer equalization", "corrected": "bias correction (after equalization where it applies)",
                      "reference": "the unmodified graph"}.get(spec.graph) or _smoothing_text(spec.graph))
    if spec.compute_only and not base.compute_only:
        parts.append("only Conv/Gemm/MatMul quantized (elementwise, normalization, softmax and reshaping ops FP32)")
    if spec.reduce_range is not None and spec.reduce_range != base.reduce_range:
        parts.append(f"reduce_range = {str(spec.reduce_range).lower()} (8-bit weights: this host has exact INT8 dot products)")
    parts += exclusion_changes(spec.exclude, base.exclude, "FP32")
    return "; ".join(parts) or "as before"


def exclusion_changes(exclude: tuple[str, ...], base: tuple[str, ...], kept: str) -> list[str]:
    """The describe() parts for the layers a candidate keeps out of INT8 against its base: "``kept``: a, b" for the
    ones it adds, "INT8 again: c" for the ones it drops (every backend family's candidates say it the same way)."""
    added = [n for n in exclude if n not in base]
    dropped = [n for n in base if n not in exclude]
    return ([f"{kept}: " + ", ".join(added)] if added else []) + (["INT8 again: " + ", ".join(dropped)] if dropped else [])


def iter_methods(configured: str) -> Iterator[str]:
    """The other calibration methods, the one most often best first (per-tensor MSE-optimal ranges)."""
    yield from (m for m in ("mse", "percentile", "entropy", "minmax") if m != configured)
