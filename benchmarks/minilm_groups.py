"""Where MiniLM's static INT8 error comes from: one group of layers quantized at a time, every other layer FP32, built
by the recovery's own candidate builder (edgekit/recover/candidates.py StaticQdq: `mse` ranges, only Conv/Gemm/MatMul
quantized, uint8 activations, int8 per-channel weights), mean cosine against the FP32 ONNX on the held-out sentences.
Also the Q/K/V projections FP32 with and without `fp32_nodes_read_fp32` (edgekit/backends/onnx/qdq.py): a tensor
is quantized once for all its readers, and the block input feeds Q, K, V and the residual Add.

    .venv/bin/python benchmarks/recover_bench.py --models minilm     # once: the reference ONNX and the data
    .venv/bin/python benchmarks/minilm_groups.py

Reads benchmarks/work/recover_minilm/reference/model.onnx and benchmarks/work/data/minilm_{calib,val}.npz; writes
benchmarks/results/minilm_groups.json. The numbers are cosines (no timing), so the host's load does not change them.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
sys.path.insert(0, str(HERE.parent))
ROLES = {"qkv": ("attention.self.query", "attention.self.key", "attention.self.value"),
         "attention_output": ("attention.output.dense",), "intermediate": ("intermediate.dense",),
         "ffn_output": ("output.dense",)}


def groups_of(model) -> dict[str, tuple[str, ...]]:
    """MiniLM's weighted Gemms by role (ROLES) and its two activation products, as ONNX node names."""
    from edgekit.debug.names import module_map

    inits = {i.name for i in model.graph.initializer}
    modules = module_map(model)
    gemms = [n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul") and n.name in modules]
    groups = {g: tuple(n for n in gemms if modules[n].endswith(suffix)) for g, suffix in ROLES.items()}
    groups["ffn_output"] = tuple(n for n in groups["ffn_output"] if ".attention." not in modules[n])
    groups["activation_products"] = tuple(n.name for n in model.graph.node if n.op_type == "MatMul"
                                          and not any(i in inits for i in n.input))
    return groups


def minilm_feeds() -> tuple[tuple, object, dict[str, np.ndarray]]:
    """The input specs, the calibration FeedSource and the held-out feeds recover_bench.py wrote."""
    from edgekit.config import DataConfig
    from edgekit.data import open_feed
    from edgekit.types import TensorSpec

    specs = (TensorSpec("input_ids", ("batch", 128), "int64"), TensorSpec("attention_mask", ("batch", 128), "int64"))
    calib = open_feed(DataConfig(str(WORK / "data" / "minilm_calib.npz")), specs, "calibration")
    val = np.load(WORK / "data" / "minilm_val.npz")
    return specs, calib, {k: val[k] for k in ("input_ids", "attention_mask")}


def cosine_against(reference: Path, feeds: dict[str, np.ndarray]):
    """A function: ONNX file -> its mean cosine against ``reference`` on ``feeds`` (ONNX Runtime, 2 threads)."""
    import onnxruntime as ort

    def session(path: Path):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    expected = session(reference).run(None, feeds)[0]

    def cosine(path: Path) -> float:
        got = session(path).run(None, feeds)[0]
        cos = (expected * got).sum(1) / np.linalg.norm(expected, axis=1) / np.linalg.norm(got, axis=1)
        return float(cos.mean())

    return cosine


def main() -> int:
    import onnx

    from edgekit.backends.base import CalibrationSettings
    from edgekit.backends.onnx import qdq as qdq_module
    from edgekit.backends.onnx.qdq import QdqSettings
    from edgekit.recover.candidates import StaticQdq, Spec

    reference = WORK / "recover_minilm" / "reference" / "model.onnx"
    groups = groups_of(onnx.load(str(reference), load_external_data=False))
    everything = {n for g in groups.values() for n in g}
    specs, calib, feeds = minilm_feeds()
    cosine = cosine_against(reference, feeds)

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgekit-groups-") as tmp:
        builder = StaticQdq(reference, calib, specs, CalibrationSettings(method="mse", samples=64), QdqSettings(), Path(tmp))

        def measure(label: str, exclude: set[str], rewire: bool = True) -> None:
            dst = Path(tmp) / f"{len(rows)}.onnx"
            start = time.monotonic()
            spec = Spec("mse", exclude=tuple(sorted(exclude)), compute_only=True)
            if rewire:
                builder.build(spec, dst)
            else:
                with mock.patch.object(qdq_module, "fp32_nodes_read_fp32", lambda *a: 0):
                    builder.build(spec, dst)
            rows.append({"quantized": label, "fp32_layers": len(exclude), "fp32_nodes_read_fp32": rewire,
                         "mean_cosine": round(cosine(dst), 6), "seconds": round(time.monotonic() - start, 1)})
            print(json.dumps(rows[-1]), flush=True)

        measure("every Conv/Gemm/MatMul", set())
        for name, nodes in groups.items():
            measure(f"only {name}", everything - set(nodes))
        measure("all but qkv", set(groups["qkv"]))
        measure("all but qkv", set(groups["qkv"]), rewire=False)

    out = HERE / "results" / "minilm_groups.json"
    out.write_text(json.dumps({"command": "benchmarks/minilm_groups.py", "reference": str(reference.relative_to(HERE.parent)),
                               "samples": int(len(feeds["input_ids"])), "groups": {k: list(v) for k, v in groups.items()},
                               "rows": rows}, indent=1, allow_nan=False) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
