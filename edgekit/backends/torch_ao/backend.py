"""The torch.ao backend: post-training quantization (FX graph mode for static, quantize_dynamic for dynamic), the
float census, and the frozen TorchScript artifact. Every torch.ao call in edgekit lives in this module, so that a PT2E
(torchao) implementation can replace it in one place (see docs/torch-targets.md)."""

from __future__ import annotations

import copy
import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import torch.ao.nn.quantized.dynamic as ao_dynamic
from torch import Tensor, nn
from torch.ao.quantization import (QConfig, default_dynamic_qconfig, default_per_channel_weight_observer,
                                   default_weight_observer, get_default_qconfig_mapping, per_channel_dynamic_qconfig)
from torch.ao.quantization import quantize_dynamic as ao_quantize_dynamic
from torch.ao.quantization.fx.custom_config import PrepareCustomConfig
from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver, PerChannelMinMaxObserver
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from edgekit.backends.base import Availability, Backend, BuildContext, CalibrationSettings, Runner
from edgekit.backends.calibration import calibration_feeds
from edgekit.backends.torch_ao.artifact import ARTIFACT, TorchAoRunner, serialize, to_torchscript
from edgekit.backends.torch_ao.clamp import clamp_output_observers, clamped_layers, finish_clamps
from edgekit.backends.torch_ao.census import QUANTIZED_MODULES, float_ops, layer_census
from edgekit.backends.torch_ao.common import quantized_engine, set_module, torch_warnings_to_log, under
from edgekit.backends.torch_ao.integer import FloatOp, IntegerOps, find_integer_ops, unwrap_float_ops, wrap_float_ops
from edgekit.backends.torch_ao.islands import SCOPE, island_inputs, islands, trace_island
from edgekit.backends.torch_ao.recipe import REDUCE_RANGE, TorchAoRecipe
from edgekit.backends.torch_ao.rewrite import rewrite_transformers
from edgekit.errors import ProfileError
from edgekit.hostinfo import has_int8_dot
from edgekit.fsutil import atomic_write_bytes
from edgekit.types import Artifact, ArtifactFile, FeedSource, Reference, SourceModel, TargetProfile, TensorSpec


log = logging.getLogger(__name__)


OBSERVERS = {"minmax": "MinMaxObserver", "entropy": "HistogramObserver (L2-optimal range)", "mse": "HistogramObserver (L2-optimal range)", "percentile": "percentile of a HistogramObserver histogram"}


# ----------------------------------------------------------------------------------------- calibration


class PercentileObserver(HistogramObserver):
    """A HistogramObserver whose range is the two-sided percentile of its histogram (torch.ao has no such observer).
    Observers are replaced by scales and zero points at convert time: artifacts never reference this class."""

    def __init__(self, percentile: float = 99.999, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.percentile = percentile

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:
        total = float(self.histogram.sum())
        if total == 0 or float(self.min_val) == float(self.max_val):
            return super().calculate_qparams()
        cdf = torch.cumsum(self.histogram.double(), 0) / total
        edges = torch.linspace(float(self.min_val), float(self.max_val), self.bins + 1, dtype=torch.float64)
        lo = int(torch.searchsorted(cdf, torch.tensor((100.0 - self.percentile) / 100.0, dtype=torch.float64)))
        hi = int(torch.searchsorted(cdf, torch.tensor(self.percentile / 100.0, dtype=torch.float64)))
        new_min = edges[min(lo, self.bins)].float().reshape(self.min_val.shape)
        new_max = edges[min(hi + 1, self.bins)].float().reshape(self.max_val.shape)
        return self._calculate_qparams(new_min, new_max)


@dataclass(frozen=True)
class StaticOptions:
    """The recipe's static-mode choices (TorchAoRecipe): weight granularity and activation range."""

    per_channel: bool
    reduced: str  # the operand with 7 bits: "activations", "weights" or "none" (TorchAoRecipe.reduce_range)
    compute_only: bool = False  # only Conv/Linear (with the BatchNorm/ReLU fused into them) quantized

    @classmethod
    def default(cls, engine: str) -> "StaticOptions":
        return cls(engine == "fbgemm", "activations" if REDUCE_RANGE[engine] else "none")


# compute_only: the layers quantized, and the module types fused into them (torch.ao wants one qconfig for a fusion)
COMPUTE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
FUSED_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.ReLU)


def _activation_observer(rr: bool, settings: CalibrationSettings) -> Any:
    """The calibration method as a torch.ao activation observer, 7-bit when ``rr``."""
    if settings.method == "minmax":
        cls, kwargs = MinMaxObserver, dict(dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=rr)
    elif settings.method in ("entropy", "mse"):  # torch.ao has no entropy observer; its histogram one minimizes L2
        cls, kwargs = HistogramObserver, dict(reduce_range=rr)
    else:
        cls, kwargs = PercentileObserver, dict(reduce_range=rr, percentile=settings.percentile)
    return cls.with_args(**kwargs)


def _weight_observer(per_channel: bool, bits: int) -> Any:
    """Symmetric qint8 weights in ``bits`` bits (7: [-64, 63]), per output channel or per tensor."""
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if per_channel:
        return PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=lo, quant_max=hi)
    return MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, quant_min=lo, quant_max=hi)


def _qconfig_mapping(engine: str, settings: CalibrationSettings, keep_float: tuple[str, ...],
                     options: StaticOptions | None = None) -> Any:
    """The engine's default mapping with the calibration method's observer wherever the default activation observer
    was, and the weights ``options`` asks for instead of the default ones (per channel or per tensor, 7-bit where
    the weights are the reduced operand); with ``options.compute_only`` only Conv/Linear (and what fuses into them)
    keep a qconfig."""
    options = options or StaticOptions.default(engine)
    mapping = get_default_qconfig_mapping(engine)
    default_activation, default_weight = mapping.global_qconfig.activation, mapping.global_qconfig.weight
    observer = _activation_observer(options.reduced == "activations", settings)
    weight = default_weight
    if options.reduced == "weights":
        weight = _weight_observer(options.per_channel, 7)
    elif options.per_channel != StaticOptions.default(engine).per_channel:
        weight = default_per_channel_weight_observer if options.per_channel else default_weight_observer

    def swap(qc: Any) -> Any:
        if qc is None or qc.activation is not default_activation:
            return qc
        return QConfig(activation=observer, weight=weight if qc.weight is default_weight else qc.weight)

    global_qconfig = mapping.global_qconfig
    mapping.set_global(swap(global_qconfig))
    for pattern, qc in list(mapping.object_type_qconfigs.items()):
        mapping.set_object_type(pattern, swap(qc))
    if options.compute_only:
        mapping.set_global(None)
        for pattern in list(mapping.object_type_qconfigs):
            mapping.set_object_type(pattern, None)
        for t in (*COMPUTE_TYPES, *FUSED_TYPES):
            mapping.set_object_type(t, swap(global_qconfig))
    for name in keep_float:
        mapping.set_module_name(name, None)
    return mapping


# --------------------------------------------------------------------------------------- static (FX)


def _clamped_outputs(prepared: Any, clamped: dict[str, tuple[float, float]]) -> Any:
    """``prepared`` with the output observers of the layers a clamp alone reads clamped (torch_ao/clamp.py)."""
    clamp_output_observers(prepared, clamped)
    return prepared


def _prepare_island(island: Any, skip: tuple[str, ...], engine: str, settings: CalibrationSettings, example: tuple,
                    keep: tuple[str, ...], options: StaticOptions) -> tuple[Any, list[str]]:
    """prepare_fx on one island. Ops on integer tensors (ids, masks), or on values computed from them alone, get no
    qconfig: torch.ao would observe and quantize them like activations ("Quantize only works on Float Tensor")."""
    config = PrepareCustomConfig().set_non_traceable_module_names(list(skip))
    traced = trace_island(island, skip)
    mapping = _qconfig_mapping(engine, settings, keep, options)
    clamped = clamped_layers(traced)
    try:
        integer = find_integer_ops(traced, example)
    except Exception:  # the island's graph does not run on the inputs seen: prepare it as torch.ao alone would
        log.debug("integer check of %s failed", type(island).__name__, exc_info=True)
        integer = IntegerOps()
    if not integer.nodes and not integer.modules:
        return _clamped_outputs(prepare_fx(island, mapping, example, prepare_custom_config=config), clamped), []
    # the traced graph is what gets prepared: its calls lose their module scope, so keep_float scopes go by node too
    scoped = [n for n in traced.graph.nodes if n.op in ("call_function", "call_method") and under(n.meta.get(SCOPE, ""), keep)]
    wrap_float_ops(traced, integer.nodes + [n for n in scoped if n not in integer.nodes])
    mapping.set_object_type(FloatOp, None)
    for name in integer.modules:
        mapping.set_module_name(name, None)
    config.set_non_traceable_module_classes([FloatOp])
    return _clamped_outputs(prepare_fx(traced, mapping, example, prepare_custom_config=config), clamped), integer.sources


def quantize_static(
    model: Any, engine: str, calibration: Iterator[tuple], example: tuple, settings: CalibrationSettings, keep_float: tuple[str, ...],
    options: StaticOptions | None = None,
) -> tuple[Any, dict[str, Any]]:
    """FX graph mode static PTQ of ``model`` (modified in place): fuse, observe the calibration batches, convert."""
    options = options or StaticOptions.default(engine)
    default = StaticOptions.default(engine)

    untraceable: dict[str, str] = {}
    glue: dict[str, str] = {}
    found_islands = islands(model, "", untraceable, glue)
    inputs = island_inputs(model, [p for p, _ in found_islands], example)
    prepared, integer = {}, {}
    for path, skip in found_islands:
        rel_keep = tuple(k[len(path) + 1:] if path else k for k in keep_float if path == "" or k.startswith(path + "."))
        if under(path, keep_float) is not None or path not in inputs:
            continue  # kept float whole, or never called on the example batch
        island = model.get_submodule(path) if path else model
        prepared[path], sources = _prepare_island(island, skip, engine, settings, inputs[path], rel_keep, options)
        if sources:
            integer[path or "(model)"] = sources
        model = set_module(model, path, prepared[path])
    samples = batches = 0
    with torch.no_grad():
        for args in calibration:
            model(*args)
            samples, batches = samples + int(args[0].shape[0]), batches + 1
    if batches == 0:
        raise ValueError("the calibration data yielded no batches")
    for path, observed in prepared.items():
        model = set_module(model, path, finish_clamps(unwrap_float_ops(convert_fx(observed)), engine))
    notes: dict[str, Any] = {
        "quantizer": f"torch.ao FX graph mode (prepare_fx/convert_fx), get_default_qconfig_mapping('{engine}'): "
        "BatchNorm folded into Conv, ReLU fused, adds and concatenations quantized where the model has them",
        "calibration": {"method": settings.method, "observer": OBSERVERS[settings.method], "samples": samples, "batches": batches},
        "activations": f"quint8 asymmetric per-tensor, {'7' if options.reduced == 'activations' else '8'}-bit range "
                       + (f"({engine} default)" if options.reduced == default.reduced else "(recipe reduce_range)"),
        "weights": "qint8 symmetric " + ("per-channel" if options.per_channel else "per-tensor")
                   + (" 7-bit" if options.reduced == "weights" else "")
                   + (f" ({engine} default)" if (options.per_channel, options.reduced) == (default.per_channel, default.reduced)
                      else " (recipe per_channel / reduce_range)"),
    }
    if options.compute_only:
        notes["compute_only"] = "only Conv/Linear quantized (recipe compute_only): every other op runs in float"
    if settings.method == "percentile":
        notes["calibration"]["percentile"] = settings.percentile
    if untraceable:
        notes["untraceable"] = [f"{p}: {why}" for p, why in untraceable.items()]
    if glue:
        notes["untraceable_forward"] = [f"{p or '(model)'}: {why}" for p, why in glue.items()]
    if integer:
        notes["integer_inputs"] = [f"{p}: {', '.join(s)}: never quantized; the ops reading them, or values computed from "
                                   "them alone, stay float" for p, s in integer.items()]
    return model, {"notes": notes, "untraceable": untraceable, "glue": glue}


# ------------------------------------------------------------------------------------------- dynamic


def quantize_dynamic(model: Any, engine: str, example: tuple, keep_float: tuple[str, ...]) -> tuple[Any, dict[str, Any]]:
    """Dynamic INT8: Linear/LSTM/GRU weights int8 offline, activations quantized per batch at run time."""
    model, rewrite = rewrite_transformers(model, example)
    # Linear: per-channel weights (all-MiniLM-L6-v2, fbgemm: mean cosine 0.949 per-tensor -> 0.992 per-channel with
    # 8-bit activations, same latency; docs/torch-targets.md). Recurrent modules take per-tensor weights only.
    spec: dict[Any, Any] = {t: default_dynamic_qconfig for t in (nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell, nn.RNNCell)}
    spec[nn.Linear] = per_channel_dynamic_qconfig
    # the original encoder layers read their Linear weights as tensors: quantizing those breaks them, so they stay float
    floats = keep_float + tuple(n for n, m in model.named_modules() if isinstance(m, (nn.TransformerEncoder, nn.TransformerEncoderLayer)))
    for name, _ in model.named_modules():
        if under(name, floats) is not None:
            spec[name] = None  # a name entry wins over the type entries, for the module and each of its children
    model = ao_quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)
    # version 3 calls linear_dynamic without reduce_range=True: 8-bit activations. fbgemm's default is 7-bit, because
    # its AVX2 kernels add u8 x s8 product pairs in int16 and saturate; with VNNI/AMX they don't. 8-bit only where
    # exact (qnnpack always; it ignores reduce_range, noisily): the measurements are in docs/backends.md.
    full_range = engine == "qnnpack" or has_int8_dot()
    for module in model.modules():
        if type(module) is ao_dynamic.Linear and full_range:
            module.version = 3
    notes: dict[str, Any] = {
        "quantizer": "torch.ao quantize_dynamic: nn.Linear weights qint8 symmetric per-channel, LSTM/GRU(Cell) weights "
        "per-tensor; activations quantized per batch at run time (quint8, range from each batch, "
        + ("8-bit" if full_range else "7-bit: this x86 host has no VNNI/AMX, where 8-bit u8 x s8 pairs saturate")
        + "); everything else runs in float",
    }
    if rewrite:
        notes["transformer_rewrite"] = rewrite
    return model, {"notes": notes, "untraceable": {}, "glue": {}}


# ------------------------------------------------------------------------------------------------ backend


def calibration_batches(source: FeedSource, specs: tuple[TensorSpec, ...], settings: CalibrationSettings) -> Iterator[tuple]:
    """The first ``settings.samples`` calibration samples as positional tensors, batched like the other INT8 targets."""
    for feed in calibration_feeds(source, specs, settings):
        yield tuple(torch.from_numpy(feed[s.name]) for s in specs)


def _example(ctx: BuildContext) -> tuple:
    """A small real batch (first calibration samples) for tracing, the float census and the reload check."""
    from edgekit.export import example_inputs

    specs = ctx.source.inputs
    if ctx.calibration is not None:
        first = next(calibration_batches(ctx.calibration, specs, CalibrationSettings(samples=2, batch_size=2)), None)
        if first is not None:
            return first
    feed = example_inputs(specs, {})
    return tuple(torch.from_numpy(feed[s.name]) for s in specs)


def _measured_on(profile: TargetProfile, engine: str) -> str:
    machine = platform.machine().lower()
    arm = machine in ("aarch64", "arm64") or machine.startswith("arm")
    if profile.host_is_device or (engine == "qnnpack" and arm):
        return f"build host ({machine}), a device of this target's kind"
    return f"build host, not the target device ({machine}: {engine} latency here does not predict the target's)"


class TorchAoBackend(Backend):
    name = "torch_ao"

    def parse_recipe(self, profile: TargetProfile) -> TorchAoRecipe:
        return TorchAoRecipe.parse(profile)

    def needs_calibration(self, profile: TargetProfile, recipe: TorchAoRecipe) -> bool:
        return recipe.mode == "static"

    def availability(self, profile: TargetProfile, source: SourceModel | None = None) -> Availability:
        if source is not None and not source.is_torch:
            return Availability(
                False,
                f"torch.ao targets quantize the torch model, and this build's model is an ONNX file ({source.source})",
                "give [model] source as a Python model (file.py:factory, module:factory or example:NAME) to build this target",
            )
        engine = str(profile.recipe.get("engine", "fbgemm"))
        if engine not in torch.backends.quantized.supported_engines:
            return Availability(False, f"this torch build has no '{engine}' quantized engine on this CPU "
                                       f"(it has: {', '.join(torch.backends.quantized.supported_engines)})")
        return Availability(True)

    def build(self, ctx: BuildContext) -> Artifact:
        recipe = self.recipe_for(ctx)
        if ctx.source.module is None:
            raise ValueError("torch.ao targets need a torch model source")
        if recipe.mode == "static" and ctx.calibration is None:
            raise ProfileError(f"target '{ctx.profile.name}' needs calibration data: add a [calibration] section")
        names = {n for n, _ in ctx.source.module.named_modules()}
        missing = [k for k in recipe.keep_float if k not in names]
        if missing:
            raise ProfileError(f"target '{ctx.profile.name}' recipe keep_float names {missing}, which the model does not have")
        example = _example(ctx)
        model = copy.deepcopy(ctx.source.module).eval()
        with quantized_engine(recipe.engine), torch_warnings_to_log():
            if recipe.mode == "static":
                batches = calibration_batches(ctx.calibration, ctx.source.inputs, ctx.calibration_settings)
                options = StaticOptions(recipe.weights_per_channel(), recipe.reduced(), recipe.compute_only)
                quantized, found = quantize_static(model, recipe.engine, batches, example, ctx.calibration_settings,
                                                   recipe.keep_float, options)
            else:
                quantized, found = quantize_dynamic(model, recipe.engine, example, recipe.keep_float)
            stayed = float_ops(quantized, example, recipe.mode, recipe.engine, found, recipe.keep_float)
            layers = layer_census(quantized)
            frozen, how = to_torchscript(quantized, example)
            meta = {"format": "edgekit-torch-ao/1", "engine": recipe.engine, "mode": recipe.mode, "torch": torch.__version__,
                    "inputs": [s.to_dict() for s in ctx.reference.inputs], "outputs": list(ctx.reference.outputs)}
            data, reproducible = serialize(frozen, example, meta)
        dst = ctx.target_dir / ARTIFACT
        atomic_write_bytes(dst, data)
        notes = {
            "engine": f"{recipe.engine} (torch.backends.quantized.engine, set for the build and for every run)",
            "mode": recipe.mode,
            **found["notes"],
            "stayed_float": stayed or [
                "nothing: every compute op runs in INT8" if recipe.mode == "static"
                else "no Linear/LSTM/GRU-type op ran in float (the other ops run in float by design in dynamic mode)"
            ],
            "artifact": f"TorchScript ({how}); load with torch.jit.load after setting "
                        f"torch.backends.quantized.engine = '{recipe.engine}'; no Python source needed",
            "reproducibility": reproducible,
            "measured_on": _measured_on(ctx.profile, recipe.engine),
            "int8_layers": layers.to_dict(),
        }
        if not any(type(m).__module__.startswith(QUANTIZED_MODULES) for m in quantized.modules()):
            notes["warning"] = (
                "nothing in this model was quantized: the artifact computes in FP32 (see stayed_float"
                + (" and untraceable" if "untraceable" in notes else "") + ")"
                + ("; for transformers and RNNs set [targets.%s] recipe = { mode = \"dynamic\" }" % ctx.profile.name
                   if recipe.mode == "static" else "")
            )
        return Artifact(ctx.profile.name, (ArtifactFile.of(dst, ctx.root),), notes, measured_on=notes["measured_on"],
                        warnings=(notes["warning"],) if "warning" in notes else (), layers=layers)

    def load(self, artifact: Artifact, root: Path, profile: TargetProfile, reference: Reference) -> Runner:
        recipe = TorchAoRecipe.parse(profile)
        return TorchAoRunner(root / artifact.files[0].path, reference.inputs, reference.outputs, recipe.engine, profile.runtime.threads)

    def versions(self) -> Mapping[str, Any]:
        return {"torch": torch.__version__}
