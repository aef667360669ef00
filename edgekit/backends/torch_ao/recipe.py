"""The ``[recipe]`` of a ``torch_ao`` profile, parsed once."""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.errors import ProfileError
from edgekit.tables import check_keys, field_names
from edgekit.types import TargetProfile

ENGINES = ("fbgemm", "qnnpack")

MODES = ("static", "dynamic")

# fbgemm's own qconfig gives activations 7 bits: its AVX2 kernels add pairs of u8 x s8 products in int16.
REDUCE_RANGE = {"fbgemm": True, "qnnpack": False}
REDUCED = ("activations", "weights", "none")  # recipe reduce_range: the operand quantized to 7 bits


@dataclass(frozen=True)
class TorchAoRecipe:
    """The ``[recipe]`` of a ``torch_ao`` profile."""

    engine: str = "fbgemm"  # fbgemm | qnnpack: the quantized engine and its own default qconfig
    mode: str = "static"  # static (calibrated activations) | dynamic (Linear/LSTM/GRU weights; activations at run time)
    keep_float: tuple[str, ...] = ()  # module names (as in model.named_modules()) left in float
    # static mode; absent: the engine's default (fbgemm: per-channel weights, 7-bit activations; qnnpack: per-tensor
    # weights, nothing reduced). reduce_range: which operand gets 7 bits, "activations" | "weights" | "none". fbgemm's
    # AVX2 kernels add pairs of u8 x s8 products in int16: one of the two must be 7-bit or the sums saturate
    per_channel: bool | None = None
    reduce_range: str | None = None
    compute_only: bool = False  # static mode: only Conv/Linear quantized, every other op (LayerNorm, GELU, adds) float

    def weights_per_channel(self) -> bool:
        return self.engine == "fbgemm" if self.per_channel is None else self.per_channel

    def reduced(self) -> str:
        """The operand with 7 bits: the recipe's reduce_range, or the engine's default."""
        if self.reduce_range is not None:
            return self.reduce_range
        return "activations" if REDUCE_RANGE[self.engine] else "none"

    @classmethod
    def parse(cls, profile: TargetProfile) -> "TorchAoRecipe":
        r = dict(profile.recipe)
        check_keys(r, field_names(cls), f"target '{profile.name}' [recipe]", ProfileError)
        keep = r.get("keep_float", ())
        if not isinstance(keep, (list, tuple)) or not all(isinstance(k, str) and k for k in keep):
            raise ProfileError(f"target '{profile.name}' recipe keep_float must be a list of module names, got {keep!r}")
        r["keep_float"] = tuple(keep)
        for key in ("per_channel", "compute_only"):
            if key in r and not isinstance(r[key], bool):
                raise ProfileError(f"target '{profile.name}' recipe {key} must be true or false, got {r[key]!r}")
        if "reduce_range" in r and r["reduce_range"] not in REDUCED:
            raise ProfileError(f"target '{profile.name}' recipe reduce_range = {r['reduce_range']!r}; expected one of {REDUCED}")
        recipe = cls(**r)
        if recipe.engine not in ENGINES:
            raise ProfileError(f"target '{profile.name}' recipe engine = {recipe.engine!r}; expected one of {ENGINES}")
        if recipe.mode not in MODES:
            raise ProfileError(f"target '{profile.name}' recipe mode = {recipe.mode!r}; expected one of {MODES}")
        return recipe
