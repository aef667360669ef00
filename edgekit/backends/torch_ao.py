"""torch CPU INT8 targets (fbgemm for x86, qnnpack for ARM): torch.ao post-training quantization, frozen TorchScript.

Every torch.ao call in edgekit lives in this module, so that a PT2E (torchao) implementation can replace it in one
place (see docs/torch-targets.md). Static mode: FX graph mode (prepare_fx/convert_fx); dynamic mode: quantize_dynamic.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import logging
import platform
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import numpy as np
import torch
import torch.ao.nn.quantized.dynamic as ao_dynamic
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.ao.quantization import QConfig, default_dynamic_qconfig, get_default_qconfig_mapping
from torch.ao.quantization import quantize_dynamic as ao_quantize_dynamic
from torch.ao.quantization.fx.custom_config import PrepareCustomConfig
from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
from torch.overrides import TorchFunctionMode

from edgekit.backends.base import Availability, Backend, BuildContext, CalibrationSettings, Runner
from edgekit.errors import ProfileError
from edgekit.fsutil import atomic_write_bytes
from edgekit.types import Artifact, ArtifactFile, Feed, FeedSource, Reference, SourceModel, TargetProfile, TensorSpec

log = logging.getLogger(__name__)

ENGINES = ("fbgemm", "qnnpack")
MODES = ("static", "dynamic")
ARTIFACT = "model.pt"
META = "edgekit.json"  # an extra file inside the TorchScript archive: engine, mode, inputs, outputs
CANONICAL_CLASS = ("__torch__.edgekit", "QuantizedModel")  # the artifact's root class, whatever the model's
# fbgemm's own qconfig gives activations 7 bits: its AVX2 kernels add pairs of u8 x s8 products in int16.
REDUCE_RANGE = {"fbgemm": True, "qnnpack": False}
OBSERVERS = {"minmax": "MinMaxObserver", "entropy": "HistogramObserver (L2-optimal range)", "percentile": "percentile of a HistogramObserver histogram"}
# ops that move or re-type data without arithmetic: never reported as "stayed float"
PLUMBING = frozenset(
    "__get__ __set__ __getitem__ __len__ size dim numel stride contiguous to float type detach clone view reshape "
    "flatten permute transpose squeeze unsqueeze expand chunk split unbind dropout identity is_floating_point".split()
)
HEAVY = frozenset(
    "linear conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d matmul __matmul__ bmm mm addmm "
    "baddbmm einsum lstm gru rnn_tanh rnn_relu multi_head_attention_forward scaled_dot_product_attention".split()
)


@dataclass(frozen=True)
class TorchAoRecipe:
    """The ``[recipe]`` of a ``torch_ao`` profile."""

    engine: str = "fbgemm"  # fbgemm | qnnpack: the quantized engine and its own default qconfig
    mode: str = "static"  # static (calibrated activations) | dynamic (Linear/LSTM/GRU weights; activations at run time)
    keep_float: tuple[str, ...] = ()  # module names (as in model.named_modules()) left in float

    @classmethod
    def parse(cls, profile: TargetProfile) -> "TorchAoRecipe":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(profile.recipe) - known)
        if unknown:
            raise ProfileError(f"target '{profile.name}' recipe has unknown key(s) {unknown}; valid: {sorted(known)}")
        r = dict(profile.recipe)
        keep = r.get("keep_float", ())
        if not isinstance(keep, (list, tuple)) or not all(isinstance(k, str) and k for k in keep):
            raise ProfileError(f"target '{profile.name}' recipe keep_float must be a list of module names, got {keep!r}")
        r["keep_float"] = tuple(keep)
        recipe = cls(**r)
        if recipe.engine not in ENGINES:
            raise ProfileError(f"target '{profile.name}' recipe engine = {recipe.engine!r}; expected one of {ENGINES}")
        if recipe.mode not in MODES:
            raise ProfileError(f"target '{profile.name}' recipe mode = {recipe.mode!r}; expected one of {MODES}")
        return recipe


@contextlib.contextmanager
def quantized_engine(engine: str) -> Iterator[None]:
    """Select torch's quantized engine for the block and restore the previous one: targets never leak into each other."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    if previous != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if previous != n:
            torch.set_num_threads(previous)


@contextlib.contextmanager
def _torch_warnings_to_log() -> Iterator[None]:
    """torch.ao warns on every call (deprecation, observer settings); keep them in the debug log, off the terminal."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        log.debug("torch warning: %s: %s", w.category.__name__, str(w.message).splitlines()[0] if str(w.message) else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _under(path: str, roots: Mapping[str, Any] | tuple[str, ...]) -> str | None:
    """The (non-root) entry of ``roots`` that ``path`` is, or is inside of."""
    return next((r for r in roots if r and (path == r or path.startswith(r + "."))), None)


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


def _activation_observer(engine: str, settings: CalibrationSettings) -> Any:
    """The calibration method as a torch.ao activation observer, with the engine's own activation range."""
    rr = REDUCE_RANGE[engine]
    if settings.method == "minmax":
        return MinMaxObserver.with_args(dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=rr)
    if settings.method == "entropy":
        return HistogramObserver.with_args(reduce_range=rr)
    return PercentileObserver.with_args(reduce_range=rr, percentile=settings.percentile)


def _qconfig_mapping(engine: str, settings: CalibrationSettings, keep_float: tuple[str, ...]) -> Any:
    """The engine's default mapping with the calibration method's observer wherever the default activation observer was."""
    mapping = get_default_qconfig_mapping(engine)
    default_activation = mapping.global_qconfig.activation
    observer = _activation_observer(engine, settings)

    def swap(qc: Any) -> Any:
        return QConfig(activation=observer, weight=qc.weight) if qc is not None and qc.activation is default_activation else qc

    mapping.set_global(swap(mapping.global_qconfig))
    for pattern, qc in list(mapping.object_type_qconfigs.items()):
        mapping.set_object_type(pattern, swap(qc))
    for name in keep_float:
        mapping.set_module_name(name, None)
    return mapping


def calibration_batches(source: FeedSource, specs: tuple[TensorSpec, ...], settings: CalibrationSettings) -> Iterator[tuple]:
    """The first ``settings.samples`` calibration samples as positional tensors, batched like the other INT8 targets."""
    static_batch = any(0 not in s.dynamic_axes for s in specs)
    left = settings.samples
    for batch in source.batches(1 if static_batch else settings.batch_size):
        if left <= 0:
            return
        args = tuple(torch.from_numpy(np.ascontiguousarray(batch.feed[s.name][:left], dtype=s.dtype)) for s in specs)
        left -= int(args[0].shape[0])
        yield args


# --------------------------------------------------------------------------------------- static (FX)


class _Tracer(torch.fx.Tracer):
    """torch.fx's tracer (the quantizer's leaf rule) with ``skip`` as extra leaves; ``stack`` is the modules being traced."""

    def __init__(self, skip: set[str]) -> None:
        super().__init__()
        self.skip = skip
        self.stack: list[str] = []

    def is_leaf_module(self, m: nn.Module, name: str) -> bool:
        return name in self.skip or super().is_leaf_module(m, name)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        name = self.path_of_module(m)
        if self.is_leaf_module(m, name):
            return super().call_module(m, forward, args, kwargs)
        self.stack.append(name)
        out = super().call_module(m, forward, args, kwargs)
        self.stack.pop()
        return out


def _trace_blockers(module: Any) -> tuple[dict[str, str], str | None]:
    """Submodules torch.fx cannot trace (name -> why), and why ``module``'s own forward cannot be traced, if so."""
    skip: dict[str, str] = {}
    for _ in range(200):
        tracer = _Tracer(set(skip))
        try:
            tracer.trace(module)
            return skip, None
        except Exception as exc:  # torch.fx raises TraceError, TypeError, AttributeError... on Python it cannot trace
            culprit = tracer.stack[-1] if tracer.stack else ""
            if not culprit or culprit in skip:
                return skip, _first_line(exc)
            skip[culprit] = _first_line(exc)
    return skip, "too many untraceable submodules"


def _islands(module: Any, prefix: str, untraceable: dict[str, str], glue: dict[str, str]) -> list[tuple[str, tuple[str, ...]]]:
    """The largest traceable parts of the model (path, its untraceable submodules); where a forward itself cannot be
    traced, its own code stays float (recorded in ``glue``) and its children are tried one by one."""
    skip, own_error = _trace_blockers(module)
    if own_error is None:
        untraceable.update({_join(prefix, name): why for name, why in skip.items()})
        return [(prefix, tuple(skip))]
    glue[prefix] = own_error
    found = []
    for name, child in module.named_children():
        found += _islands(child, _join(prefix, name), untraceable, glue)
    return found


def _outputs(result: Any) -> list[Any]:
    return list(result) if isinstance(result, (tuple, list)) else [result]


def _set_module(root: Any, path: str, new: Any) -> Any:
    if not path:
        return new
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, new)
    return root


def _island_inputs(model: Any, paths: list[str], example: tuple) -> dict[str, tuple]:
    """The positional inputs each island receives on the example batch (prepare_fx wants example inputs)."""
    seen: dict[str, tuple] = {"": example}
    hooks = []
    for path in paths:
        if path:
            def grab(_m: Any, args: tuple, p: str = path) -> None:  # returns None: keeps the inputs as they are
                if p not in seen:
                    seen[p] = args
            hooks.append(model.get_submodule(path).register_forward_pre_hook(grab))
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for h in hooks:
            h.remove()
    return seen


def quantize_static(
    model: Any, engine: str, calibration: Iterator[tuple], example: tuple, settings: CalibrationSettings, keep_float: tuple[str, ...]
) -> tuple[Any, dict[str, Any]]:
    """FX graph mode static PTQ of ``model`` (modified in place): fuse, observe the calibration batches, convert."""

    untraceable: dict[str, str] = {}
    glue: dict[str, str] = {}
    islands = _islands(model, "", untraceable, glue)
    inputs = _island_inputs(model, [p for p, _ in islands], example)
    prepared = {}
    for path, skip in islands:
        rel_keep = tuple(k[len(path) + 1:] if path else k for k in keep_float if path == "" or k.startswith(path + "."))
        if _under(path, keep_float) is not None or path not in inputs:
            continue  # kept float whole, or never called on the example batch
        island = model.get_submodule(path) if path else model
        config = PrepareCustomConfig().set_non_traceable_module_names(list(skip))
        prepared[path] = prepare_fx(island, _qconfig_mapping(engine, settings, rel_keep), inputs[path], prepare_custom_config=config)
        model = _set_module(model, path, prepared[path])
    samples = batches = 0
    with torch.no_grad():
        for args in calibration:
            model(*args)
            samples, batches = samples + int(args[0].shape[0]), batches + 1
    if batches == 0:
        raise ValueError("the calibration data yielded no batches")
    for path, observed in prepared.items():
        model = _set_module(model, path, convert_fx(observed))
    notes: dict[str, Any] = {
        "quantizer": f"torch.ao FX graph mode (prepare_fx/convert_fx), get_default_qconfig_mapping('{engine}'): "
        "BatchNorm folded into Conv, ReLU fused, adds and concatenations quantized where the model has them",
        "calibration": {"method": settings.method, "observer": OBSERVERS[settings.method], "samples": samples, "batches": batches},
        "activations": f"quint8 asymmetric per-tensor, {'7' if REDUCE_RANGE[engine] else '8'}-bit range ({engine} default)",
        "weights": "qint8 symmetric " + ("per-channel" if engine == "fbgemm" else "per-tensor") + f" ({engine} default)",
    }
    if settings.method == "percentile":
        notes["calibration"]["percentile"] = settings.percentile
    if untraceable:
        notes["untraceable"] = [f"{p}: {why}" for p, why in untraceable.items()]
    if glue:
        notes["untraceable_forward"] = [f"{p or '(model)'}: {why}" for p, why in glue.items()]
    return model, {"notes": notes, "untraceable": untraceable, "glue": glue}


# ------------------------------------------------------------------------------------------- dynamic


class EncoderLayer(nn.Module):
    """nn.TransformerEncoderLayer (inference) with the attention projections as nn.Linear modules, so dynamic
    quantization reaches them: the original computes them functionally and reads Linear weights as tensors."""

    def __init__(self, layer: nn.TransformerEncoderLayer) -> None:
        super().__init__()
        attn = layer.self_attn
        d, self.heads, self.batch_first = attn.embed_dim, attn.num_heads, attn.batch_first
        bias = attn.in_proj_bias is not None
        self.q, self.k, self.v = nn.Linear(d, d, bias=bias), nn.Linear(d, d, bias=bias), nn.Linear(d, d, bias=bias)
        with torch.no_grad():
            for i, proj in enumerate((self.q, self.k, self.v)):
                proj.weight.copy_(attn.in_proj_weight[i * d:(i + 1) * d])
                if bias:
                    proj.bias.copy_(attn.in_proj_bias[i * d:(i + 1) * d])
        self.out = nn.Linear(d, d, bias=attn.out_proj.bias is not None)
        self.out.load_state_dict(attn.out_proj.state_dict())
        self.linear1, self.linear2, self.norm1, self.norm2 = layer.linear1, layer.linear2, layer.norm1, layer.norm2
        self.act = nn.GELU() if layer.activation is F.gelu or isinstance(layer.activation, nn.GELU) else nn.ReLU()
        self.norm_first = layer.norm_first

    def _heads(self, y: Tensor, n: int, length: int) -> Tensor:
        return y.reshape(n, length, self.heads, -1).transpose(1, 2)

    def _attention(self, x: Tensor, mask: Optional[Tensor], padding: Optional[Tensor], is_causal: bool) -> Tensor:
        if not self.batch_first:
            x = x.transpose(0, 1)
        n, length = x.shape[0], x.shape[1]
        bias = torch.zeros(n, 1, length, length, dtype=x.dtype)
        if mask is not None:
            m = torch.zeros_like(mask, dtype=x.dtype).masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else mask
            bias = bias + (m.reshape(n, self.heads, length, length) if m.dim() == 3 else m)
        elif is_causal:
            bias = bias.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf"))
        if padding is not None:
            p = torch.zeros_like(padding, dtype=x.dtype).masked_fill(padding, float("-inf")) if padding.dtype == torch.bool else padding
            bias = bias + p.reshape(n, 1, 1, length)
        q, k, v = self._heads(self.q(x), n, length), self._heads(self.k(x), n, length), self._heads(self.v(x), n, length)
        y = self.out(F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(n, length, -1))
        return y if self.batch_first else y.transpose(0, 1)

    def forward(self, src: Tensor, src_mask: Optional[Tensor] = None, src_key_padding_mask: Optional[Tensor] = None,
                is_causal: bool = False) -> Tensor:
        x = src
        if self.norm_first:
            x = x + self._attention(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            return x + self.linear2(self.act(self.linear1(self.norm2(x))))
        x = self.norm1(x + self._attention(x, src_mask, src_key_padding_mask, is_causal))
        return self.norm2(x + self.linear2(self.act(self.linear1(x))))


class Encoder(nn.Module):
    """nn.TransformerEncoder over EncoderLayers (without the fast path that reads the original layers' weights)."""

    def __init__(self, encoder: nn.TransformerEncoder) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(layer) for layer in encoder.layers)
        self.norm = encoder.norm if encoder.norm is not None else nn.Identity()

    def forward(self, src: Tensor, mask: Optional[Tensor] = None, src_key_padding_mask: Optional[Tensor] = None,
                is_causal: Optional[bool] = None) -> Tensor:
        causal = bool(is_causal) if is_causal is not None else False
        for layer in self.layers:
            src = layer(src, mask, src_key_padding_mask, causal)
        return self.norm(src)


def _rewritable(layer: Any) -> bool:
    attn = layer.self_attn
    return (attn._qkv_same_embed_dim and attn.bias_k is None and not attn.add_zero_attn
            and (layer.activation in (F.relu, F.gelu) or isinstance(layer.activation, (nn.ReLU, nn.GELU))))


def rewrite_transformers(model: Any, example: tuple) -> tuple[Any, str]:
    """Swap nn.TransformerEncoder(Layer)s for the quantizable equivalent; keep the swap only if outputs still match."""
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.TransformerEncoder, nn.TransformerEncoderLayer))]
    targets = [(n, m) for n, m in targets if not any(n.startswith(o + ".") for o, _ in targets if o != n)]  # outermost only
    layers = [m for _, m in targets for m in (m.layers if isinstance(m, nn.TransformerEncoder) else [m])]
    if not targets:
        return model, ""
    if not all(_rewritable(layer) for layer in layers):
        return model, "nn.TransformerEncoderLayer with add_bias_kv, add_zero_attn, kdim/vdim or a custom activation: not rewritten"
    rewritten = copy.deepcopy(model)
    for name, module in targets:
        new = Encoder(module) if isinstance(module, nn.TransformerEncoder) else EncoderLayer(module)
        rewritten = _set_module(rewritten, name, new.eval())
    try:
        with torch.no_grad():
            want, got = _outputs(model(*example)), _outputs(rewritten(*example))
        same = len(want) == len(got) and all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(want, got))
    except Exception as exc:  # e.g. a forward that hands the layers arguments the rewrite does not take
        log.debug("transformer rewrite failed", exc_info=True)
        return model, f"nn.TransformerEncoderLayer rewrite failed ({_first_line(exc)}): kept as is, in float"
    if same:
        return rewritten, f"{len(layers)} nn.TransformerEncoderLayer(s) rewritten with attention projections as nn.Linear (outputs verified equal)"
    return model, "nn.TransformerEncoderLayer rewrite did not reproduce the outputs: kept as is, in float"


def quantize_dynamic(model: Any, engine: str, example: tuple, keep_float: tuple[str, ...]) -> tuple[Any, dict[str, Any]]:
    """Dynamic INT8: Linear/LSTM/GRU weights int8 offline, activations quantized per batch at run time."""
    model, rewrite = rewrite_transformers(model, example)
    spec: dict[Any, Any] = {t: default_dynamic_qconfig for t in (nn.Linear, nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell, nn.RNNCell)}
    # the original encoder layers read their Linear weights as tensors: quantizing those breaks them, so they stay float
    floats = keep_float + tuple(n for n, m in model.named_modules() if isinstance(m, (nn.TransformerEncoder, nn.TransformerEncoderLayer)))
    for name, _ in model.named_modules():
        if _under(name, floats) is not None:
            spec[name] = None  # a name entry wins over the type entries, for the module and each of its children
    model = ao_quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)
    if engine == "qnnpack":  # version 3 calls linear_dynamic without reduce_range=True, which qnnpack ignores noisily
        for module in model.modules():
            if type(module) is ao_dynamic.Linear:
                module.version = 3
    notes: dict[str, Any] = {
        "quantizer": "torch.ao quantize_dynamic: nn.Linear/LSTM/GRU(Cell) weights qint8 symmetric per-tensor; "
        "activations quantized per batch at run time (quint8, range from each batch); everything else runs in float",
    }
    if rewrite:
        notes["transformer_rewrite"] = rewrite
    return model, {"notes": notes, "untraceable": {}, "glue": {}}


# ------------------------------------------------------------------------------------------ float census


def float_ops(model: Any, example: tuple, mode: str, engine: str, found: dict[str, Any], keep_float: tuple[str, ...]) -> list[str]:
    """Run the quantized model once and list the compute ops that ran on float tensors: where, what, how often, why."""
    types = {name: type(m).__name__ for name, m in model.named_modules()}
    stack: list[str] = [""]
    seen: Counter = Counter()

    def is_float(a: Any) -> bool:
        if isinstance(a, (tuple, list)):
            return any(is_float(x) for x in a)
        return isinstance(a, torch.Tensor) and a.is_floating_point()

    class Census(TorchFunctionMode):
        def __torch_function__(self, func: Any, kinds: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
            name = getattr(func, "__name__", str(func)).split(".")[-1]
            if "quantize" not in str(func) and name not in PLUMBING and (mode == "static" or name in HEAVY):
                if is_float(args) or is_float(list((kwargs or {}).values())):
                    seen[(stack[-1], name)] += 1
            return func(*args, **(kwargs or {}))

    def enter(_m: Any, _a: Any, path: str) -> None:
        stack.append(path)

    def leave(_m: Any, _a: Any, _o: Any) -> None:  # returns None: a forward hook's return value replaces the output
        stack.pop()

    hooks = []
    for path, module in model.named_modules():
        if path:
            hooks.append(module.register_forward_pre_hook(functools.partial(enter, path=path)))
            hooks.append(module.register_forward_hook(leave))
    try:
        with torch.no_grad(), Census():
            model(*example)
    finally:
        for h in hooks:
            h.remove()
    lines = []
    for (path, op), count in seen.items():
        where = f"{path} ({types.get(path, '?')})" if path else "(model forward)"
        lines.append(f"{where}: {op} x{count} — {_why_float(path, op, types.get(path, ''), mode, engine, found, keep_float)}")
    return lines[:60] + ([f"... and {len(lines) - 60} more"] if len(lines) > 60 else [])


def _why_float(path: str, op: str, kind: str, mode: str, engine: str, found: dict[str, Any], keep_float: tuple[str, ...]) -> str:
    if (k := _under(path, keep_float)) is not None:
        return f"kept float by recipe keep_float ({k})"
    if (u := _under(path, found["untraceable"])) is not None:
        return f"inside {u}, which torch.fx cannot trace ({found['untraceable'][u]}): the whole module runs in float"
    glue = [g for g in found["glue"] if path == g]
    if glue:
        return f"in the forward of {glue[0] or 'the model'} itself, which torch.fx cannot trace ({found['glue'][glue[0]]})"
    if mode == "dynamic":
        if op in ("matmul", "__matmul__", "bmm", "einsum", "scaled_dot_product_attention"):
            return "activation x activation product: dynamic quantization covers layer weights only"
        if op.startswith("conv"):
            return 'dynamic mode quantizes Linear/LSTM/GRU only; use mode = "static" for convolutions'
        if op == "multi_head_attention_forward":
            return "nn.MultiheadAttention computes its projections functionally; the dynamic quantizer swaps modules only"
        if kind == "NonDynamicallyQuantizableLinear":
            return "torch.ao never swaps NonDynamicallyQuantizableLinear (nn.MultiheadAttention.out_proj)"
        return f"a functional {op} call inside {kind or 'the model'}: the dynamic quantizer swaps nn.Linear/LSTM/GRU modules only"
    return f"torch.ao's {engine} backend config quantizes no pattern with this op here (unsupported op, or its input is float)"


# ------------------------------------------------------------------------------------------ serialization


def to_torchscript(model: Any, example: tuple) -> tuple[Any, str]:
    """Script (or, failing that, trace) and freeze: a self-contained module, submodules inlined into one graph."""
    try:
        scripted, how = torch.jit.script(model), "torch.jit.script + torch.jit.freeze"
    except Exception as exc:
        log.debug("torch.jit.script failed, tracing instead", exc_info=True)
        scripted = torch.jit.trace(model, example, check_trace=False)
        how = (f"torch.jit.trace + torch.jit.freeze (torch.jit.script failed: {_first_line(exc)}); "
               "data-dependent control flow follows the path the example input took")
    return torch.jit.freeze(scripted.eval()), how


_MANGLE = re.compile(rb"\.___torch_mangle_\d+")
_MANGLE_PATH = re.compile(r"/___torch_mangle_\d+")


def canonical_archive(raw: bytes, root_qualname: str) -> bytes:
    """The TorchScript zip with everything that depends on process history removed: debug records (they name FX's
    per-process ``<eval_with_key>.N`` files), ``___torch_mangle_N`` class namespaces (a per-process counter), and the
    root class's name (the model's Python module path), which becomes ``__torch__.edgekit.QuantizedModel``."""

    module, _, cls = root_qualname.rpartition(".")
    new_module, new_cls = CANONICAL_CLASS
    root_file = "code/" + module.replace(".", "/") + ".py"
    reader = torch._C.PyTorchFileReader(io.BytesIO(raw))
    out = io.BytesIO()
    writer = torch._C.PyTorchFileWriter(out)
    for name in reader.get_all_records():
        if name.endswith(".debug_pkl") or name == ".data/serialization_id":
            continue  # the writer computes serialization_id from the records it writes
        data = reader.get_record(name)
        if name == root_file:
            data = data.replace(root_qualname.encode(), f"{new_module}.{new_cls}".encode())
            data = re.sub(rb"^class " + re.escape(cls.encode()) + rb"\(", f"class {new_cls}(".encode(), data, count=1, flags=re.M)
            name = "code/" + new_module.replace(".", "/") + ".py"
        elif name == "data.pkl":
            data = data.replace(f"c{module}\n{cls}\n".encode(), f"c{new_module}\n{new_cls}\n".encode(), 1)
        if name.startswith("code/") or name.endswith(".pkl"):
            data, name = _MANGLE.sub(b"", data), _MANGLE_PATH.sub("", name)
        writer.write_record(name, data, len(data))
    writer.write_end_of_file()
    return out.getvalue()


def serialize(frozen: Any, example: tuple, meta: dict[str, Any]) -> tuple[bytes, str]:
    """Save the frozen module reproducibly; the canonical bytes are loaded back and must give identical outputs."""
    buf = io.BytesIO()
    torch.jit.save(frozen, buf, _extra_files={META: json.dumps(meta, sort_keys=True)})
    raw = buf.getvalue()
    try:
        data = canonical_archive(raw, frozen._c._type().qualified_name())
        with torch.no_grad():
            want = _outputs(frozen(*example))
            got = _outputs(torch.jit.load(io.BytesIO(data), map_location="cpu")(*example))
        if len(want) == len(got) and all(torch.equal(a, b) for a, b in zip(want, got)):
            return data, "reproducible: process-dependent names and debug records removed, reload verified bit-exact"
        problem = "the canonical archive's outputs differ from the frozen module's"
    except Exception as exc:  # an archive layout this rewrite does not know: keep torch's own bytes
        log.debug("canonical TorchScript archive failed", exc_info=True)
        problem = _first_line(exc)
    return raw, f"NOT byte-reproducible ({problem}): torch.jit.save output kept as is"


# ------------------------------------------------------------------------------------------------- runner


class TorchAoRunner(Runner):
    """A loaded torch.ao artifact; the quantized engine is selected for every call and restored after it."""

    def __init__(self, path: Path, inputs: tuple[TensorSpec, ...], outputs: tuple[str, ...], engine: str, threads: int):
        super().__init__(inputs, outputs)
        self.engine, self.threads = engine, threads
        extra = {META: ""}
        with quantized_engine(engine), _torch_warnings_to_log():  # weights are re-packed for the engine current at load
            # torch warns once per process that quantized tensors are deprecated; raised while loading or running
            # TorchScript it goes straight to stderr, raised from Python it is a warning: use the "once" up here
            torch.quantize_per_tensor(torch.zeros(1), 1.0, 0, torch.quint8)
            self.module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        meta = json.loads(extra[META] or "{}")
        if meta.get("engine", engine) != engine:
            raise ValueError(f"{path} was built for the {meta['engine']} engine, not {engine}")

    def _run(self, feed: Feed) -> list[np.ndarray]:
        with quantized_engine(self.engine), _threads(self.threads), torch.inference_mode():
            out = self.module(*(torch.from_numpy(feed[s.name]) for s in self.inputs))
        return [o.detach().numpy() for o in _outputs(out)]


# ------------------------------------------------------------------------------------------------ backend


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

    def check(self, profile: TargetProfile) -> None:
        TorchAoRecipe.parse(profile)

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
        recipe = TorchAoRecipe.parse(ctx.profile)
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
        with quantized_engine(recipe.engine), _torch_warnings_to_log():
            if recipe.mode == "static":
                batches = calibration_batches(ctx.calibration, ctx.source.inputs, ctx.calibration_settings)
                quantized, found = quantize_static(model, recipe.engine, batches, example, ctx.calibration_settings, recipe.keep_float)
            else:
                quantized, found = quantize_dynamic(model, recipe.engine, example, recipe.keep_float)
            stayed = float_ops(quantized, example, recipe.mode, recipe.engine, found, recipe.keep_float)
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
        }
        return Artifact(ctx.profile.name, (ArtifactFile.of(dst, ctx.root),), notes)

    def load(self, artifact: Artifact, root: Path, profile: TargetProfile, reference: Reference) -> Runner:
        recipe = TorchAoRecipe.parse(profile)
        return TorchAoRunner(root / artifact.files[0].path, reference.inputs, reference.outputs, recipe.engine, profile.runtime.threads)

    def versions(self) -> Mapping[str, Any]:
        return {"torch": torch.__version__, "quantized_engines": list(torch.backends.quantized.supported_engines)}
