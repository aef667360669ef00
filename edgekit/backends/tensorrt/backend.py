"""The TensorRT Backend: builds the precision-explicit ONNX, then the engine where TensorRT and a CUDA GPU exist;
elsewhere that ONNX is measured on ONNX Runtime CPU as a host proxy (HostProxyRunner).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgekit.backends.base import Availability, Backend, BuildContext, Runner
from edgekit.backends.onnx.census import onnx_census
from edgekit.backends.onnx.session import session
from edgekit.backends.tensorrt.engine import EngineCalibration, TensorRTRunner, build_engine, trt_major
from edgekit.backends.tensorrt.fp16 import emulate_fp16, make_fp16_onnx
from edgekit.backends.tensorrt.int8 import make_int8_qdq_onnx
from edgekit.backends.tensorrt.recipe import ProfileShapes, TensorRTRecipe
from edgekit.errors import ProfileError
from edgekit.types import Artifact, ArtifactFile, Feed, Reference, SourceModel, TargetProfile, TensorSpec

HOST_PROXY = "host proxy (ONNX Runtime CPU), not a TensorRT engine"
INSTALL_HINT = "pip install tensorrt (needs an NVIDIA GPU and driver)"
API_VERSION = "TensorRT 10.x Python API (10.0 and later; also valid on 11.x, where strong typing is always on)"
DEFAULT_MAX_DIM = 32  # default upper bound of a dynamic dimension's optimization profile


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


def _engine_problem(profile: TargetProfile) -> tuple[str, str]:
    """(why this target's engine cannot be built here, what to do) or ("", "")."""
    reason = engine_unavailable()
    if reason:
        return reason, INSTALL_HINT
    if profile.recipe.get("calibrator", "none") == "entropy" and trt_major() >= 11:
        return ("recipe calibrator = 'entropy' needs TensorRT 10: TensorRT 11 removed implicit INT8 calibration",
                'use calibrator = "none" (the QDQ recipe)')
    return "", ""


class HostProxyRunner(Runner):
    """The precision-explicit ONNX on ONNX Runtime CPU with graph optimizations off, so the recipe is measured,
    not ORT's kernels: Q/DQ run as written (fake-quant in FP32, exact like TensorRT's int32 accumulation; ORT's
    fused INT8 kernels saturate 8-bit products on CPUs without VNNI), and an FP16 graph runs as its FP16
    emulation (``emulate_fp16``), since ORT CPU would otherwise compute it in FP32."""

    def __init__(self, path: Path, inputs: tuple[TensorSpec, ...], outputs: tuple[str, ...], threads: int, fp16: bool):
        super().__init__(inputs, outputs)
        model: str | bytes = str(path)
        if fp16:
            import onnx

            model = emulate_fp16(onnx.load(str(path))).SerializeToString()
        self.session = session(model, threads, optimize=False)
        self._names = [o.name for o in self.session.get_outputs()]

    def _run(self, feed: Feed) -> list[np.ndarray]:
        return self.session.run(self._names, feed)


class TensorRTBackend(Backend):
    name = "tensorrt"

    def parse_recipe(self, profile: TargetProfile) -> TensorRTRecipe:
        return TensorRTRecipe.parse(profile)

    def availability(self, profile: TargetProfile, source: SourceModel | None = None) -> Availability:
        reason, hint = _engine_problem(profile)
        return Availability(False, reason, hint, proxy=True) if reason else Availability(True)

    def build(self, ctx: BuildContext) -> Artifact:
        recipe = self.recipe_for(ctx)
        onnx_path = ctx.target_dir / "model.onnx"
        if ctx.profile.precision == "fp16":
            notes = make_fp16_onnx(ctx.reference.path, onnx_path, recipe.keep_fp32_ops, recipe.keep_fp32_nodes)
        else:
            if ctx.calibration is None:
                raise ProfileError(f"target '{ctx.profile.name}' needs calibration data: add a [calibration] section")
            notes = make_int8_qdq_onnx(ctx.reference.path, onnx_path, ctx.calibration, ctx.reference.inputs,
                                       ctx.calibration_settings, recipe.keep_fp32_ops)
        layers = onnx_census(onnx_path) if ctx.profile.precision == "int8" else None
        if layers is not None:
            notes["int8_layers"] = layers.to_dict()
        # BuildContext.shapes (the configured example shapes) sets each profile's opt (1 for a dynamic dimension
        # the config gives no size).
        shapes = optimization_profile(ctx.reference.inputs, ctx.shapes, recipe.shapes)
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
            return Artifact(ctx.profile.name, tuple(files), notes, measured_on=notes["measured_on"],
                            proxy=f"{HOST_PROXY}; {notes['engine']}", layers=layers,
                            warnings=(notes["warning"],) if "warning" in notes else ())
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
        return Artifact(ctx.profile.name, tuple(files), notes, measured_on=str(notes.get("measured_on", "")), layers=layers,
                        warnings=(notes["warning"],) if "warning" in notes else ())

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
