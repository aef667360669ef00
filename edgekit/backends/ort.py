"""ONNX Runtime targets: FP32 (offline-optimized), static INT8 QDQ with calibration, dynamic INT8.

The smallest real backend and the documentation of the Backend interface.
"""

from __future__ import annotations

import inspect
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from edgekit.backends.base import Availability, Backend, BuildContext, CalibrationSettings, Runner
from edgekit.errors import ProfileError
from edgekit.tables import check_keys
from edgekit.fsutil import atomic_move
from edgekit.types import Artifact, ArtifactFile, Feed, FeedSource, Reference, SourceModel, TargetProfile, TensorSpec

log = logging.getLogger(__name__)

MODES = ("fp32", "static", "dynamic")
# The keys each mode reads (beside `mode`); a key of another mode is an error naming the mode it belongs to.
MODE_KEYS = {
    "fp32": (),
    "static": ("activation_type", "weight_type", "per_channel", "reduce_range", "symmetric_activations", "exclude_op_types",
               "fp32_input_layers"),
    "dynamic": ("weight_type", "per_channel", "reduce_range", "exclude_op_types", "fp32_fallback_sqnr_db",
                "transformer_fusion", "gelu_approximation", "smooth_alpha", "smooth_below_sqnr_db"),
}
QUANT_TYPES = ("int8", "uint8")


@dataclass(frozen=True)
class OrtRecipe:
    """The ``[recipe]`` of an ``ort`` profile."""

    mode: str = "fp32"
    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = True
    reduce_range: bool | str = "auto"  # "auto": 7-bit weights only where the host lacks exact INT8 dot products
    symmetric_activations: bool = False
    exclude_op_types: tuple[str, ...] = ()
    # dynamic mode: MatMul/Gemm nodes whose input activations would be quantized with a predicted SQNR below this
    # (measured on calibration data, when the build has any) stay FP32; 0 disables. See ort_dynamic.fp32_fallback_nodes().
    fp32_fallback_sqnr_db: float = 0.0
    # static mode: Conv/Gemm/MatMul nodes that read a graph input directly (a CNN's stem) stay FP32: true, false, or
    # "auto" = FP32 unless a pooling op follows the stem (ORT would then run that pool in FP32); see ort_static.py.
    fp32_input_layers: bool | str = False
    # dynamic mode, see edgekit/backends/ort_dynamic.py: ONNX Runtime's transformer fusions before quantizing, and
    # SmoothQuant-style smoothing (alpha 0 disables) of MatMul inputs predicted under smooth_below_sqnr_db.
    transformer_fusion: bool = False
    # dynamic mode: exact (erf) Gelu nodes become FastGelu, the tanh approximation (Optimum's O3 does the same), after
    # the fusion check; its error is orders of magnitude under INT8's, and the validator's gates measure the result.
    gelu_approximation: bool = False
    smooth_alpha: float = 0.0
    smooth_below_sqnr_db: float = 30.0

    @classmethod
    def parse(cls, profile: TargetProfile) -> "OrtRecipe":
        r = dict(profile.recipe)
        mode = r.get("mode", cls.mode)
        if mode not in MODES:
            raise ProfileError(f"target '{profile.name}' recipe mode = {mode!r}; expected one of {MODES}")
        valid = ("mode", *MODE_KEYS[mode])
        other_keys = {k for keys in MODE_KEYS.values() for k in keys} - set(valid)
        owners = {k: [m for m, keys in MODE_KEYS.items() if k in keys] for k in other_keys}
        elsewhere = {k: " or ".join(f'mode = "{m}"' for m in ms) for k, ms in owners.items()}
        check_keys(r, valid, f"target '{profile.name}' [recipe] (mode = \"{mode}\")", ProfileError, elsewhere)
        if "exclude_op_types" in r:
            r["exclude_op_types"] = tuple(r["exclude_op_types"])
        recipe = cls(**r)
        if recipe.mode not in MODES:
            raise ProfileError(f"target '{profile.name}' recipe mode = {recipe.mode!r}; expected one of {MODES}")
        if recipe.fp32_input_layers not in (True, False, "auto"):
            raise ProfileError(f"target '{profile.name}' recipe fp32_input_layers = {recipe.fp32_input_layers!r}; expected true, false or \"auto\"")
        if recipe.reduce_range not in (True, False, "auto"):
            raise ProfileError(f"target '{profile.name}' recipe reduce_range = {recipe.reduce_range!r}; expected true, false or \"auto\"")
        if isinstance(recipe.fp32_fallback_sqnr_db, bool) or not isinstance(recipe.fp32_fallback_sqnr_db, (int, float)) or recipe.fp32_fallback_sqnr_db < 0:
            raise ProfileError(f"target '{profile.name}' recipe fp32_fallback_sqnr_db = {recipe.fp32_fallback_sqnr_db!r}; expected a number of dB >= 0")
        if isinstance(recipe.smooth_alpha, bool) or not isinstance(recipe.smooth_alpha, (int, float)) or not 0 <= recipe.smooth_alpha <= 1:
            raise ProfileError(f"target '{profile.name}' recipe smooth_alpha = {recipe.smooth_alpha!r}; expected a number in [0, 1] (0 disables)")
        if isinstance(recipe.smooth_below_sqnr_db, bool) or not isinstance(recipe.smooth_below_sqnr_db, (int, float)) or recipe.smooth_below_sqnr_db < 0:
            raise ProfileError(f"target '{profile.name}' recipe smooth_below_sqnr_db = {recipe.smooth_below_sqnr_db!r}; expected a number of dB >= 0")
        for key in ("transformer_fusion", "gelu_approximation"):
            if not isinstance(getattr(recipe, key), bool):
                raise ProfileError(f"target '{profile.name}' recipe {key} = {getattr(recipe, key)!r}; expected true or false")
        for key in ("activation_type", "weight_type"):
            if getattr(recipe, key) not in QUANT_TYPES:
                raise ProfileError(f"target '{profile.name}' recipe {key} = {getattr(recipe, key)!r}; expected int8 or uint8")
        return recipe

    def resolved_reduce_range(self) -> bool:
        """``auto`` resolves per host: x86 without VNNI/AMX saturates u8 x s8 products, so weights get 7 bits."""
        if self.reduce_range == "auto":
            from edgekit.hostinfo import has_int8_dot

            return not has_int8_dot()
        return bool(self.reduce_range)


def session(model: str | bytes, threads: int, optimize: bool = True, save_to: Path | None = None, spinning: bool = True,
            profile_prefix: str | None = None) -> Any:
    """An ONNX Runtime CPU session with a fixed thread count (timing is only comparable with threads fixed).

    ``spinning=False`` stops idle intra-op workers from spin-waiting: needed when several sessions take turns in
    one process (a benchmark interleaving them), where one session's spinning workers steal the cores of the next.
    ``profile_prefix``: ONNX Runtime's profiler on, its trace written under that prefix by ``end_profiling()``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    if save_to is not None:
        # Offline optimization saved to disk stays portable only at the BASIC level (standard ONNX ops).
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(save_to)
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


class FeedCalibrationReader:
    """ONNX Runtime's CalibrationDataReader protocol over a FeedSource, limited to ``samples``."""

    def __init__(self, source: FeedSource, specs: tuple[TensorSpec, ...], settings: CalibrationSettings):
        self.source, self.specs, self.settings = source, specs, settings
        static_batch = any(0 not in s.dynamic_axes for s in specs)
        self.batch_size = 1 if static_batch else settings.batch_size
        self.batches_read = 0
        self.samples_read = 0
        self._it: Iterator[Feed] | None = None

    def _feeds(self) -> Iterator[Feed]:
        """One pass; when it completes, ``samples_read`` / ``batches_read`` are that pass's counts (readers make
        several passes: edgekit's range measurements, then ORT's calibrator unless it was handed the ranges)."""
        left = self.settings.samples
        samples = batches = 0
        for batch in self.source.batches(self.batch_size):
            if left <= 0:
                break
            feed = {s.name: np.ascontiguousarray(batch.feed[s.name][:left], dtype=s.dtype) for s in self.specs}
            n = next(iter(feed.values())).shape[0]
            left -= n
            batches += 1
            samples += n
            yield feed
        self.samples_read, self.batches_read = samples, batches

    def get_next(self) -> Feed | None:
        if self._it is None:
            self._it = self._feeds()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


def _qtype(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return QuantType.QInt8 if name == "int8" else QuantType.QUInt8


def _calibrate_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[name]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"


def preprocess(src: Path, dst: Path) -> str:
    """ORT's quantization pre-processing, degrading gracefully: symbolic shape inference fails on some
    dynamo exports ("Incomplete symbolic shape inference"), so retry without it, then without any."""
    from onnxruntime.quantization import quant_pre_process

    attempts = (("full", {}), ("without symbolic shape inference", {"skip_symbolic_shape": True}))
    failures = []
    for label, kwargs in attempts:
        try:
            quant_pre_process(str(src), str(dst), **kwargs)
            return f"pre-processed ({label})" + (f"; after: {'; '.join(failures)}" if failures else "")
        except Exception as exc:  # ORT raises bare Exceptions here
            failures.append(f"{label} failed ({_first_line(exc)})")
            log.debug("quant_pre_process %s failed: %s", label, exc)
    dst.write_bytes(src.read_bytes())
    return f"not pre-processed: {'; '.join(failures)}"


def _strip_value_info(src: Path, dst: Path) -> None:
    import onnx

    model = onnx.load(str(src))
    del model.graph.value_info[:]
    onnx.save(model, str(dst))


def _with_fallbacks(src: Path, tmp: Path, attempt: Callable[[Path], None]) -> str:
    """Run a quantizer; on the shape-inference failures some exports trigger, retry on a cleaned graph."""
    try:
        attempt(src)
        return ""
    except Exception as exc:  # onnx.shape_inference.InferenceError and others
        first = _first_line(exc)
        log.debug("quantizer failed on %s: %s", src, exc)
    cleaned = tmp / "no_value_info.onnx"
    _strip_value_info(src, cleaned)
    try:
        attempt(cleaned)
        return f"first attempt failed ({first}); succeeded after dropping stale value_info"
    except Exception as exc:
        second = _first_line(exc)
    optimized = tmp / "ort_basic.onnx"
    session(str(src), 1, save_to=optimized)
    attempt(optimized)
    return f"first attempts failed ({first}; {second}); succeeded on the ORT-basic-optimized graph"


def quantize_static_qdq(
    src: Path, dst: Path, calib: FeedSource, specs: tuple[TensorSpec, ...], settings: CalibrationSettings, recipe: OrtRecipe
) -> dict[str, Any]:
    """Static QDQ quantization of ``src`` into ``dst``; shared with the TensorRT INT8 target."""
    import onnx
    from onnxruntime.quantization import QuantFormat, quantize_static

    from edgekit.backends import ort_static

    reader = FeedCalibrationReader(calib, specs, settings)
    reduce_range = recipe.resolved_reduce_range()
    chosen: dict[str, Any] = {}

    def attempt(model: Path) -> None:
        graph = onnx.load(str(model)).graph
        fp32_layers = ort_static.fp32_input_layer_names(graph, recipe.fp32_input_layers)
        overrides: dict[str, Any] = {}
        levels = 254 if recipe.symmetric_activations and recipe.activation_type == "int8" else 255
        stats = ort_static.activation_stats(model, graph, reader, (recipe.symmetric_activations, levels)
                                            if settings.method == "mse" else None)
        chosen["stats"] = stats
        cache: dict[str, Any] = {}
        if settings.method in ("minmax", "mse") and "calibration_cache_path" in inspect.signature(quantize_static).parameters:
            # the min/max just measured are ORT's MinMax ranges: handing them over skips ORT's calibration pass
            cache["calibration_cache_path"] = str(model.with_name("edgekit_minmax_cache.json"))
            ort_static.write_minmax_cache(stats.bounds, stats.fill_tensors, Path(cache["calibration_cache_path"]))
        chosen["ort_calibration"] = "skipped: edgekit's min/max pass handed over" if cache else "ONNX Runtime's calibrator"
        overrides.update(ort_static.range_overrides(stats.mse_ranges))  # empty unless method = "mse"
        if reduce_range and recipe.weight_type == "int8" and recipe.per_channel:
            exact = ort_static.exact_weight_overrides(graph, fp32_layers)
            overrides.update(exact)
            chosen["exact_8bit"] = len(exact)
        chosen["fp32_layers"] = fp32_layers
        chosen["has_input_layers"] = bool(ort_static.input_layers(graph))
        extra: dict[str, Any] = {"ActivationSymmetric": recipe.symmetric_activations, "WeightSymmetric": True}
        if settings.method == "percentile":
            extra["CalibPercentile"] = settings.percentile
        if overrides:
            extra["TensorQuantOverrides"] = overrides
        reader.rewind()
        quantize_static(
            str(model),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=recipe.per_channel,
            reduce_range=reduce_range,
            activation_type=_qtype(recipe.activation_type),
            weight_type=_qtype(recipe.weight_type),
            calibrate_method=_calibrate_method("minmax" if settings.method == "mse" else settings.method),
            op_types_to_quantize=None,
            nodes_to_exclude=_nodes_of_types(model, recipe.exclude_op_types) + fp32_layers + stats.fill_nodes,
            extra_options=extra,
            **cache,
        )

    with tempfile.TemporaryDirectory(prefix="edgekit-ort-") as tmpdir:
        tmp = Path(tmpdir)
        pre = tmp / "pre.onnx"
        pre_note = preprocess(src, pre)
        out = tmp / "quant.onnx"
        fallback = _with_fallbacks(pre, tmp, attempt)
        atomic_move(out, dst)
    notes = {
        "preprocess": pre_note,
        "calibration": {"method": settings.method, "samples": reader.samples_read, "batches": reader.batches_read,
                        "ort_pass": chosen["ort_calibration"]},
        "activations": f"{recipe.activation_type} {'symmetric' if recipe.symmetric_activations else 'asymmetric'} per-tensor",
        "weights": f"{recipe.weight_type} symmetric {'per-channel' if recipe.per_channel else 'per-tensor'}"
        + _range_note(recipe),
    }
    if settings.method == "mse":
        notes["calibration"]["ranges"] = f"MSE-optimal clipping (histogram of {ort_static.BINS} bins) narrowed {len(chosen['stats'].mse_ranges)} tensor range(s)"
    if chosen.get("exact_8bit"):
        notes["weights"] += (f"; {chosen['exact_8bit']} layer(s) with 8-bit weights where ONNX Runtime's kernel cannot saturate "
                             "(depthwise: int8; quantized stem: uint8, u8 x u8)")
    if recipe.fp32_input_layers is not False:
        kept = ", ".join(chosen["fp32_layers"]) or "none"
        if not chosen["has_input_layers"]:
            kept += " (no Conv/Gemm/MatMul reads a graph input)"
        elif recipe.fp32_input_layers == "auto" and not chosen["fp32_layers"]:
            kept += " (a pooling op follows the stem, so it is quantized)"
        notes["fp32_input_layers"] = f"{recipe.fp32_input_layers}: kept FP32: {kept}"
    filled = chosen["stats"].fill_tensors
    if filled:
        notes["fill_values"] = (f"{len(filled)} tensor(s) reach |x| >= {ort_static.FILL_VALUE:g} "
                                f"(attention-mask fill values such as -inf or finfo.min), so their "
                                f"{len(chosen['stats'].fill_nodes)} producer/consumer node(s) stay FP32: "
                                + ", ".join(filled[:8]) + (" ..." if len(filled) > 8 else ""))
    if settings.method == "percentile":
        notes["calibration"]["percentile"] = settings.percentile
    if fallback:
        notes["quantizer"] = fallback
    return notes


def _range_note(recipe: OrtRecipe) -> str:
    if not recipe.resolved_reduce_range():
        return ", 8-bit range"
    why = " (reduce_range = auto: this x86 host has no VNNI/AMX, where full-range u8 x s8 products saturate)"
    return ", 7-bit range" + (why if recipe.reduce_range == "auto" else "")


def _nodes_of_types(model: Path, op_types: tuple[str, ...]) -> list[str]:
    if not op_types:
        return []
    import onnx

    return [n.name for n in onnx.load(str(model)).graph.node if n.op_type in op_types]


class OrtRunner(Runner):
    def __init__(self, path: Path, inputs: tuple[TensorSpec, ...], outputs: tuple[str, ...], threads: int, spinning: bool = True):
        super().__init__(inputs, outputs)
        self.path, self.threads = Path(path), threads
        self.session = session(str(path), threads, spinning=spinning)
        self._names = [o.name for o in self.session.get_outputs()]

    def _run(self, feed: Feed) -> list[np.ndarray]:
        return self.session.run(self._names, feed)


class OrtBackend(Backend):
    name = "ort"

    def parse_recipe(self, profile: TargetProfile) -> OrtRecipe:
        return OrtRecipe.parse(profile)

    def needs_calibration(self, profile: TargetProfile, recipe: OrtRecipe) -> bool:
        return recipe.mode == "static"

    def availability(self, profile: TargetProfile, source: SourceModel | None = None) -> Availability:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            return Availability(False, f"onnxruntime is not importable: {exc}", "pip install onnxruntime")
        return Availability(True)

    def build(self, ctx: BuildContext) -> Artifact:
        recipe = self.recipe_for(ctx)
        dst = ctx.target_dir / "model.onnx"
        if recipe.mode == "fp32":
            with tempfile.TemporaryDirectory(prefix="edgekit-ort-") as tmpdir:
                out = Path(tmpdir) / "model.onnx"
                session(str(ctx.reference.path), 1, save_to=out)
                atomic_move(out, dst)
            notes: dict[str, Any] = {"optimization": "ONNX Runtime ORT_ENABLE_BASIC, saved offline; ORT_ENABLE_ALL at load"}
        elif recipe.mode == "static":
            if ctx.calibration is None:
                raise ProfileError(f"target '{ctx.profile.name}' needs calibration data: add a [calibration] section")
            notes = quantize_static_qdq(ctx.reference.path, dst, ctx.calibration, ctx.reference.inputs, ctx.calibration_settings, recipe)
        else:
            from edgekit.backends.ort_dynamic import quantize_dynamic_int8

            notes = quantize_dynamic_int8(ctx.reference.path, dst, recipe, ctx.calibration, ctx.reference.inputs, ctx.calibration_settings)
        return Artifact(ctx.profile.name, (ArtifactFile.of(dst, ctx.root),), notes,
                        warnings=(notes["warning"],) if "warning" in notes else ())

    def load(self, artifact: Artifact, root: Path, profile: TargetProfile, reference: Reference) -> Runner:
        return OrtRunner(root / artifact.files[0].path, reference.inputs, reference.outputs, profile.runtime.threads)

    def versions(self) -> Mapping[str, Any]:
        import onnxruntime

        return {"onnxruntime": onnxruntime.__version__}
