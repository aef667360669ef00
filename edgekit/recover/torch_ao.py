"""Recovery candidates of a torch.ao target (torch-fbgemm, torch-qnnpack): each is a ``TorchSpec`` (calibration
observer, modules kept float) built by the backend's own ``build`` with the recipe's ``keep_float`` extended, so a
candidate differs from the original build only in what its spec changes, and is measured as the frozen TorchScript
artifact runs (the backend's ``load``).

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
from edgekit.types import FeedSource, LayerCensus, Reference, SourceModel, TargetProfile

RANK_SAMPLES = 16
# torch.ao has no entropy observer: "entropy" and "mse" are both its HistogramObserver (backend.OBSERVERS)
OBSERVER_OF = {"minmax": "minmax", "percentile": "percentile", "mse": "histogram", "entropy": "histogram"}


@dataclass(frozen=True)
class TorchSpec:
    """How one torch.ao candidate is built."""

    method: str
    exclude: tuple[str, ...] = ()  # module names kept float, beside the recipe's keep_float

    def describe(self, base: "TorchSpec") -> str:
        parts = []
        if self.method != base.method:
            parts.append(f"calibrate_method = {self.method}")
        added = [n for n in self.exclude if n not in base.exclude]
        dropped = [n for n in base.exclude if n not in self.exclude]
        if added:
            parts.append("float: " + ", ".join(added))
        if dropped:
            parts.append("INT8 again: " + ", ".join(dropped))
        return "; ".join(parts) or "as before"


class TorchAoBuilder:
    """Builds, describes and ranks candidates of one torch.ao target."""

    def __init__(self, profile: TargetProfile, recipe: Any, source: SourceModel, reference: Reference,
                 calib: FeedSource | None, settings: CalibrationSettings, tmp: Path):
        self.profile, self.recipe, self.source, self.reference = profile, recipe, source, reference
        self.calib, self.settings, self.tmp = calib, settings, tmp
        self.censuses: dict[Path, LayerCensus | None] = {}

    def build(self, spec: TorchSpec, dst: Path) -> dict[str, Any]:
        from edgekit.backends.torch_ao.backend import TorchAoBackend

        wanted = [m for entry in spec.exclude for m in entry.split(JOIN)]
        keep = list(dict.fromkeys([*self.recipe.keep_float, *wanted]))
        profile = dataclasses.replace(self.profile, recipe={**self.profile.recipe, "keep_float": keep})
        work = self.tmp / f"work_{dst.stem}"
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        ctx = BuildContext(profile, self.reference, self.source, work, work, self.calib,
                           dataclasses.replace(self.settings, method=spec.method),
                           recipe=dataclasses.replace(self.recipe, keep_float=tuple(keep)))
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
        return []  # the engines' qconfigs are fixed by torch.ao; the other repairs are ONNX graph rewrites

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
        return list(dict.fromkeys(entries)), {x.torch_module for x in found} | set(entries)  # type: ignore[misc]


JOIN = "+"  # an entry of several modules kept float together (TorchSpec.exclude)


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
