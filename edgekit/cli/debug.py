"""`edgekit debug DIR --target NAME`: which layers of a built INT8 target lose the accuracy, and what keeping each
in FP32 would recover per millisecond."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgekit.console import Console

DESCRIPTION = """\
Per-layer analysis of a built INT8 target of DIR (ort-int8, tensorrt-int8, ort-int8-dynamic, torch-fbgemm,
torch-qnnpack; also tensorrt-fp16) against the FP32 reference in DIR (sha256-checked first), on the build's
validation data (its calibration data when it has none, or --data). For every quantized layer:

  local SQNR dB        the layer alone, fed the FP32 reference's own inputs, with only its own quantization
                       (weights and input activations), against the same layer in FP32. Low = this layer is
                       fragile by itself.
  accumulated SQNR dB  the layer's output tensor inside the INT8 graph against the same tensor of the FP32 graph:
                       everything quantized before it, plus itself. It falls along the graph.
  weight / act. dB     the local SQNR with only the weights quantized / only the input activations quantized:
                       which of the two to fix (weights: per-channel, 8-bit; activations: calibration, smoothing).
  keep-FP32 cosine     the whole model's output cosine against FP32 with this layer left in FP32 (its Q/DQ
                       removed), the rest as built. Compare with the artifact's cosine on the first line.
  cost ms              how much slower that model is than the INT8 artifact, batch 1: over 30-120 rounds in which
                       the artifact and up to 8 candidates are called once each in a shuffled order, the median
                       of the difference within a round (below the timing's resolution: max(0.01 ms, 2 % of
                       the artifact's p50, twice the cost's standard error) it counts as that resolution).
  recovered/ms         (keep-FP32 cosine - artifact cosine) / cost: the ranking. The first rows are the layers
                       worth excluding from quantization first (exclusions take ONNX node or torch module names).

Graphs with more than 40 quantized layers are kept in FP32 block by block (a torch module prefix), then the blocks
that recover the most are bisected. Writes DIR/<target>/debug.json and a "Per-layer analysis" section in
DIR/report.md; docs/debug.md has the details. Exit 2 on bad input (unknown or unbuilt target, an FP32 target,
bad data).
"""


def add_parser(sub: Any) -> None:
    d = sub.add_parser("debug", help="per-layer analysis of an INT8 (or FP16) target: the layers to blame, ranked",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("dir", type=Path, metavar="DIR", help="a build folder (edgekit build ... -o DIR)")
    d.add_argument("--target", required=True, metavar="NAME", help="the built INT8 (or FP16) target to analyze")
    d.add_argument("--data", type=Path, metavar="PATH", help="analyze on this data instead of the build's "
                   "[validation] (or [calibration]) data")
    d.add_argument("--top", type=int, default=10, metavar="N", help="rows of the ranked table printed (default 10; "
                   "debug.json has every layer)")
    d.add_argument("--samples", type=int, default=64, metavar="N", help="samples of the data used (default 64)")
    d.set_defaults(run=run_debug)


def run_debug(args: argparse.Namespace, console: Console) -> int:
    from edgekit.debug import analyze
    from edgekit.debug.report import text_table
    from edgekit.errors import UsageError

    if args.top < 1:
        raise UsageError(f"--top {args.top}: give a positive number of rows")
    report = analyze(args.dir, args.target, args.data, args.top, args.samples, progress=console)
    console.result(text_table(report, args.top))
    console.result(f"\nper-layer analysis: {report.path}\nreport: {Path(args.dir) / 'report.md'}")
    return 0
