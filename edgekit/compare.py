"""`edgekit compare`: run the same inputs through two ONNX models and tabulate the error between them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.config import DataConfig
from edgekit.errors import ModelError, UsageError
from edgekit.types import TensorSpec
from edgekit.validate.metrics import Comparison

SYNTHETIC_BATCHES = 16


@dataclass
class CompareResult:
    """Per-output error of model B against model A, and where the inputs came from."""

    a: Path
    b: Path
    inputs: str
    summary: dict[str, Any]


def _specs(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[str, ...]]:
    from edgekit.model import onnx_specs

    if path.suffix != ".onnx":
        raise UsageError(f"{path}: compare takes two .onnx files (an artifact, or reference/model.onnx of a build)")
    if not path.is_file():
        raise ModelError(f"ONNX model {path} does not exist")
    return onnx_specs(path)


def compare_models(a: Path, b: Path, data: Path | None = None, threads: int = 2) -> CompareResult:
    """Feed both models the same batches (``data``, or seeded random inputs) and measure B against A."""
    from edgekit.backends.onnx.session import OrtRunner
    from edgekit.data import open_feed
    from edgekit.export import example_inputs

    specs_a, outs_a = _specs(a)
    specs_b, outs_b = _specs(b)
    if [(s.name, s.dtype) for s in specs_a] != [(s.name, s.dtype) for s in specs_b]:
        raise UsageError(f"{a.name} and {b.name} take different inputs: {[s.to_dict() for s in specs_a]} vs {[s.to_dict() for s in specs_b]}")
    shared = tuple(o for o in outs_a if o in outs_b)
    if not shared:
        raise UsageError(f"{a.name} and {b.name} share no output names ({list(outs_a)} vs {list(outs_b)})")
    run_a = OrtRunner(a, specs_a, shared, threads)
    run_b = OrtRunner(b, specs_b, shared, threads)
    cmp = Comparison(shared, classification=False)
    if data is not None:
        if not data.exists():
            raise UsageError(f"--data {data} does not exist")
        source = open_feed(DataConfig(data=str(data.resolve())), specs_a, "compare")
        feeds = (batch.feed for batch in source.batches(1))
        described = source.description
    else:
        shapes = {s.name: s.example_shape() for s in specs_a}
        feeds = (example_inputs(specs_a, shapes, seed=i) for i in range(SYNTHETIC_BATCHES))
        described = f"{SYNTHETIC_BATCHES} seeded random inputs (pass --data for real ones)"
    for feed in feeds:
        cmp.update(run_a.run(feed), run_b.run(feed))
    return CompareResult(a, b, described, cmp.summary())


def render(result: CompareResult) -> str:
    lines = [f"A: {result.a}", f"B: {result.b}", f"inputs: {result.inputs}", ""]
    header = f"{'output':<20} {'samples':>7} {'MSE':>11} {'max abs':>11} {'cosine':>10} {'min cos':>10} {'SQNR dB':>8}"
    lines += [header, "-" * len(header)]
    for name, e in result.summary["outputs"].items():
        lines.append(
            f"{name:<20} {e['samples']:>7} {e['mse']:>11.4g} {e['max_abs_error']:>11.4g} {e['cosine']:>10.6f} "
            f"{e['min_cosine']:>10.6f} {e['sqnr_db']:>8.1f}"
        )
    return "\n".join(lines)
