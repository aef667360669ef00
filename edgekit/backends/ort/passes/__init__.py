"""ONNX Runtime graph rewrites, one per file, registered under the recipe key that turns each on.

A rewrite is ``rewrite(src, dst, inputs) -> note``: it writes ``dst`` (``src`` unchanged when it does not apply) and
returns what the manifest records under its key. Dynamic INT8 (ort/dynamic.py) runs the enabled ones in this order
before ONNX Runtime's pre-processing. Adding one: a file here, an entry in ``REWRITES``, its key in the recipe
(ort/recipe.py ``MODE_KEYS`` and ``OrtRecipe``). SmoothQuant-style smoothing (``smooth.py``) is not in this list: it
runs after pre-processing, on calibration statistics, and the recipe's numbers parameterize it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgekit.backends.ort.passes.gelu import approximate_gelu
from edgekit.backends.ort.passes.transformer import first_feed, fuse_transformer
from edgekit.types import FeedSource, TensorSpec


@dataclass(frozen=True)
class PassInputs:
    """What a rewrite may read beside the graph: the calibration samples (for its numerical check) and input specs."""

    calibration: FeedSource | None
    specs: tuple[TensorSpec, ...]


def _transformer_fusion(src: Path, dst: Path, inputs: PassInputs) -> Any:
    return fuse_transformer(src, dst, first_feed(inputs.calibration, inputs.specs))


def _gelu_approximation(src: Path, dst: Path, inputs: PassInputs) -> Any:
    count = approximate_gelu(src, dst)
    return f"{count} Gelu -> FastGelu (tanh approximation)" if count else "no exact Gelu node in the graph"


REWRITES: dict[str, Callable[[Path, Path, PassInputs], Any]] = {
    "transformer_fusion": _transformer_fusion,
    "gelu_approximation": _gelu_approximation,
}
