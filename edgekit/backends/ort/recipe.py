"""The ``[recipe]`` of an ``ort`` profile, parsed once: one dataclass for the three modes, each mode's keys checked."""

from __future__ import annotations

from dataclasses import dataclass, fields

from edgekit.backends.onnx.qdq import QUANT_TYPES, QdqSettings, resolved_reduce_range
from edgekit.errors import ProfileError
from edgekit.tables import check_keys
from edgekit.types import TargetProfile

MODES = ("fp32", "static", "dynamic", "int4")
# The keys each mode reads (beside `mode`); a key of another mode is an error naming the mode it belongs to.
MODE_KEYS = {
    "fp32": (),
    "static": ("activation_type", "weight_type", "per_channel", "reduce_range", "symmetric_activations", "exclude_op_types",
               "fp32_input_layers"),
    "dynamic": ("weight_type", "per_channel", "reduce_range", "exclude_op_types", "fp32_fallback_sqnr_db",
                "transformer_fusion", "gelu_approximation", "smooth_alpha", "smooth_below_sqnr_db"),
    "int4": ("block_size", "symmetric", "algorithm", "accuracy_level", "embeddings"),
}
INT4_ALGORITHMS = ("rtn", "hqq", "gptq")


@dataclass(frozen=True)
class OrtRecipe(QdqSettings):
    """The ``[recipe]`` of an ``ort`` profile: the static QDQ settings (``QdqSettings``: activation_type, weight_type,
    per_channel, reduce_range, symmetric_activations, exclude_op_types, fp32_input_layers) and what the other modes add."""

    mode: str = "fp32"
    # dynamic mode: MatMul/Gemm nodes whose input activations would be quantized with a predicted SQNR below this
    # (measured on calibration data, when the build has any) stay FP32; 0 disables. See ort/matmul_stats.py.
    fp32_fallback_sqnr_db: float = 0.0
    # dynamic mode, see ort/dynamic.py: ONNX Runtime's transformer fusions before quantizing, and
    # SmoothQuant-style smoothing (alpha 0 disables) of MatMul inputs predicted under smooth_below_sqnr_db.
    transformer_fusion: bool = False
    # dynamic mode: exact (erf) Gelu nodes become FastGelu, the tanh approximation (Optimum's O3 does the same), after
    # the fusion check; its error is orders of magnitude under INT8's, and the validator's gates measure the result.
    gelu_approximation: bool = False
    smooth_alpha: float = 0.0
    smooth_below_sqnr_db: float = 30.0
    # int4 mode, see ort/int4.py: weight-only 4-bit MatMul (and Gemm) weights in blocks of block_size along K; an
    # asymmetric block has a zero point; algorithm rtn | hqq | gptq (gptq runs on [calibration] data);
    # accuracy_level is MatMulNBits' compute type (0 unset = fp32, 4 = int8); embeddings: Gather tables too.
    block_size: int = 32
    symmetric: bool = False
    algorithm: str = "rtn"
    accuracy_level: int = 0
    embeddings: bool = False

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
        if recipe.mode == "int4":
            recipe._check_int4(profile.name)
        for key in ("transformer_fusion", "gelu_approximation"):
            if not isinstance(getattr(recipe, key), bool):
                raise ProfileError(f"target '{profile.name}' recipe {key} = {getattr(recipe, key)!r}; expected true or false")
        for key in ("activation_type", "weight_type"):
            if getattr(recipe, key) not in QUANT_TYPES:
                four = "; 4-bit weights are mode = \"int4\" (the ort-int4 target)" if getattr(recipe, key) in ("int4", "uint4") else ""
                raise ProfileError(f"target '{profile.name}' recipe {key} = {getattr(recipe, key)!r}; expected int8 or uint8{four}")
        return recipe

    def _check_int4(self, name: str) -> None:
        bs = self.block_size
        if isinstance(bs, bool) or not isinstance(bs, int) or bs < 16 or bs & (bs - 1):
            raise ProfileError(f"target '{name}' recipe block_size = {bs!r}; expected a power of two >= 16 (32, 64, 128)")
        if self.algorithm not in INT4_ALGORITHMS:
            raise ProfileError(f"target '{name}' recipe algorithm = {self.algorithm!r}; expected one of {', '.join(INT4_ALGORITHMS)}")
        al = self.accuracy_level
        if isinstance(al, bool) or not isinstance(al, int) or not 0 <= al <= 4:
            raise ProfileError(f"target '{name}' recipe accuracy_level = {al!r}; expected 0 (unset), 1 (fp32), 2 (fp16), "
                               "3 (bf16) or 4 (int8)")
        for key in ("symmetric", "embeddings"):
            if not isinstance(getattr(self, key), bool):
                raise ProfileError(f"target '{name}' recipe {key} = {getattr(self, key)!r}; expected true or false")
        if self.algorithm == "hqq" and self.symmetric:
            raise ProfileError(f"target '{name}' recipe algorithm = \"hqq\" is asymmetric (its zero points are "
                               "optimised); remove symmetric = true")

    def resolved_reduce_range(self) -> bool:
        """``auto`` resolves per host: x86 without VNNI/AMX saturates u8 x s8 products, so weights get 7 bits."""
        return resolved_reduce_range(self.reduce_range)

    def qdq(self) -> QdqSettings:
        """What static mode asks of the shared QDQ quantizer (edgekit/backends/onnx/qdq.py)."""
        return QdqSettings(**{f.name: getattr(self, f.name) for f in fields(QdqSettings)})
