"""Recovery candidates of a torch.ao target (torch-fbgemm, torch-qnnpack): each is a ``TorchSpec`` (calibration
observer, recipe repairs, modules kept float) built by the backend's own ``build`` with the recipe changed
accordingly (``keep_float`` extended), so a candidate differs from the original build only in what its spec
changes, and is measured as the frozen TorchScript artifact runs (the backend's ``load``).

Order (static mode): the recipe repairs first (each one rebuild, no new observer kind: per-channel weights where the
engine's default is per-tensor; only Conv/Linear quantized for a model that is not a CNN; 8-bit activations with
7-bit weights instead of the reverse on fbgemm), then for a CNN the float prefix (the first k Conv/Linear modules float, each
with the BatchNorm and activation that alone read it), then the other observers, then the ranked modules. A module
kept float takes its activation along: left quantized, a ReLU6 after a float conv would quantize the conv's
pre-clamp range again.

Ranking: the per-module analysis of edgekit/debug/torch_ao.py, by each layer's local SQNR (the module run on FP32
inputs with its own weight and input quantization), lowest first. Its keep-FP32 cosine is not the order: torch.ao
quantizes a float module's input and output at its neighbours' boundaries anyway, so keeping one module float in the
analysis's graph hides the input quantization it would remove in a rebuild. Each ranked module is then really
rebuilt float and measured by the search (greedy, recover/search.py)."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from edgekit.backends.base import BuildContext, CalibrationSettings
from edgekit.backends.calibration import calibration_feeds
from edgekit.recover.candidates import exclusion_changes
from edgekit.recover.family import Family
from edgekit.types import FeedSource, LayerCensus, Reference, SourceModel, TargetProfile

RANK_SAMPLES = 16
# torch.ao has no entropy observer: "entropy" and "mse" are both its HistogramObserver (backend.OBSERVERS)
OBSERVER_OF = {"minmax": "minmax", "percentile": "percentile", "mse": "histogram", "entropy": "histogram"}


@dataclass(frozen=True)
class TorchSpec:
    """How one torch.ao candidate is built."""

    method: str
    exclude: tuple[str, ...] = ()  # module names kept float, beside the recipe's keep_float
    per_channel: bool | None = None  # None: the recipe's (TorchAoRecipe)
    reduce_range: str | None = None
    compute_only: bool | None = None

    def describe(self, base: "TorchSpec") -> str:
        parts = []
        if self.method != base.method:
            parts.append(f"calibrate_method = {self.method}")
        if self.per_channel is not None and self.per_channel != base.per_channel:
            parts.append(f"per_channel = {str(self.per_channel).lower()}")
        if self.reduce_range is not None and self.reduce_range != base.reduce_range:
            parts.append(f"reduce_range = {self.reduce_range}" + (" (8-bit activations, 7-bit weights)" if self.reduce_range == "weights" else ""))
        if self.compute_only and not base.compute_only:
            parts.append("compute_only = true (only Conv/Linear quantized)")
        parts += exclusion_changes(self.exclude, base.exclude, "float")
        return "; ".join(parts) or "as before"


class TorchAoBuilder(Family):
    """Builds, describes and ranks candidates of one torch.ao target."""

    def __init__(self, profile: TargetProfile, recipe: Any, source: SourceModel, reference: Reference,
                 calib: FeedSource | None, settings: CalibrationSettings, tmp: Path):
        self.profile, self.recipe, self.source, self.reference = profile, recipe, source, reference
        self.calib, self.settings, self.tmp = calib, settings, tmp
        self.censuses: dict[Path, LayerCensus | None] = {}
        self._units: dict[str, list[str]] | None = None
        self._kind: str | None = None

    @property
    def kind(self) -> str:
        """The reference graph's kind (recover/search.py ``model_kind``): "depthwise", "cnn" or "other"."""
        if self._kind is None:
            from edgekit.recover.search import model_kind

            self._kind = model_kind(self.reference.path)
        return self._kind

    @property
    def steps(self) -> tuple[str, ...] | None:
        """The search's order for this target (module docstring); None: the search's default."""
        if self.recipe.mode != "static":
            return None
        if self.kind == "other":
            return ("recipe", "calibration", "precision")
        return ("recipe", "prefix", "calibration", "precision")

    def units(self) -> dict[str, list[str]]:
        """{Conv/Linear module: it and the BatchNorm / activation modules that alone read it, in order}, from
        torch.fx (empty for a model it cannot trace: modules are then kept float alone)."""
        if self._units is None:
            self._units = _units(self.source.module)
        return self._units

    def recipe_for(self, spec: TorchSpec) -> Any:
        wanted = [u for entry in spec.exclude for m in entry.split(JOIN) for u in self.units().get(m, [m])]
        changes: dict[str, Any] = {"keep_float": tuple(dict.fromkeys([*self.recipe.keep_float, *wanted]))}
        for key in ("per_channel", "reduce_range", "compute_only"):
            if getattr(spec, key) is not None:
                changes[key] = getattr(spec, key)
        return dataclasses.replace(self.recipe, **changes)

    def build(self, spec: TorchSpec, dst: Path) -> dict[str, Any]:
        from edgekit.backends.torch_ao.backend import TorchAoBackend

        recipe = self.recipe_for(spec)
        keep = list(recipe.keep_float)
        raw = {**self.profile.recipe, "keep_float": keep}
        raw.update({k: getattr(recipe, k) for k in ("per_channel", "reduce_range", "compute_only") if getattr(spec, k) is not None})
        profile = dataclasses.replace(self.profile, recipe=raw)
        work = self.tmp / f"work_{dst.stem}"
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        ctx = BuildContext(profile, self.reference, self.source, work, work, self.calib,
                           dataclasses.replace(self.settings, method=spec.method),
                           recipe=recipe)
        artifact = TorchAoBackend().build(ctx)
        shutil.move(str(work / artifact.files[0].path), str(dst))
        shutil.rmtree(work)
        self.censuses[dst] = artifact.layers
        notes = dict(artifact.notes)
        if spec.exclude:
            notes["recovery_float"] = list(spec.exclude)
        return notes

    def census(self, path: Path) -> LayerCensus | None:
        return self.censuses.get(path)

    # ------------------------------------------------------------------------------------ the search's steps
    def methods(self, configured: str) -> list[str]:
        """The calibration methods that give another observer (dynamic mode calibrates nothing)."""
        if self.recipe.mode != "static":
            return []
        seen = {OBSERVER_OF.get(configured, configured)}
        out = []
        for m in ("mse", "percentile", "minmax"):
            if OBSERVER_OF[m] not in seen:
                seen.add(OBSERVER_OF[m])
                out.append(m)
        return out

    def repairs(self) -> list[Callable[[TorchSpec], TorchSpec]]:
        """The recipe repairs that apply to this recipe, host and model, in the module docstring's order (static
        mode; the dynamic mode's qconfig is fixed)."""
        r = self.recipe
        if r.mode != "static":
            return []
        out: list[Callable[[TorchSpec], TorchSpec]] = []
        if not r.weights_per_channel():
            out.append(lambda s: dataclasses.replace(s, per_channel=True))
        if self.kind == "other" and not r.compute_only:
            out.append(lambda s: dataclasses.replace(s, compute_only=True))
        if r.reduced() == "activations":
            out.append(lambda s: dataclasses.replace(s, reduce_range="weights"))
        return out

    def prefix_order(self) -> tuple[list[str], set[str]]:
        """The quantizable Conv/Linear modules in the reference graph's order (the prefix step), and their set."""
        import onnx

        from edgekit.debug.names import module_map

        modules = dict(self.source.module.named_modules())
        reference = onnx.load(str(self.reference.path), load_external_data=False)
        mapped = module_map(reference)
        order = [mapped[n.name] for n in reference.graph.node if n.name in mapped
                 and isinstance(modules.get(mapped[n.name]), LAYER_TYPES)]
        order = [m for m in dict.fromkeys(order) if not any(m == k or m.startswith(k + ".") for k in self.recipe.keep_float)]
        return order, set(order)

    def feeds(self) -> list[Mapping[str, np.ndarray]]:
        if self.calib is None:
            return []
        settings = dataclasses.replace(self.settings, samples=min(RANK_SAMPLES, self.settings.samples))
        return list(calibration_feeds(self.calib, self.reference.inputs, settings))

    def rank(self, spec: TorchSpec, artifact: Path, seconds: float) -> tuple[list[str], set[str]]:
        """Entries to keep float, most to blame first (module docstring), and the set of them all. An entry is one
        module, or, where the layer's input quantization costs more than its weights' (activation-only SQNR under
        weight-only), the module with the modules writing its input, joined by ``+``: torch.ao quantizes a tensor
        wherever its producer is INT8, so only then is the input float. ``seconds`` is not binding: the analysis
        runs each layer once on RANK_SAMPLES samples."""
        import onnx

        from edgekit.console import Silent
        from edgekit.debug.run import Timing
        from edgekit.debug.torch_ao import analyze_torch

        feeds = self.feeds()
        if not feeds:
            return [], set()
        pt = artifact if artifact.suffix == ".pt" else self.tmp / f"rank_{artifact.stem}.pt"
        if pt != artifact:
            shutil.copyfile(artifact, pt)
        report = analyze_torch(self.reference, [pt], [dict(f) for f in feeds], self.profile, Silent(), Timing(warmup=0, runs=1))
        found = [x for x in report.layers if x.torch_module]
        producers = _layer_producers(onnx.load(str(self.reference.path)), {x.onnx_node: x.torch_module for x in found})
        ranked = sorted(found, key=lambda x: (round(x.local_sqnr_db, 6) if x.local_sqnr_db is not None else float("inf"),
                                              x.torch_module))
        entries = []
        for x in ranked:
            act, weight = x.activation_only_sqnr_db, x.weight_only_sqnr_db
            before = producers.get(x.onnx_node, [])
            input_to_blame = act is not None and (weight is None or act < weight)
            entries.append(JOIN.join([*before, x.torch_module]) if input_to_blame and before else x.torch_module)
        # every layer counts toward the FP32 share: the ones the analysis found quantized and the ones kept float
        kept = {m for entry in spec.exclude for m in entry.split(JOIN)}
        return list(dict.fromkeys(entries)), {x.torch_module for x in found} | kept  # type: ignore[misc]


JOIN = "+"  # an entry of several modules kept float together (TorchSpec.exclude)


def _layer_types() -> tuple[type, ...]:
    from torch import nn

    return (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


LAYER_TYPES = _layer_types()


def _units(model: Any) -> dict[str, list[str]]:
    """``TorchAoBuilder.units`` of ``model``."""
    import torch.fx
    from torch import nn

    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception:
        return {}
    modules = dict(traced.named_modules())
    follow = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Hardswish, nn.SiLU)
    out: dict[str, list[str]] = {}
    for node in traced.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)), LAYER_TYPES):
            continue
        unit, n = [str(node.target)], node
        while len(n.users) == 1:
            n = next(iter(n.users))
            if n.op != "call_module" or not isinstance(modules.get(str(n.target)), follow):
                break
            unit.append(str(n.target))
        out[str(node.target)] = unit
    return out


def _layer_producers(reference: Any, modules: Mapping[str, str]) -> dict[str, list[str]]:
    """{layer node: the modules of the layers whose outputs reach its first input through non-layer ops} in the
    ONNX reference (``modules``: layer node -> module name), in graph order."""
    producer = {o: n for n in reference.graph.node for o in n.output}
    order = {n.name: i for i, n in enumerate(reference.graph.node)}
    out: dict[str, list[str]] = {}
    for node in reference.graph.node:
        if node.name not in modules or not node.input:
            continue
        found: set[str] = set()
        todo, seen = [node.input[0]], set()
        while todo and len(seen) < 64:
            name = todo.pop()
            n = producer.get(name)
            if n is None or n.name in seen:
                continue
            seen.add(n.name)
            if n.name in modules:
                found.add(n.name)
            else:
                todo.extend(i for i in n.input if i in producer)
        out[node.name] = list(dict.fromkeys(modules[n] for n in sorted(found, key=order.__getitem__)))
    return out
