"""What a backend family's candidate builder tells the search (edgekit/recover/search.py) beyond ``build``.

The search's own steps are written for static QDQ ONNX (``StaticQdq``, candidates.py): calibration methods from
``iter_methods``, the graph repairs, an FP32 prefix in graph order, and the debug ranking of the artifact's layers.
A family whose candidates are built differently (ort dynamic INT8: dynamic.py; torch.ao: torch_ao.py) overrides
the hooks where it does something else; a hook returning None leaves that step to the search's default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

from edgekit.backends.onnx.census import onnx_census
from edgekit.types import LayerCensus


class Family:
    """The hooks, with the defaults the search uses for static QDQ ONNX."""

    # the order of the search's steps ("calibration", "recipe", "prefix", "roles", "precision"); None: the order the
    # model's kind gives (search.Search.run)
    steps: tuple[str, ...] | None = None

    def fresh(self, spec: Any) -> bool:
        """Whether building ``spec`` collects activation statistics the search has not (the slow kind of attempt);
        a family that cannot tell: every build does."""
        return True

    def methods(self, configured: str) -> Iterable[str] | None:
        """The calibration methods to try after ``configured``; None: ``iter_methods``."""
        return None

    def repairs(self) -> list[Callable[[Any], Any]] | None:
        """The recipe step's repairs, each applied to the best spec so far; None: the static QDQ graph repairs."""
        return None

    def prefix_order(self) -> tuple[list[str], set[str]] | None:
        """(the names a build can keep float, in graph order; the compute layers among them) for the FP32-prefix
        step; None: the artifact's quantized nodes."""
        return None

    def rank(self, spec: Any, artifact: Path, seconds: float) -> tuple[list[str], set[str]] | None:
        """(names to keep FP32, most to blame first; the compute layers) for the precision step; None: the debug
        ranking of ``artifact``'s layers (edgekit/recover/rank.py)."""
        return None

    def census(self, path: Path) -> LayerCensus | None:
        """How many of the candidate's layers are INT8 (its ``min_int8_fraction`` gate)."""
        return onnx_census(path)
