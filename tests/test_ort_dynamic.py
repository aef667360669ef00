"""Dynamic INT8 recipe steps: smoothing (exact in FP32, better in INT8), transformer fusion, end to end on a BERT block."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.backends.base import CalibrationSettings
from edgekit.backends.ort.recipe import OrtRecipe
from edgekit.backends.ort.dynamic import quantize_dynamic_int8
from edgekit.backends.ort.matmul_stats import activation_stats
from edgekit.backends.ort.passes.gelu import approximate_gelu
from edgekit.backends.ort.passes.smooth import smooth
from edgekit.backends.ort.passes.transformer import fuse_transformer
from edgekit.cli import main
from edgekit.errors import ProfileError
from edgekit.types import TargetProfile

from conftest import X32_SPECS

SPECS = X32_SPECS  # the calibration data of the calib_x32 fixture (conftest.py)
OUTLIERS = (3, 77, 190)  # channels of the hidden layer scaled x60: what a transformer's FFN input looks like


def _outlier_model(path: Path, transb: bool = False) -> None:
    """x -> MatMul(W1) -> Relu -> Mul(per-channel, a few channels x60) -> two weighted MatMul/Gemm heads."""
    rng = np.random.default_rng(0)
    gain = np.ones(256, dtype=np.float32)
    gain[list(OUTLIERS)] = 60.0
    w2 = (rng.standard_normal((256, 16)) / 16).astype(np.float32)
    inits = [
        numpy_helper.from_array((rng.standard_normal((32, 256)) / np.sqrt(32)).astype(np.float32), "w1"),
        numpy_helper.from_array(gain, "gain"),
        numpy_helper.from_array(w2.T.copy() if transb else w2, "w2"),
        numpy_helper.from_array((rng.standard_normal((256, 8)) / 16).astype(np.float32), "w3"),
    ]
    second = (helper.make_node("Gemm", ["g", "w2"], ["y"], name="head", transB=1) if transb
              else helper.make_node("MatMul", ["g", "w2"], ["y"], name="head"))
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Mul", ["r", "gain"], ["g"], name="outliers"),
        second,
        helper.make_node("MatMul", ["g", "w3"], ["z"], name="side"),
    ]
    graph = helper.make_graph(
        nodes, "outliers", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 8])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _run(path: Path, x: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def _held_out() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((64, 32)).astype(np.float32)


@pytest.mark.parametrize("transb", [False, True])
def test_smoothing_is_exact_in_fp32_with_one_mul_per_tensor(tmp_path, calib_x32, transb):
    src, dst = tmp_path / "m.onnx", tmp_path / "s.onnx"
    _outlier_model(src, transb)
    stats = activation_stats(src, calib_x32, SPECS, CalibrationSettings(samples=16))
    assert stats["g"].channel_absmax.shape == (256,)
    assert stats["g"].channel_absmax[list(OUTLIERS)].min() > 10 * np.median(stats["g"].channel_absmax)
    done = smooth(src, dst, stats, alpha=0.8, below_db=99.0)
    assert set(done) == {"x", "g"}
    muls = [n for n in onnx.load(str(dst)).graph.node if n.op_type == "Mul" and n.name.endswith("_smooth")]
    assert len(muls) == 2  # 'head' and 'side' share one Mul on g
    x = _held_out()
    for a, b in zip(_run(src, x), _run(dst, x)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * float(np.abs(a).max()))


def test_smoothing_only_touches_inputs_under_the_threshold(tmp_path, calib_x32):
    src, dst = tmp_path / "m.onnx", tmp_path / "s.onnx"
    _outlier_model(src)
    stats = activation_stats(src, calib_x32, SPECS, CalibrationSettings(samples=16))
    assert stats["g"].sqnr_db < stats["x"].sqnr_db - 5  # outlier channels cost the shared scale its resolution
    threshold = (stats["g"].sqnr_db + stats["x"].sqnr_db) / 2
    assert set(smooth(src, dst, stats, alpha=0.8, below_db=threshold)) == {"g"}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def test_smoothing_lowers_dynamic_int8_error_on_outlier_channels(tmp_path, calib_x32):
    src = tmp_path / "m.onnx"
    _outlier_model(src)
    plain, smoothed = tmp_path / "plain.onnx", tmp_path / "smooth.onnx"
    quantize_dynamic_int8(src, plain, OrtRecipe(mode="dynamic", reduce_range=True), calib_x32, SPECS, CalibrationSettings(samples=16))
    notes = quantize_dynamic_int8(src, smoothed, OrtRecipe(mode="dynamic", reduce_range=True, smooth_alpha=0.8, smooth_below_sqnr_db=40.0),
                                  calib_x32, SPECS, CalibrationSettings(samples=16))
    assert notes["smoothing"]["smoothed_inputs"] >= 1
    x = _held_out()
    ref = _run(src, x)
    err_plain = [float(np.mean((q - r) ** 2)) for q, r in zip(_run(plain, x), ref)]
    err_smooth = [float(np.mean((q - r) ** 2)) for q, r in zip(_run(smoothed, x), ref)]
    # both heads read the outlier tensor: smoothing must cut the error of each by 30% or more (measured: 52%, 37%)
    assert all(s < 0.7 * p for s, p in zip(err_smooth, err_plain)), (err_plain, err_smooth)
    assert _cosine(_run(smoothed, x)[0], ref[0]) > _cosine(_run(plain, x)[0], ref[0])


def test_without_calibration_data_smoothing_is_skipped_and_says_so(tmp_path):
    src, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    _outlier_model(src)
    notes = quantize_dynamic_int8(src, out, OrtRecipe(mode="dynamic", smooth_alpha=0.8))
    assert "smoothing" not in notes and "no calibration data" in notes["calibration"]
    assert [n.op_type for n in onnx.load(str(out)).graph.node].count("MatMulInteger") == 3


@pytest.mark.parametrize("key, value, words", [
    ("smooth_alpha", 1.5, "smooth_alpha = 1.5"),
    ("smooth_alpha", True, "smooth_alpha = True"),
    ("smooth_below_sqnr_db", -1, "smooth_below_sqnr_db = -1"),
    ("transformer_fusion", "yes", "transformer_fusion = 'yes'"),
    ("gelu_approximation", 1, "gelu_approximation = 1"),
])
def test_recipe_rejects_bad_dynamic_settings(key, value, words):
    profile = TargetProfile(name="t", backend="ort", precision="int8", device="cpu", recipe={"mode": "dynamic", key: value})
    with pytest.raises(ProfileError, match=words.replace("(", r"\(")):
        OrtRecipe.parse(profile)


BERT = '''
import torch
from torch import nn


class Block(nn.Module):
    """A post-LayerNorm BERT encoder layer: self-attention and a GELU feed-forward, residual adds."""

    def __init__(self, d=64, heads=4, ff=256):
        super().__init__()
        self.heads = heads
        self.qkv = nn.ModuleList(nn.Linear(d, d) for _ in range(3))
        self.out, self.ln1 = nn.Linear(d, d), nn.LayerNorm(d)
        self.up, self.down, self.ln2 = nn.Linear(d, ff), nn.Linear(ff, d), nn.LayerNorm(d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (p(x).view(b, t, self.heads, d // self.heads).transpose(1, 2) for p in self.qkv)
        a = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1) @ v
        x = self.ln1(x + self.out(a.transpose(1, 2).reshape(b, t, d)))
        return self.ln2(x + self.down(nn.functional.gelu(self.up(x))))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(Block(), Block())

    def forward(self, x):
        return self.blocks(x).mean(dim=1)


def encoder():
    torch.manual_seed(0)
    return Encoder().eval()
'''

BERT_CONFIG = """
[model]
source = "bert.py:encoder"
inputs = [ { name = "x", shape = [1, 16, 64], dynamic = { 0 = "batch" } } ]
outputs = ["embedding"]
task = "embedding"

[calibration]
data = "calib.npz"

[validation]
data = "val.npz"

[targets]
use = ["ort-int8-dynamic"]

[targets.ort-int8-dynamic.runtime]
warmup = 2
runs = 10
"""


@pytest.mark.slow
def test_bert_block_builds_fused_and_smoothed_through_the_pipeline(tmp_path):
    """As a user runs it: the built-in ort-int8-dynamic profile on a BERT-style encoder."""
    (tmp_path / "bert.py").write_text(BERT)
    (tmp_path / "bert.toml").write_text(BERT_CONFIG)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((48, 16, 64)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x[:32])
    np.savez(tmp_path / "val.npz", x=x[32:])
    assert main(["-q", "build", str(tmp_path / "bert.toml"), "-o", str(tmp_path / "out")]) == 0
    target = json.loads((tmp_path / "out" / "manifest.json").read_text())["targets"]["ort-int8-dynamic"]
    assert target["status"] == "passed"
    fusion = target["notes"]["transformer_fusion"]
    assert fusion["applied"] is True and fusion["fused"]["Gelu"] == 2 and fusion["fused"]["Attention"] == 2
    assert fusion["fused"]["LayerNormalization (rows)"] == 4
    assert "smoothing" in target["notes"]
    assert target["notes"]["gelu_approximation"] == "2 Gelu -> FastGelu (tanh approximation)"
    ops = {n.op_type for n in onnx.load(str(tmp_path / "out" / "ort-int8-dynamic" / "model.onnx")).graph.node}
    assert {"FastGelu", "QAttention", "MatMulInteger"} <= ops and not {"Gelu", "SkipLayerNormalization"} & ops
    assert target["metrics"]["vs_torch"]["worst"]["cosine"] >= 0.99


def test_fusion_that_matches_nothing_keeps_the_graph(tmp_path):
    src, dst = tmp_path / "m.onnx", tmp_path / "f.onnx"
    _outlier_model(src)
    note = fuse_transformer(src, dst, {"x": _held_out()[:1]})
    assert note == {"applied": False, "why": "no transformer pattern matched"}
    assert dst.read_bytes() == src.read_bytes()


def test_gelu_approximation_error_is_under_5e_4(tmp_path):
    """The claim in docs/ort-targets.md and the profile: FastGelu (tanh) differs from exact GELU by < 5e-4."""
    src, dst = tmp_path / "gelu.onnx", tmp_path / "fast.onnx"
    node = helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4001]) for n in ("x", "y")]
    model = helper.make_model(helper.make_graph([node], "g", io[:1], io[1:]),
                                   opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    onnx.save(model, str(src))
    assert approximate_gelu(src, dst) == 1
    assert [n.op_type for n in onnx.load(str(dst)).graph.node] == ["FastGelu"]
    x = np.linspace(-8, 8, 4001, dtype=np.float32)
    exact, fast = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0] for p in (src, dst))
    err = float(np.max(np.abs(exact - fast)))
    assert 1e-5 < err < 5e-4, err  # an approximation, and a close one
