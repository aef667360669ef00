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


@dataclass(frozen=True)
class TorchAoRecipe:
    """The ``[recipe]`` of a ``torch_ao`` profile."""

    engine: str = "fbgemm"  # fbgemm | qnnpack: the quantized engine and its own default qconfig
    mode: str = "static"  # static (calibrated activations) | dynamic (Linear/LSTM/GRU weights; activations at run time)
    keep_float: tuple[str, ...] = ()  # module names (as in model.named_modules()) left in float
    # static mode; absent: the engine's default (fbgemm per-channel weights and 7-bit activations, qnnpack per-tensor
    # and 8-bit). 8-bit activations on fbgemm are exact only where the CPU has VNNI/AMX (its AVX2 kernels add u8 x s8
    # product pairs in int16, which saturates)
    per_channel: bool | None = None
    reduce_range: bool | None = None
    compute_only: bool = False  # static mode: only Conv/Linear quantized, every other op (LayerNorm, GELU, adds) float

    def weights_per_channel(self) -> bool:
        return self.engine == "fbgemm" if self.per_channel is None else self.per_channel

    def activations_reduced(self) -> bool:
        return REDUCE_RANGE[self.engine] if self.reduce_range is None else self.reduce_range

    @classmethod
    def parse(cls, profile: TargetProfile) -> "TorchAoRecipe":
        r = dict(profile.recipe)
        check_keys(r, field_names(cls), f"target '{profile.name}' [recipe]", ProfileError)
        keep = r.get("keep_float", ())
        if not isinstance(keep, (list, tuple)) or not all(isinstance(k, str) and k for k in keep):
            raise ProfileError(f"target '{profile.name}' recipe keep_float must be a list of module names, got {keep!r}")
        r["keep_float"] = tuple(keep)
        for key in ("per_channel", "reduce_range", "compute_only"):
            if key in r and not isinstance(r[key], bool):
                raise ProfileError(f"target '{profile.name}' recipe {key} must be true or false, got {r[key]!r}")
        recipe = cls(**r)
        if recipe.engine not in ENGINES:
            raise ProfileError(f"target '{profile.name}' recipe engine = {recipe.engine!r}; expected one of {ENGINES}")
        if recipe.mode not in MODES:
            raise ProfileError(f"target '{profile.name}' recipe mode = {recipe.mode!r}; expected one of {MODES}")
        return recipe
