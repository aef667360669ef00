"""Single-kernel timings behind edgekit's transformer recipe, on this host, at the benchmark's thread count.

    .venv/bin/python benchmarks/kernel_timings.py            # writes benchmarks/results/kernels.md and kernels.json

1. GEMM: one MiniLM feed-forward MatMul (128 x 384 @ 384 x 1536) in FP32, as ONNX Runtime dynamic INT8
   (``quantize_dynamic``, int8 per-channel weights, 7-bit and 8-bit) and as weight-only ``MatMulNBits``: the ceiling
   of what INT8 can give a transformer whose time is mostly such GEMMs.
2. Residual LayerNorm: ``SkipLayerNormalization`` (what ONNX Runtime fuses a 3-D Add + LayerNormalization into)
   against Add + LayerNormalization on 2-D rows (what edgekit's ``layernorm_rows`` leaves), 128 x 384.
3. GELU: exact (erf) against the tanh approximation, 128 x 1536 (ort-int8-dynamic's gelu_approximation).

Each case is one single-node ONNX file; the variants of a case are timed interleaved round by round with
benchmarks/run.py's own timing.interleaved and idle workers sleeping, and the median reported.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import timing  # noqa: E402  (benchmarks/timing.py: the interleaving benchmarks/run.py times with)

from edgekit.backends.onnx.session import session  # noqa: E402
from edgekit.hostinfo import cpu  # noqa: E402

THREADS = 2  # as benchmarks/run.py


def _save(nodes, inputs, outputs, inits, path: Path, contrib: bool = False) -> Path:
    import onnx
    from onnx import helper

    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.microsoft", 1)] if contrib else [])
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits), opset_imports=opsets), str(path))
    return path


def gemm_files(tmp: Path, rows: int = 128, k: int = 384, n: int = 1536) -> dict[str, Path]:
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    w = (np.random.default_rng(0).standard_normal((k, n)) * 0.05).astype(np.float32)
    fp32 = _save([helper.make_node("MatMul", ["x", "w"], ["y"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n])],
                 [numpy_helper.from_array(w, "w")], tmp / "gemm_fp32.onnx")
    files = {"FP32 MatMul": fp32}
    for reduce_range, label in ((True, "7-bit"), (False, "8-bit")):
        out = tmp / f"gemm_int8_{label}.onnx"
        quantize_dynamic(str(fp32), str(out), per_channel=True, reduce_range=reduce_range, weight_type=QuantType.QInt8)
        files[f"dynamic INT8, {label} per-channel weights"] = out
    files.update(weight_only_files(fp32, tmp))
    return files


def weight_only_files(fp32: Path, tmp: Path) -> dict[str, Path]:
    """ONNX Runtime's weight-only MatMulNBits (8 and 4 bits, blocks of 32, activations quantized to int8 per block:
    accuracy_level 4), the LLM-decoding route, for comparison; empty where this ORT lacks the quantizer."""
    import onnx

    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
    except ImportError:
        return {}
    files = {}
    for bits in (8, 4):
        config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4, bits=bits)
        quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32)), algo_config=config)
        quantizer.process()
        out = tmp / f"gemm_nbits_{bits}.onnx"
        quantizer.model.save_model_to_file(str(out))
        files[f"MatMulNBits {bits}-bit weights, int8 activations per block (accuracy_level 4)"] = out
    return files


def gelu_files(tmp: Path, rows: int = 128, width: int = 1536) -> dict[str, Path]:
    """The feed-forward GELU: exact (erf, what the export computes) and the tanh approximation (FastGelu)."""
    from onnx import TensorProto, helper

    io = ([helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, width])],
          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, width])])
    exact = _save([helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")], *io, [], tmp / "gelu.onnx", contrib=True)
    tanh = _save([helper.make_node("FastGelu", ["x"], ["y"], domain="com.microsoft")], *io, [], tmp / "fastgelu.onnx",
                 contrib=True)
    return {"Gelu (erf, exact)": exact, "FastGelu (tanh approximation)": tanh}


def layernorm_files(tmp: Path, rows: int = 128, hidden: int = 384) -> dict[str, Path]:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), n) for n in ("gamma", "beta")]

    def io(shape):
        return ([helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "skip")],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])

    skip = _save([helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta"], ["y"],
                                   domain="com.microsoft", epsilon=1e-12)],
                 *io([1, rows, hidden]), inits, tmp / "skipln.onnx", contrib=True)
    rows_ln = _save([helper.make_node("Add", ["x", "skip"], ["s"]),
                     helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12)],
                    *io([rows, hidden]), inits, tmp / "rows_ln.onnx")
    return {"SkipLayerNormalization [1, 128, 384]": skip, "Add + LayerNormalization [128, 384]": rows_ln}


def time_interleaved(files: dict[str, Path], calls: int) -> dict[str, float]:
    """Median ms per call of each file, timed by benchmarks/run.py's interleaving (timing.interleaved)."""
    sessions = {k: session(str(p), THREADS, spinning=False) for k, p in files.items()}
    rng = np.random.default_rng(1)
    runs = {}
    for k, s in sessions.items():
        feed = {i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
                for i in s.get_inputs()}
        runs[k] = lambda s=s, feed=feed: s.run(None, feed)
    seconds = timing.interleaved(runs, warmup=20, rounds=max(1, calls // 2), per_round=2)
    return {k: float(np.median(v) * 1e3) for k, v in seconds.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500, help="timed calls per variant (default 500)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "kernels.md",
                        help="markdown report; the same figures go to a .json next to it (benchmarks/run.py quotes them)")
    args = parser.parse_args(argv)
    host = cpu()
    record: dict = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "threads": THREADS,
                    "cpu": host["model"], "isa": host["isa"], "cases": {}}
    lines = ["# Kernel timings (benchmarks/kernel_timings.py)", "",
             f"Host: {host['model']}, ISA flags: {', '.join(host['isa']) or 'none of AVX2/AVX512/VNNI/AMX'}; "
             f"{THREADS} threads, idle workers sleep; median of {max(1, args.calls // 2) * 2} interleaved timed calls per "
             "variant.", ""]
    with tempfile.TemporaryDirectory(prefix="edgekit-kernels-") as tmpdir:
        tmp = Path(tmpdir)
        for title, files in (("MiniLM feed-forward GEMM, 128 x 384 @ 384 x 1536", gemm_files(tmp)),
                             ("Residual LayerNorm, 128 x 384", layernorm_files(tmp)),
                             ("Feed-forward GELU, 128 x 1536", gelu_files(tmp))):
            print(f"timing: {title}", file=sys.stderr)
            ms = time_interleaved(files, args.calls)
            record["cases"][title] = ms
            first = next(iter(ms.values()))
            lines += [f"## {title}", "", "| variant | median us | vs first row |", "|---|---|---|"]
            lines += [f"| {k} | {v * 1e3:.1f} | {first / v:.2f}x |" for k, v in ms.items()]
            lines.append("")
    args.out.write_text("\n".join(lines))
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
