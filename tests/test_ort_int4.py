"""ort-int4: weight-only 4-bit MatMul/Gemm (MatMulNBits) and embedding tables (GatherBlockQuantized) with ONNX
Runtime's quantizer, run in ONNX Runtime against the FP32 graph; the recipe's keys checked strictly."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from edgekit.backends import get_backend
from edgekit.backends.ort.int4 import quantize_int4
from edgekit.backends.ort.recipe import OrtRecipe
from edgekit.errors import ProfileError
from edgekit.profiles import load_profile

VOCAB, HIDDEN, FFN, SEQ = 2048, 128, 512, 16


def _encoder_onnx(path: Path, seed: int = 0) -> None:
    """Embedding -> MatMul(+bias) -> Gelu-ish (Relu) -> Gemm(transB) -> residual: a transformer block's FFN shape,
    weights Gaussian like a trained layer's."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32) * 0.5
    w1 = (rng.standard_normal((HIDDEN, FFN)) / np.sqrt(HIDDEN)).astype(np.float32)
    b1 = rng.standard_normal(FFN).astype(np.float32) * 0.1
    w2t = (rng.standard_normal((HIDDEN, FFN)) / np.sqrt(FFN)).astype(np.float32)  # Gemm transB: [N, K]
    b2 = rng.standard_normal(HIDDEN).astype(np.float32) * 0.1
    shape = np.array([-1, HIDDEN], np.int64)
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["e"], name="embed"),
        helper.make_node("Reshape", ["e", "shape"], ["x"], name="rows"),
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="ffn_in"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="ffn_in_bias"),
        helper.make_node("Relu", ["h1"], ["h"], name="act"),
        helper.make_node("Gemm", ["h", "w2t", "b2"], ["y0"], name="ffn_out", transB=1),
        helper.make_node("Add", ["x", "y0"], ["y"], name="residual"),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in ((emb, "emb"), (w1, "w1"), (b1, "b1"), (w2t, "w2t"), (b2, "b2"), (shape, "shape"))]
    graph = helper.make_graph(nodes, "enc", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", SEQ])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", HIDDEN])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path.write_bytes(model.SerializeToString())


def _recipe(**changes) -> OrtRecipe:
    profile = load_profile("ort-int4")
    return OrtRecipe.parse(dataclasses.replace(profile, recipe={**profile.recipe, **changes}))


def _run(path: Path, ids: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def _ops(path: Path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for n in onnx.load(str(path)).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


@pytest.fixture(scope="module")
def fp32(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    path = tmp_path_factory.mktemp("int4") / "fp32.onnx"
    _encoder_onnx(path)
    ids = np.random.default_rng(1).integers(0, VOCAB, (8, SEQ)).astype(np.int64)
    return path, ids, _run(path, ids)


@pytest.mark.parametrize("algorithm, bound", [("rtn", 0.99), ("hqq", 0.99)])
def test_matmul_gemm_and_embeddings_become_4_bit_and_stay_close_to_fp32(fp32, tmp_path, algorithm, bound):
    src, ids, want = fp32
    dst = tmp_path / "model.onnx"

    notes = quantize_int4(src, dst, _recipe(algorithm=algorithm))

    ops = _ops(dst)
    assert ops.get("MatMulNBits") == 2 and "Gemm" not in ops and ops.get("GatherBlockQuantized") == 1, ops
    assert notes["quantized"] == {"MatMulNBits": 2, "GatherBlockQuantized": 1}
    assert dst.stat().st_size < 0.2 * src.stat().st_size  # 4-bit + one scale and zero point per 32 weights
    assert _cosine(want, _run(dst, ids)) > bound


def test_gptq_runs_on_calibration_data(fp32, tmp_path, capsys):
    from edgekit.config import DataConfig
    from edgekit.data import open_feed
    from edgekit.types import TensorSpec

    src, ids, want = fp32
    np.savez(tmp_path / "calib.npz", ids=np.random.default_rng(2).integers(0, VOCAB, (16, SEQ)).astype(np.int64))
    specs = (TensorSpec("ids", ("batch", SEQ), "int64"),)
    calib = open_feed(DataConfig(str(tmp_path / "calib.npz")), specs, "calibration")

    notes = quantize_int4(src, tmp_path / "model.onnx", _recipe(algorithm="gptq"), calib, specs)

    assert notes["quantized"]["MatMulNBits"] == 2 and "GPTQ" in notes["weights"]
    assert _cosine(want, _run(tmp_path / "model.onnx", ids)) > 0.99
    assert capsys.readouterr().out == ""  # ORT's progress bar kept off the terminal


def test_symmetric_without_embeddings_keeps_the_table_fp32(fp32, tmp_path):
    src, ids, want = fp32
    dst = tmp_path / "model.onnx"

    notes = quantize_int4(src, dst, _recipe(symmetric=True, embeddings=False, accuracy_level=4))

    ops = _ops(dst)
    assert ops.get("MatMulNBits") == 2 and "GatherBlockQuantized" not in ops
    assert "int8" in notes["accuracy_level"]
    assert dst.stat().st_size < src.stat().st_size
    assert _cosine(want, _run(dst, ids)) > 0.99


def test_a_model_with_nothing_to_quantize_builds_fp32_with_a_warning(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((8, 4), np.float32), "w")  # K = 8 < block_size 32
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="small")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    src = tmp_path / "small.onnx"
    src.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString())

    notes = quantize_int4(src, tmp_path / "model.onnx", _recipe())

    assert "nothing to quantize at 4 bits" in notes["warning"]
    assert notes["kept_fp32"] == {"small": "K = 8 < block_size 32"}
    x = np.ones((1, 8), np.float32)
    import onnxruntime as ort

    got = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.allclose(got, 8.0)


@pytest.mark.parametrize("changes, message", [
    ({"block_size": 48}, "block_size = 48; expected a power of two >= 16"),
    ({"algorithm": "awq"}, "algorithm = 'awq'; expected one of rtn, hqq, gptq"),
    ({"accuracy_level": 5}, "accuracy_level = 5"),
    ({"algorithm": "hqq", "symmetric": True}, "hqq.*remove symmetric = true"),
    ({"smooth_alpha": 0.5}, 'smooth_alpha.*belongs to mode = "dynamic"'),
])
def test_recipe_keys_are_checked(changes, message):
    with pytest.raises(ProfileError, match=message):
        _recipe(**changes)


def test_weight_type_int4_in_another_mode_points_to_the_int4_mode():
    profile = load_profile("ort-int8-dynamic")
    with pytest.raises(ProfileError, match='4-bit weights are mode = "int4"'):
        OrtRecipe.parse(dataclasses.replace(profile, recipe={**profile.recipe, "weight_type": "int4"}))


def test_gptq_needs_calibration_data():
    profile = load_profile("ort-int4")
    gptq = dataclasses.replace(profile, recipe={**profile.recipe, "algorithm": "gptq"})
    backend = get_backend("ort")
    assert backend.needs_calibration(gptq, backend.parse_recipe(gptq))
    assert not backend.needs_calibration(profile, backend.parse_recipe(profile))


LINEAR_NET = '''
import torch.nn as nn

def build():
    return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64), nn.LayerNorm(64), nn.Linear(64, 16))
'''


@pytest.mark.slow
def test_build_validates_ort_int4_against_fp32(tmp_path, monkeypatch, capsys):
    import torch

    from edgekit.cli import main

    (tmp_path / "net.py").write_text(LINEAR_NET)
    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    np.savez(tmp_path / "val.npz", x=x)
    (tmp_path / "cfg.toml").write_text(
        '[model]\nsource = "net.py:build"\ninputs = [ { name = "x", shape = [1, 64], dynamic = { 0 = "batch" } } ]\n'
        'task = "embedding"\n[validation]\ndata = "val.npz"\n[targets]\nuse = ["ort-fp32", "ort-int4"]\n'
        '[targets.ort-int4.runtime]\nruns = 20\nwarmup = 2\n[targets.ort-fp32.runtime]\nruns = 20\nwarmup = 2\n')
    monkeypatch.chdir(tmp_path)

    code = main(["build", "cfg.toml", "-o", "out"])

    assert code == 0, capsys.readouterr().err
    t = json.loads((tmp_path / "out" / "manifest.json").read_text())["targets"]["ort-int4"]
    assert t["status"] == "passed" and t["notes"]["quantized"]["MatMulNBits"] == 3
    assert t["metrics"]["vs_onnx"]["worst"]["cosine"] > 0.99
    assert t["size"]["ratio_to_fp32"] < 0.4  # LayerNorm, biases and the graph stay FP32 in a model this small
