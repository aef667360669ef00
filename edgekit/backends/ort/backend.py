"""The ONNX Runtime Backend: FP32 (offline-optimized), static INT8 QDQ with calibration, dynamic INT8, weight-only
4-bit (MatMulNBits).

The smallest real backend and the documentation of the Backend interface.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping

from edgekit.backends.base import Availability, Backend, BuildContext, Runner
from edgekit.backends.onnx.census import onnx_census
from edgekit.backends.onnx.qdq import quantize_static_qdq
from edgekit.backends.onnx.session import OrtRunner, session
from edgekit.backends.ort.dynamic import quantize_dynamic_int8
from edgekit.backends.ort.int4 import quantize_int4
from edgekit.backends.ort.recipe import OrtRecipe
from edgekit.errors import ProfileError
from edgekit.onnxio import has_external_data, model_files, move_model
from edgekit.types import Artifact, Reference, SourceModel, TargetProfile

class OrtBackend(Backend):
    name = "ort"

    def parse_recipe(self, profile: TargetProfile) -> OrtRecipe:
        return OrtRecipe.parse(profile)

    def needs_calibration(self, profile: TargetProfile, recipe: OrtRecipe) -> bool:
        return recipe.mode == "static" or (recipe.mode == "int4" and recipe.algorithm == "gptq")

    def uses_calibration(self, profile: TargetProfile, recipe: OrtRecipe) -> bool:
        return recipe.mode in ("static", "dynamic") or self.needs_calibration(profile, recipe)

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
                session(str(ctx.reference.path), 1, save_to=out, external_data=has_external_data(ctx.reference.path))
                move_model(out, dst)
            notes: dict[str, Any] = {"optimization": "ONNX Runtime ORT_ENABLE_BASIC, saved offline; ORT_ENABLE_ALL at load"}
        elif recipe.mode == "static":
            if ctx.calibration is None:
                raise ProfileError(f"target '{ctx.profile.name}' needs calibration data: add a [calibration] section")
            notes = quantize_static_qdq(ctx.reference.path, dst, ctx.calibration, ctx.reference.inputs, ctx.calibration_settings, recipe.qdq())
        elif recipe.mode == "int4":
            notes = quantize_int4(ctx.reference.path, dst, recipe, ctx.calibration, ctx.reference.inputs, ctx.calibration_settings)
        else:
            notes = quantize_dynamic_int8(ctx.reference.path, dst, recipe, ctx.calibration, ctx.reference.inputs, ctx.calibration_settings)
        layers = onnx_census(dst) if recipe.mode in ("static", "dynamic") else None
        if layers is not None:
            notes["int8_layers"] = layers.to_dict()
        return Artifact(ctx.profile.name, model_files(dst, ctx.root), notes,
                        warnings=(notes["warning"],) if "warning" in notes else (), layers=layers)

    def load(self, artifact: Artifact, root: Path, profile: TargetProfile, reference: Reference) -> Runner:
        return OrtRunner(root / artifact.files[0].path, reference.inputs, reference.outputs, profile.runtime.threads)

    def versions(self) -> Mapping[str, Any]:
        import onnxruntime

        return {"onnxruntime": onnxruntime.__version__}
