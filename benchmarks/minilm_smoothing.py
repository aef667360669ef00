"""SmoothQuant's alpha on MiniLM's static INT8: one alpha for every weighted Gemm input, and one for the Q/K/V input
with another for the rest, each graph built by the recovery's own builder (edgekit/recover/candidates.py StaticQdq:
`mse` ranges, only Conv/Gemm/MatMul quantized, the smoothing Mul FP32), every Gemm INT8 and with one role FP32;
mean cosine against the FP32 ONNX on the held-out sentences.

    .venv/bin/python benchmarks/recover_bench.py --models minilm     # once: the reference ONNX and the data
    .venv/bin/python benchmarks/minilm_smoothing.py

Writes benchmarks/results/minilm_smoothing.json. Cosines only (no timing): the host's load does not change them.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from minilm_groups import WORK, cosine_against, groups_of, minilm_feeds  # noqa: E402

ALPHAS = ((0.5, 0.5), (0.6, 0.6), (0.75, 0.75), (0.85, 0.85), (0.95, 0.95), (0.95, 0.75), (0.95, 0.8), (0.99, 0.75))


def main() -> int:
    import onnx

    from edgekit.backends.base import CalibrationSettings
    from edgekit.backends.onnx.qdq import QdqSettings
    from edgekit.backends.ort.matmul_stats import activation_stats
    from edgekit.backends.ort.passes.smooth import smooth
    from edgekit.recover.candidates import RANK_SAMPLES, Spec, StaticQdq

    reference = WORK / "recover_minilm" / "reference" / "model.onnx"
    model = onnx.load(str(reference), load_external_data=False)
    groups = groups_of(model)
    nodes = {n.name: n for n in model.graph.node}
    qkv_inputs = {nodes[n].input[0] for n in groups["qkv"]}
    specs, calib, feeds = minilm_feeds()
    cos = cosine_against(reference, feeds)
    settings = CalibrationSettings(method="mse", samples=64)
    stats = activation_stats(reference, calib, specs, settings, max_samples=RANK_SAMPLES * 2)  # as the recovery does
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgekit-smoothing-") as tmp:
        for qkv_alpha, rest_alpha in ALPHAS:
            start = time.monotonic()
            first, smoothed = Path(tmp) / "first.onnx", Path(tmp) / f"smoothed_{qkv_alpha}_{rest_alpha}.onnx"
            smooth(reference, first, {t: s for t, s in stats.items() if t in qkv_inputs}, qkv_alpha, below_db=float("inf"))
            smooth(first, smoothed, {t: s for t, s in stats.items() if t not in qkv_inputs}, rest_alpha, below_db=float("inf"))
            work = Path(tmp) / f"b_{qkv_alpha}_{rest_alpha}"
            work.mkdir()
            builder = StaticQdq(smoothed, calib, specs, settings, QdqSettings(), work)
            for label, fp32 in (("every Gemm INT8", ()), ("every intermediate.dense FP32", groups["intermediate"]),
                                ("every FFN output.dense FP32", groups["ffn_output"])):
                dst = work / f"{len(rows)}.onnx"
                builder.build(Spec("mse", exclude=tuple(sorted(fp32)), compute_only=True), dst)
                rows.append({"alpha_qkv_input": qkv_alpha, "alpha_other_inputs": rest_alpha, "fp32": label,
                             "mean_cosine": round(cos(dst), 6)})
                print(json.dumps(rows[-1]), flush=True)
            print(f"  ({time.monotonic() - start:.0f} s)", flush=True)
    out = HERE / "results" / "minilm_smoothing.json"
    out.write_text(json.dumps({"command": "benchmarks/minilm_smoothing.py", "reference": str(reference.relative_to(HERE.parent)),
                               "calibration": "mse, 64 samples; smoothing |max| from 32", "rows": rows},
                              indent=1, allow_nan=False) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
