"""The TensorRT engine step: build a strongly typed engine from the precision-explicit ONNX, and run it on the GPU.
Only where TensorRT and a CUDA GPU exist; ``tensorrt`` and ``torch`` are imported inside functions only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgekit.backends.base import CalibrationSettings, Runner
from edgekit.backends.onnx.calibration import FeedCalibrationReader
from edgekit.backends.tensorrt.recipe import ProfileShapes, TensorRTRecipe
from edgekit.errors import ProfileError
from edgekit.fsutil import atomic_write_bytes
from edgekit.types import Feed, FeedSource, TensorSpec


log = logging.getLogger(__name__)

# Everything here was written against the documented TensorRT 10 Python API and has never run on the machines
# that test edgekit (see docs/tensorrt.md).


def trt_major() -> int:
    """The installed TensorRT's major version (imports ``tensorrt``: call only when it is available)."""
    import tensorrt as trt

    return int(trt.__version__.split(".")[0])


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

    if calibration is not None and trt_major() >= 11:
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
