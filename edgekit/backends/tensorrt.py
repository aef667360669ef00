"""TensorRT targets: a precision-explicit ONNX (FP16 casts or INT8 QDQ) built into a strongly typed engine where
TensorRT and a CUDA GPU exist; elsewhere that ONNX is measured on ONNX Runtime CPU as a host proxy.
"""

from __future__ import annotations

import difflib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgekit.backends.base import Availability, Backend, BuildContext, CalibrationSettings, Runner
from edgekit.backends.trt_onnx import DEFAULT_KEEP_FP32_OPS, emulate_fp16, make_fp16_onnx, make_int8_qdq_onnx
from edgekit.errors import ProfileError
from edgekit.fsutil import atomic_write_bytes
from edgekit.types import Artifact, ArtifactFile, Feed, FeedSource, Reference, SourceModel, TargetProfile, TensorSpec

log = logging.getLogger(__name__)

HOST_PROXY = "host proxy (ONNX Runtime CPU), not a TensorRT engine"
INSTALL_HINT = "pip install tensorrt (needs an NVIDIA GPU and driver)"
API_VERSION = "TensorRT 10.x Python API (10.0 and later; also valid on 11.x, where strong typing is always on)"
DEFAULT_MAX_DIM = 32  # default upper bound of a dynamic dimension's optimization profile
CALIBRATORS = ("none", "entropy")
_DIM_KEYS = ("min", "opt", "max")

ProfileShapes = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
"""(min, opt, max) shape of one engine input."""


@dataclass(frozen=True)
class TensorRTRecipe:
    """The ``[recipe]`` of a ``tensorrt`` profile."""

    workspace_mb: int = 1024
    builder_optimization_level: int = 3
    timing_cache: str = "~/.cache/edgekit/tensorrt/timing.cache"  # "" turns the persistent cache off
    keep_fp32_ops: tuple[str, ...] = DEFAULT_KEEP_FP32_OPS  # fp16: stay FP32; int8: left unquantized
    keep_fp32_nodes: tuple[str, ...] = ()  # fp16 only
    calibrator: str = "none"  # int8 only; "entropy": TensorRT 10's implicit calibration, never required
    calibration_cache: str = ""  # with calibrator = "entropy"; "" -> calibration.cache beside the engine
    shapes: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # dim name -> {min, opt, max}

    @classmethod
    def parse(cls, profile: TargetProfile) -> "TensorRTRecipe":
        where = f"target '{profile.name}' recipe"
        known = tuple(cls.__dataclass_fields__)
        raw = dict(profile.recipe)
        for key in raw:
            if key not in known:
                near = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys: {', '.join(known)}"
                raise ProfileError(f"unknown key '{key}' in {where}{hint}")
        if profile.precision not in ("fp16", "int8"):
            raise ProfileError(f"{where}: a tensorrt target has precision fp16 or int8, got {profile.precision!r}")
        for key, low, high in (("workspace_mb", 1, None), ("builder_optimization_level", 0, 5)):
            if key in raw:
                _int_in(raw[key], low, high, f"{where} key '{key}'")
        for key in ("timing_cache", "calibrator", "calibration_cache"):
            if key in raw and not isinstance(raw[key], str):
                raise ProfileError(f"{where} key '{key}' must be a string, got {raw[key]!r}")
        for key in ("keep_fp32_ops", "keep_fp32_nodes"):
            if key in raw:
                if not isinstance(raw[key], list) or not all(isinstance(v, str) for v in raw[key]):
                    raise ProfileError(f"{where} key '{key}' must be a list of strings, got {raw[key]!r}")
                raw[key] = tuple(raw[key])
        if raw.get("keep_fp32_nodes") and profile.precision != "fp16":
            raise ProfileError(f"{where} key 'keep_fp32_nodes' applies to precision fp16 only (int8 keeps op types)")
        if raw.get("calibrator", "none") not in CALIBRATORS:
            raise ProfileError(f"{where} key 'calibrator' = {raw['calibrator']!r}; expected one of {', '.join(CALIBRATORS)}")
        if raw.get("calibrator", "none") != "none" and profile.precision != "int8":
            raise ProfileError(f"{where} key 'calibrator' applies to precision int8 only")
        shapes = raw.get("shapes", {})
        if not isinstance(shapes, dict):
            raise ProfileError(f"{where} key 'shapes' must be a table of dimension name -> {{min, opt, max}}")
        for dim, bounds in shapes.items():
            if not isinstance(bounds, dict):
                raise ProfileError(f"{where} key 'shapes.{dim}' must be a table such as {{ min = 1, opt = 8, max = 32 }}")
            for k, v in bounds.items():
                if k not in _DIM_KEYS:
                    raise ProfileError(f"unknown key 'shapes.{dim}.{k}' in {where}; valid keys: min, opt, max")
                _int_in(v, 1, None, f"{where} key 'shapes.{dim}.{k}'")
            present = [bounds[k] for k in _DIM_KEYS if k in bounds]
            if present != sorted(present):
                raise ProfileError(f"{where} key 'shapes.{dim}' needs min <= opt <= max, got {bounds}")
        return cls(**raw)


def _int_in(value: Any, low: int, high: int | None, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
        raise ProfileError(f"{where} must be {bound}, got {value!r}")
    return value


def optimization_profile(
    specs: Sequence[TensorSpec],
    configured: Mapping[str, Sequence[int]],
    ranges: Mapping[str, Mapping[str, int]],
    default_max: int = DEFAULT_MAX_DIM,
) -> dict[str, ProfileShapes]:
    """(min, opt, max) shape per input. Fixed dims are fixed; a dynamic dim (a name such as "batch") takes
    ``ranges[name]`` where given, else min 1, opt = its size in the configured shape, max = max(opt, default_max)."""
    dynamic = sorted({d for s in specs for d in s.shape if isinstance(d, str)})
    unknown = sorted(set(ranges) - set(dynamic))
    if unknown:
        raise ProfileError(f"recipe shapes name dimension(s) {unknown} the model does not have; its dynamic dimensions: "
                           f"{', '.join(dynamic) or 'none'}")
    out = {}
    for spec in specs:
        shape = configured.get(spec.name)
        dims: list[tuple[int, int, int]] = []
        for axis, d in enumerate(spec.shape):
            if isinstance(d, int):
                dims.append((d, d, d))
                continue
            opt_default = int(shape[axis]) if shape is not None and axis < len(shape) else 1
            given = ranges.get(d, {})
            lo, opt = given.get("min", 1), given.get("opt", opt_default)
            hi = given.get("max", max(opt, default_max))
            if not 1 <= lo <= opt <= hi:
                raise ProfileError(f"optimization profile of dimension '{d}' (input '{spec.name}' axis {axis}) needs "
                                   f"1 <= min <= opt <= max, got min {lo}, opt {opt}, max {hi}")
            dims.append((lo, opt, hi))
        mins, opts, maxs = (tuple(x[i] for x in dims) for i in range(3))
        out[spec.name] = (mins, opts, maxs)
    return out


def engine_unavailable() -> str:
    """Why a TensorRT engine cannot be built and run here ("" when it can). Cheap, never raises."""
    try:
        import tensorrt  # noqa: F401  (imported here only: TensorRT is optional)
    except Exception as exc:  # ImportError, or OSError/RuntimeError when its libraries fail to load
        return f"TensorRT is not installed ({type(exc).__name__}: {exc})"
    try:
        import torch

        if not torch.cuda.is_available():
            return (f"no CUDA device: torch {torch.__version__} sees no GPU (the engine step needs an NVIDIA GPU "
                    "and a CUDA build of torch for device buffers)")
    except Exception as exc:
        return f"no CUDA device ({type(exc).__name__}: {exc})"
    return ""


def _trt_major() -> int:
    import tensorrt as trt

    return int(trt.__version__.split(".")[0])


def _engine_problem(profile: TargetProfile) -> tuple[str, str]:
    """(why this target's engine cannot be built here, what to do) or ("", "")."""
    reason = engine_unavailable()
    if reason:
        return reason, INSTALL_HINT
    if profile.recipe.get("calibrator", "none") == "entropy" and _trt_major() >= 11:
        return ("recipe calibrator = 'entropy' needs TensorRT 10: TensorRT 11 removed implicit INT8 calibration",
                'use calibrator = "none" (the QDQ recipe)')
    return "", ""


class HostProxyRunner(Runner):
    """The precision-explicit ONNX on ONNX Runtime CPU with graph optimizations off, so the recipe is measured,
    not ORT's kernels: Q/DQ run as written (fake-quant in FP32, exact like TensorRT's int32 accumulation; ORT's
    fused INT8 kernels saturate 8-bit products on CPUs without VNNI), and an FP16 graph runs as its FP16
    emulation (``emulate_fp16``), since ORT CPU would otherwise compute it in FP32."""

    def __init__(self, path: Path, inputs: tuple[TensorSpec, ...], outputs: tuple[str, ...], threads: int, fp16: bool):
        from edgekit.backends.ort import session

        super().__init__(inputs, outputs)
        model: str | bytes = str(path)
        if fp16:
            import onnx

            model = emulate_fp16(onnx.load(str(path))).SerializeToString()
        self.session = session(model, threads, optimize=False)
        self._names = [o.name for o in self.session.get_outputs()]

    def _run(self, feed: Feed) -> list[np.ndarray]:
        return self.session.run(self._names, feed)


# ------------------------------------------------------------------------------------------- engine
# Everything below runs only where TensorRT and a CUDA GPU exist; it was written against the documented
# TensorRT 10 Python API and has never run on the machines that test edgekit (see docs/tensorrt.md).


@dataclass(frozen=True)
class EngineCalibration:
    """TensorRT 10's implicit INT8 calibration (``calibrator = "entropy"``), with its cache file."""

    source: FeedSource
    specs: tuple[TensorSpec, ...]
    settings: CalibrationSettings
    cache: Path


def _trt_logger(trt: Any) -> Any:
    """A TensorRT ILogger that forwards to this module's logger and keeps the errors for the exception text."""
    sev = trt.ILogger.Severity
    levels = {sev.INTERNAL_ERROR: logging.ERROR, sev.ERROR: logging.ERROR, sev.WARNING: logging.WARNING}

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            level = levels.get(severity, logging.DEBUG)
            if level >= logging.ERROR:
                self.errors.append(msg)
            log.log(level, "TensorRT: %s", msg)

    return _Logger()


def _entropy_calibrator(trt: Any, cal: EngineCalibration, batch: int) -> Any:
    """IInt8EntropyCalibrator2 over the calibration FeedSource: full batches of ``batch`` samples (TensorRT
    calibrates at one fixed shape), device copies through torch, and a reusable calibration cache file."""
    import dataclasses

    import torch

    from edgekit.backends.ort import FeedCalibrationReader

    reader = FeedCalibrationReader(cal.source, cal.specs, dataclasses.replace(cal.settings, batch_size=batch))

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._held: list[Any] = []

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            feed = reader.get_next()
            while feed is not None and next(iter(feed.values())).shape[0] != batch:
                feed = reader.get_next()  # a last partial batch does not fit the calibration shape
            if feed is None:
                return None
            self._held = [torch.from_numpy(feed[n]).cuda() for n in names]
            return [t.data_ptr() for t in self._held]

        def read_calibration_cache(self) -> bytes | None:
            return cal.cache.read_bytes() if cal.cache.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            atomic_write_bytes(cal.cache, bytes(memoryview(cache)))

    return _Calibrator()


def build_engine(onnx_path: Path, engine_path: Path, shapes: Mapping[str, ProfileShapes], recipe: TensorRTRecipe,
                 calibration: EngineCalibration | None = None) -> dict[str, Any]:
    """Parse ``onnx_path`` and write a serialized engine to ``engine_path``: a strongly typed network (the ONNX
    says every precision), one optimization profile, the recipe's workspace limit and optimization level, and
    the persistent timing cache (read, then written back). Return the notes for the manifest."""
    import tensorrt as trt

    if calibration is not None and _trt_major() >= 11:
        raise ProfileError("recipe calibrator = 'entropy' needs TensorRT 10: TensorRT 11 removed implicit INT8 "
                           "calibration; use the QDQ recipe (calibrator = 'none')")
    logger = _trt_logger(trt)
    builder = trt.Builder(logger)
    # TensorRT 11 deprecates the flag (strong typing is always on there); a release without it needs no flag.
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    flags = 0 if calibration is not None or strongly_typed is None else 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {errors[:600]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, recipe.workspace_mb << 20)
    config.builder_optimization_level = recipe.builder_optimization_level
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        profile.set_shape(name, *shapes[name])
    config.add_optimization_profile(profile)

    cache_path = Path(recipe.timing_cache).expanduser() if recipe.timing_cache else None
    cache_note = "off (recipe timing_cache = \"\")"
    if cache_path is not None:
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        cache_note = f"{cache_path} ({'reused' if blob else 'new'})"
        if not config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=False):
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
            cache_note = f"{cache_path} (made by another TensorRT or GPU; started a new one)"

    precision = "strongly typed (precisions from the ONNX)"
    if calibration is not None:
        batch = min(max(calibration.settings.batch_size, shapes[calibration.specs[0].name][0][0]),
                    shapes[calibration.specs[0].name][2][0])
        fixed = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            name = network.get_input(i).name
            shape = (batch, *shapes[name][1][1:])
            fixed.set_shape(name, shape, shape, shape)
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)
        config.int8_calibrator = _entropy_calibrator(trt, calibration, batch)
        config.set_calibration_profile(fixed)
        precision = f"TensorRT 10 implicit INT8 (entropy calibrator, batch {batch}, cache {calibration.cache})"
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build the engine: {'; '.join(logger.errors[-3:]) or 'see the debug log'}")
    atomic_write_bytes(engine_path, bytes(memoryview(serialized)))
    if cache_path is not None:
        atomic_write_bytes(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    return {
        "engine": f"built with TensorRT {trt.__version__} in {time.perf_counter() - start:.1f} s: {precision}, "
        f"workspace {recipe.workspace_mb} MB, builder optimization level {recipe.builder_optimization_level}",
        "timing_cache": cache_note,
        "measured_on": f"TensorRT {trt.__version__} engine on {_gpu_name()} (the build host's GPU)",
    }


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(torch.cuda.current_device())


class TensorRTRunner(Runner):
    """A serialized engine on the GPU: inputs and outputs in torch CUDA tensors, one CUDA stream, and every
    ``run`` ends with a stream synchronize, so the validator's timings cover the whole device round trip."""

    def __init__(self, engine_path: Path, inputs: tuple[TensorSpec, ...], outputs: tuple[str, ...]):
        import tensorrt as trt
        import torch

        super().__init__(inputs, outputs)
        self._torch = torch
        self._logger = _trt_logger(trt)
        self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT {trt.__version__} cannot load {engine_path.name} (built by another TensorRT "
                               f"version or for another GPU?): {'; '.join(self._logger.errors[-2:])}")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._in = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._out = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtype = {n: torch.from_numpy(np.empty(0, trt.nptype(self.engine.get_tensor_dtype(n)))).dtype for n in names}
        missing = [o for o in outputs if o not in self._out]
        if missing:
            raise RuntimeError(f"the engine lacks output(s) {missing}; it has {self._out}")
        # A feed larger than the profile's max batch runs in chunks.
        batched = [self.engine.get_tensor_profile_shape(n, 0)[2][0] for n in self._in
                   if 0 in next((s.dynamic_axes for s in inputs if s.name == n), {})]
        self._max_batch = min(batched) if batched else None

    def _run(self, feed: Feed) -> list[np.ndarray]:
        n = next(iter(feed.values())).shape[0]
        step = self._max_batch or n
        parts = [self._run_chunk({k: v[i:i + step] for k, v in feed.items()}) for i in range(0, n, step)]
        return [np.concatenate([p[j] for p in parts]) for j in range(len(self.outputs))]

    def _run_chunk(self, feed: Feed) -> list[np.ndarray]:
        torch = self._torch
        with torch.cuda.stream(self.stream):
            held = []
            for name in self._in:
                t = torch.from_numpy(np.ascontiguousarray(feed[name])).to("cuda", dtype=self._dtype[name])
                self.context.set_input_shape(name, tuple(t.shape))
                self.context.set_tensor_address(name, t.data_ptr())
                held.append(t)
            outs = {}
            for name in self._out:
                outs[name] = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._dtype[name], device="cuda")
                self.context.set_tensor_address(name, outs[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution failed: {'; '.join(self._logger.errors[-2:])}")
            host = [outs[name].to("cpu") for name in self.outputs]
        self.stream.synchronize()
        return [h.numpy() for h in host]

    def close(self) -> None:
        self.context = None
        self.engine = None
        self._torch.cuda.empty_cache()


class TensorRTBackend(Backend):
    name = "tensorrt"

    def check(self, profile: TargetProfile) -> None:
        TensorRTRecipe.parse(profile)

    def availability(self, profile: TargetProfile, source: SourceModel | None = None) -> Availability:
        reason, hint = _engine_problem(profile)
        return Availability(False, reason, hint, proxy=True) if reason else Availability(True)

    def build(self, ctx: BuildContext) -> Artifact:
        recipe = TensorRTRecipe.parse(ctx.profile)
        onnx_path = ctx.target_dir / "model.onnx"
        if ctx.profile.precision == "fp16":
            notes = make_fp16_onnx(ctx.reference.path, onnx_path, recipe.keep_fp32_ops, recipe.keep_fp32_nodes)
        else:
            if ctx.calibration is None:
                raise ProfileError(f"target '{ctx.profile.name}' needs calibration data: add a [calibration] section")
            notes = make_int8_qdq_onnx(ctx.reference.path, onnx_path, ctx.calibration, ctx.reference.inputs,
                                       ctx.calibration_settings, recipe.keep_fp32_ops)
        # BuildContext.shapes (the configured example shapes) sets each profile's opt; until the pipeline passes
        # it, opt falls back to 1 for dynamic dimensions.
        configured = getattr(ctx, "shapes", None) or {}
        shapes = optimization_profile(ctx.reference.inputs, configured, recipe.shapes)
        notes["optimization_profile"] = {n: f"min {list(s[0])} opt {list(s[1])} max {list(s[2])}" for n, s in shapes.items()}
        notes["tensorrt_api"] = API_VERSION
        files = [ArtifactFile.of(onnx_path, ctx.root)]
        reason, hint = _engine_problem(ctx.profile)
        if reason:
            notes["engine"] = f"not built: {reason}; {hint}"
            notes["host_proxy"] = HOST_PROXY
            notes["measured_on"] = f"{HOST_PROXY}; build host, not the target device"
            notes["proxy_method"] = (
                "FP16 emulation: FP32 arithmetic with every FP16 tensor rounded to FP16 where produced (TensorRT "
                "with FP32 accumulation)" if ctx.profile.precision == "fp16" else
                "Q/DQ run as written (fake-quant in FP32, like TensorRT's exact int32 accumulation)"
            ) + "; ONNX Runtime graph optimizations off; latency is ONNX Runtime CPU's, not the GPU's"
            return Artifact(ctx.profile.name, tuple(files), notes)
        calibration = None
        if recipe.calibrator == "entropy" and ctx.calibration is not None:
            cache = Path(recipe.calibration_cache).expanduser() if recipe.calibration_cache else ctx.target_dir / "calibration.cache"
            calibration = EngineCalibration(ctx.calibration, ctx.reference.inputs, ctx.calibration_settings, cache)
        # The calibrator builds TensorRT 10's implicitly quantized engine from the FP32 reference; otherwise the
        # engine is the precision-explicit ONNX, built strongly typed.
        engine_path = ctx.target_dir / "model.engine"
        notes.update(build_engine(ctx.reference.path if calibration else onnx_path, engine_path, shapes, recipe, calibration))
        files.append(ArtifactFile.of(engine_path, ctx.root))
        if calibration is not None and calibration.cache.parent == ctx.target_dir:
            files.append(ArtifactFile.of(calibration.cache, ctx.root))
        return Artifact(ctx.profile.name, tuple(files), notes)

    def load(self, artifact: Artifact, root: Path, profile: TargetProfile, reference: Reference) -> Runner:
        engine = next((f for f in artifact.files if f.path.endswith(".engine")), None)
        if engine is None:
            onnx_file = next(f for f in artifact.files if f.path.endswith(".onnx"))
            return HostProxyRunner(root / onnx_file.path, reference.inputs, reference.outputs, profile.runtime.threads,
                                   fp16=profile.precision == "fp16")
        reason, hint = _engine_problem(profile)
        if reason:
            raise RuntimeError(f"this artifact is a TensorRT engine and cannot run here: {reason} ({hint})")
        return TensorRTRunner(root / engine.path, reference.inputs, reference.outputs)

    def versions(self) -> Mapping[str, Any]:
        from importlib import metadata

        try:
            return {"tensorrt": metadata.version("tensorrt")}
        except metadata.PackageNotFoundError:
            return {"tensorrt": "not installed"}
