"""ORT recipe behaviour: the dynamic-mode FP32 fallback (predicted activation SQNR) and Gemm exclusions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.backends.base import CalibrationSettings
from edgekit.backends.ort.recipe import OrtRecipe
from edgekit.backends.ort.dynamic import quantize_dynamic_int8
from edgekit.backends.ort.matmul_stats import fp32_fallback_nodes
from edgekit.errors import ProfileError
from edgekit.profiles import load_profile
from edgekit.types import TargetProfile, TensorSpec

from conftest import X32_SPECS, calibration_feed

SPECS = X32_SPECS  # the calibration data of the calib_x32 fixture (conftest.py)


def _two_layer_model(path: Path, tail_op: str = "MatMul") -> None:
    """x -> MatMul(W1) -> h -> Exp(4h) (long right tail) -> MatMul/Gemm(W2) -> y."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.standard_normal((32, 1024)) / np.sqrt(32)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((1024, 16)) / 32).astype(np.float32), "w2")
    two = numpy_helper.from_array(np.array(4.0, dtype=np.float32), "two")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
        helper.make_node("Mul", ["h", "two"], ["h2"], name="scale"),
        helper.make_node("Exp", ["h2"], ["e"], name="tail"),
    ]
    if tail_op == "Gemm":
        nodes.append(helper.make_node("Gemm", ["e", "w2"], ["y"], name="second"))
    else:
        nodes.append(helper.make_node("MatMul", ["e", "w2"], ["y"], name="second"))
    graph = helper.make_graph(
        nodes, "two_layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])],
        [w1, w2, two],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_predicted_sqnr_ranks_the_long_tailed_input_lowest(tmp_path, calib_x32):
    model = tmp_path / "m.onnx"
    _two_layer_model(model)
    keep, predicted = fp32_fallback_nodes(model, calib_x32, SPECS, CalibrationSettings(samples=16), min_sqnr_db=0.0)
    assert keep == []
    # a Gaussian input keeps ~8 bits of its range; exp() of it is dominated by a few large values
    assert predicted["first"] > 35.0
    assert predicted["second"] < predicted["first"] - 10.0


def test_dynamic_fallback_keeps_only_the_low_sqnr_node_in_fp32(tmp_path, calib_x32):
    model, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    _two_layer_model(model)
    _, predicted = fp32_fallback_nodes(model, calib_x32, SPECS, CalibrationSettings(samples=16), min_sqnr_db=0.0)
    threshold = (predicted["first"] + predicted["second"]) / 2
    recipe = OrtRecipe(mode="dynamic", reduce_range=True, fp32_fallback_sqnr_db=threshold)
    notes = quantize_dynamic_int8(model, out, recipe, calib_x32, SPECS, CalibrationSettings(samples=16))
    ops = _ops(out)
    assert ops.count("MatMulInteger") == 1  # 'first' quantized
    assert ops.count("MatMul") == 1  # 'second' kept FP32
    assert notes["fp32_fallback"]["kept_fp32"] == ["second"]
    assert notes["fp32_fallback"]["quantized"] == 1


def test_dynamic_fallback_without_calibration_data_quantizes_everything_and_says_so(tmp_path):
    model, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    _two_layer_model(model)
    notes = quantize_dynamic_int8(model, out, OrtRecipe(mode="dynamic", fp32_fallback_sqnr_db=20.0))
    assert _ops(out).count("MatMulInteger") == 2
    assert "no calibration data" in notes["calibration"]


def test_dynamic_mode_excludes_gemm_nodes_it_rewrites(tmp_path, calib_x32):
    """quantize_dynamic renames a Gemm to '<name>_MatMul' before quantizing; exclusions must follow it."""
    model, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    _two_layer_model(model, tail_op="Gemm")
    quantize_dynamic_int8(model, out, OrtRecipe(mode="dynamic", exclude_op_types=("Gemm",)))
    ops = _ops(out)
    assert ops.count("MatMulInteger") == 1
    assert "MatMulInteger" in ops and ("Gemm" in ops or "MatMul" in ops)


@pytest.mark.parametrize("value", [-1.0, True, "20"])
def test_fp32_fallback_threshold_is_checked(value):
    profile = TargetProfile("t", "ort", "int8", "cpu", recipe={"mode": "dynamic", "fp32_fallback_sqnr_db": value})
    with pytest.raises(ProfileError, match="fp32_fallback_sqnr_db"):
        OrtRecipe.parse(profile)


def test_builtin_dynamic_profile_enables_the_fallback():
    recipe = OrtRecipe.parse(load_profile("ort-int8-dynamic"))
    assert recipe.fp32_fallback_sqnr_db == 20.0
    assert OrtRecipe.parse(load_profile("ort-int8")).fp32_fallback_sqnr_db == 0.0


def _conv_model(path: Path) -> None:
    """image -> Conv(stem) -> Relu -> Conv -> y."""
    rng = np.random.default_rng(2)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.2, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 8, 3, 3)).astype(np.float32) * 0.1, "w2")
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["a"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="body", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "convs",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.mark.parametrize("keep_stem", [True, False])
def test_static_fp32_input_layers_keeps_the_stem_unquantized(tmp_path, keep_stem):
    from edgekit.backends.onnx.qdq import QdqSettings, quantize_static_qdq

    specs = (TensorSpec("image", (1, 3, 8, 8)),)
    rng = np.random.default_rng(3)
    calib = calibration_feed(tmp_path / "c.npz", specs, image=rng.standard_normal((8, 3, 8, 8)).astype(np.float32))
    model, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    _conv_model(model)
    notes = quantize_static_qdq(model, out, calib, specs, CalibrationSettings(samples=8),
                                QdqSettings(fp32_input_layers=keep_stem))
    graph = onnx.load(str(out)).graph
    producers = {o: n for n in graph.node for o in n.output}
    convs = {n.name: n for n in graph.node if n.op_type == "Conv"}
    # a quantized Conv reads its weight through a DequantizeLinear; an FP32 one reads the initializer itself
    stem_weight_from = producers.get(convs["stem"].input[1])
    body_weight_from = producers.get(convs["body"].input[1])
    assert body_weight_from is not None and body_weight_from.op_type == "DequantizeLinear"
    assert (stem_weight_from is None) == keep_stem
    assert ("fp32_input_layers" in notes) == keep_stem
