"""Recovery inside `edgekit build` (edgekit/recover/): failed static INT8 targets are rebuilt within a budget; the
best candidate is written, re-validated and vouched for by the manifest. Real builds on ONNX Runtime.

The two small models are the issue's: a MobileNetV2-style CNN and a ViT-style transformer, seeded. The ViT fails
min_cosine 0.99 as it is; the CNN is planted honestly to fail: its depthwise BatchNorm scales spread over about three
decades (log-normal, sigma 2) and ReLU follows the depthwise convs, the per-channel range spread that breaks
per-tensor activation quantization of depthwise nets (Nagel et al. 2019)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.cli import main
from edgekit.recover.graphs import correct_biases, equalize
from small_models import write_sandbox  # the models (written as the builds' net.py), their weights and data


CONFIG = """
[model]
source = "net.py:{model}"
weights = "{model}.safetensors"
inputs = [ {{ name = "x", shape = [1, 3, 32, 32] }} ]
outputs = ["logits"]

[calibration]
data = "calib.npz"

[validation]
data = "val.npz"

[targets]
use = ["ort-fp32", "ort-int8"]
[targets.ort-fp32.runtime]
warmup = 5
runs = 40
[targets.ort-int8.runtime]
warmup = 5
runs = 40
[targets.ort-int8.recover]
budget_s = 900  # not binding: on a shared, loaded host one candidate can take minutes (the budget test is below)
"""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    import torch

    root = tmp_path_factory.mktemp("recover")
    write_sandbox(root)
    torch.manual_seed(0)
    return root


def _build(root: Path, model: str, out: str, extra: str = "") -> tuple[int, dict, float]:
    cfg = root / f"{out}.toml"
    cfg.write_text(CONFIG.format(model=model) + extra)
    start = time.monotonic()
    code = main(["-q", "build", str(cfg), "-o", str(root / out)])
    return code, json.loads((root / out / "manifest.json").read_text()), time.monotonic() - start


@pytest.fixture(scope="module")
def mbv2_builds(models):
    return [_build(models, "mbv2", f"mbv2_{i}") for i in (1, 2)]


@pytest.fixture(scope="module")
def vit_build(models):
    return _build(models, "vit", "vit")


def _torch_cosine(root: Path, model: str, artifact: Path) -> float:
    """Mean cosine between the artifact on ONNX Runtime and the torch model, sample by sample on the validation data."""
    import importlib.util

    import torch
    from safetensors.torch import load_file

    spec = importlib.util.spec_from_file_location("_recover_net_check", root / "net.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = getattr(mod, model)()
    net.load_state_dict(load_file(str(root / f"{model}.safetensors")))
    sess = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    cos = []
    for x in np.load(root / "val.npz")["x"]:
        with torch.inference_mode():
            ref = net(torch.from_numpy(x[None])).numpy().ravel().astype(np.float64)
        out = sess.run(None, {"x": x[None]})[0].ravel().astype(np.float64)
        cos.append(ref @ out / (np.linalg.norm(ref) * np.linalg.norm(out)))
    return float(np.mean(cos))


def _check_recovered(root: Path, model: str, out: str, manifest: dict) -> dict:
    t = manifest["targets"]["ort-int8"]
    r = t["recovery"]
    assert r["attempts"][0]["step"] == "original" and r["attempts"][0]["cosine"] < 0.99  # fails without recovery
    assert r["met"] is True and r["chosen"] is not None and r["attempts"][r["chosen"]]["gates_passed"]
    assert t["status"] == "passed" and t["metrics"]["vs_torch"]["worst"]["cosine"] >= 0.99
    artifact = root / out / t["files"][0]["path"]
    assert _sha(artifact) == t["files"][0]["sha256"]
    assert _torch_cosine(root, model, artifact) >= 0.99  # the written file itself gives it
    assert "Recovery: met every gate" in (root / out / "report.md").read_text()
    return r


@pytest.mark.slow
def test_mobilenetv2_style_fails_without_recovery_and_meets_the_gate_with_it(models, mbv2_builds):
    code, manifest, _ = mbv2_builds[0]
    assert code == manifest["exit_code"] == 0
    _check_recovered(models, "mbv2", "mbv2_1", manifest)


@pytest.mark.slow
def test_vit_style_fails_without_recovery_and_meets_the_gate_with_it(models, vit_build):
    code, manifest, _ = vit_build
    assert code == manifest["exit_code"] == 0
    _check_recovered(models, "vit", "vit", manifest)


@pytest.mark.slow
def test_a_transformer_past_its_first_repairs_tries_smoothing_then_alpha_by_role(models):
    """The small ViT with a gate no candidate meets: after 'only compute ops', the search tries smoothing with alpha
    0.95, 0.75 and 0.5 (the graph has LayerNorms), then the runner-up alpha for one block role's inputs at a time;
    every attempt is recorded with its cosine, and the best is written and vouched for by the manifest."""
    code, manifest, _ = _build(models, "vit", "vit_tight", extra="""
[targets.ort-int8.gates]
min_cosine = 0.9999999
""")
    t = manifest["targets"]["ort-int8"]
    changes = [a["change"] for a in t["recovery"]["attempts"]]
    assert code == 1 and t["status"] == "failed" and t["recovery"]["met"] is False
    smoothing = [c for c in changes if "SmoothQuant-style smoothing" in c]
    assert [c.split("alpha ")[1][:4].rstrip(";") for c in smoothing[:3]] == ["0.95", "0.75", "0.5"], changes
    assert any("for the inputs of every layers.#." in c for c in smoothing[3:]), changes
    assert all(a["cosine"] is not None for a in t["recovery"]["attempts"])
    assert _sha(models / "vit_tight" / t["files"][0]["path"]) == t["files"][0]["sha256"]


@pytest.mark.slow
def test_the_same_build_twice_picks_the_same_candidate_and_bytes(mbv2_builds):
    (_, first, _), (_, second, _) = mbv2_builds
    a, b = first["targets"]["ort-int8"], second["targets"]["ort-int8"]
    assert a["recovery"]["chosen"] == b["recovery"]["chosen"]
    assert [x["change"] for x in a["recovery"]["attempts"]] == [x["change"] for x in b["recovery"]["attempts"]]
    assert a["files"][0]["sha256"] == b["files"][0]["sha256"]


@pytest.mark.slow
def test_a_gate_nobody_meets_stops_at_the_budget_keeps_the_best_and_validates(sandbox):
    from conftest import GOOD_CONFIG

    budget = 10
    (sandbox / "cfg.toml").write_text(GOOD_CONFIG + f"""
[targets.ort-int8.gates]
min_cosine = 0.9999999
[targets.ort-int8.recover]
budget_s = {budget}
""")
    start = time.monotonic()
    code = main(["-q", "build", str(sandbox / "cfg.toml"), "-o", str(sandbox / "out")])
    took = time.monotonic() - start
    manifest = json.loads((sandbox / "out" / "manifest.json").read_text())
    t = manifest["targets"]["ort-int8"]
    r = t["recovery"]
    assert code == 1 and t["status"] == "failed" and r["met"] is False
    assert r["seconds"] <= budget + 60 and took <= budget + 60 + 60  # the search, and the build around it
    assert len(r["attempts"]) >= 2 and {a["step"] for a in r["attempts"]} >= {"original", "calibration"}
    assert all(a["gates_passed"] is False for a in r["attempts"])
    best = r["attempts"][r["chosen"] if r["chosen"] is not None else 0]
    # the best-so-far rule (docs/recovery.md): among the original and the timed candidates not slower than the floor
    # (90 % of the original's speed-up, capped at 1), the most accurate (accuracy, then cosine to 6 digits)
    first = r["attempts"][0]
    floor = 0.9 * min(1.0, first["speedup"]) if first["speedup"] else 0.0
    eligible = [first] + [a for a in r["attempts"][1:] if a["p50_ms"] is not None and (a["speedup"] or 0.0) >= floor]
    assert best in eligible
    top = max(a["accuracy"] for a in eligible)
    assert best["accuracy"] == top
    assert round(best["cosine"], 6) == max(round(a["cosine"], 6) for a in eligible if a["accuracy"] == top)
    assert _sha(sandbox / "out" / t["files"][0]["path"]) == t["files"][0]["sha256"]
    assert main(["-q", "validate", str(sandbox / "out")]) == 1  # sha256 checks pass; the gate still fails


@pytest.mark.slow
def test_recovery_disabled_leaves_no_record(sandbox):
    from conftest import GOOD_CONFIG

    (sandbox / "cfg.toml").write_text(GOOD_CONFIG + """
[targets.ort-int8.gates]
min_cosine = 0.9999999
[targets.ort-int8.recover]
enabled = false
""")
    assert main(["-q", "build", str(sandbox / "cfg.toml"), "-o", str(sandbox / "out")]) == 1
    t = json.loads((sandbox / "out" / "manifest.json").read_text())["targets"]["ort-int8"]
    assert t["status"] == "failed" and "recovery" not in t


def test_a_recover_budget_out_of_bounds_is_bad_input(sandbox, capsys):
    from conftest import GOOD_CONFIG

    (sandbox / "cfg.toml").write_text(GOOD_CONFIG + "\n[targets.ort-int8.recover]\nbudget_s = 0\n")
    assert main(["-q", "build", str(sandbox / "cfg.toml"), "-o", str(sandbox / "out")]) == 2
    assert "budget_s = 0 must be > 0" in capsys.readouterr().err
    assert not (sandbox / "out").exists()


# ------------------------------------------------------------------------------------------- graph repairs


def _save(nodes, inits, path: Path, inputs=(("x", [4, 3, 6, 6]),), out=("y", None)) -> Path:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(out[0], TensorProto.FLOAT, out[1])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _run(path: Path, feed: dict) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_cross_layer_equalization_is_exact_and_equalizes_ranges(tmp_path):
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 3, 3, 3)) * np.exp(rng.standard_normal(8) * 2)[:, None, None, None]
    inits = {"w1": w1, "b1": rng.standard_normal(8), "w2": rng.standard_normal((8, 1, 3, 3)), "w3": rng.standard_normal((5, 8, 1, 1))}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["d"], name="dw", group=8, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["d"], ["e"]),
             helper.make_node("Conv", ["e", "w3"], ["y"], name="pw")]
    src = _save(nodes, inits, tmp_path / "src.onnx")
    assert equalize(src, tmp_path / "eq.onnx") == 2
    x = rng.standard_normal((4, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(tmp_path / "eq.onnx", {"x": x}), _run(src, {"x": x}), rtol=1e-4, atol=1e-4)
    eq = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "eq.onnx")).graph.initializer}
    spread = lambda w: np.ptp(np.log(np.abs(w).reshape(w.shape[0], -1).max(axis=1)))  # noqa: E731
    assert spread(eq["w1"]) < 0.5 * spread(w1)


def test_bias_correction_removes_the_mean_error_of_quantized_weights(tmp_path):
    from edgekit.backends.base import CalibrationSettings
    from edgekit.backends.onnx.qdq import QdqSettings, quantize_static_qdq
    from conftest import calibration_feed
    from edgekit.types import TensorSpec

    rng = np.random.default_rng(1)
    inits = {"w": rng.standard_normal((16, 32, 1, 1)) * 0.05, "b": np.zeros(16)}
    src = _save([helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv")], inits, tmp_path / "src.onnx",
                inputs=(("x", ["n", 32, 4, 4]),))
    x = (rng.standard_normal((64, 32, 4, 4)) + 3.0).astype(np.float32)  # a large input mean: weight error shows as bias
    specs = (TensorSpec("x", ("n", 32, 4, 4)),)
    feed = calibration_feed(tmp_path / "c.npz", specs, x=x)
    qdq = QdqSettings(per_channel=False, reduce_range=True)
    quantize_static_qdq(src, tmp_path / "q.onnx", feed, specs, CalibrationSettings(), qdq)
    assert correct_biases(src, tmp_path / "q.onnx", [{"x": x}], tmp_path / "corrected.onnx") == 1
    quantize_static_qdq(tmp_path / "corrected.onnx", tmp_path / "q2.onnx", feed, specs, CalibrationSettings(), qdq)
    ref = _run(src, {"x": x})
    before = np.abs((_run(tmp_path / "q.onnx", {"x": x}) - ref).mean(axis=(0, 2, 3)))
    after = np.abs((_run(tmp_path / "q2.onnx", {"x": x}) - ref).mean(axis=(0, 2, 3)))
    assert after.mean() < 0.5 * before.mean()


def test_smoothed_candidates_are_exact_in_fp32_keep_their_mul_fp32_and_quantize_closer(tmp_path):
    """A LayerNorm with outlier channels feeding a residual Add and, through a Reshape, two projections (BERT's
    block input; what the residual reads is not smoothed): the smoothed graphs compute the same in FP32; built INT8, the smoothing Mul stays FP32 and the
    projections' outputs are closer to FP32 than without smoothing."""
    from conftest import calibration_feed
    from edgekit.backends.base import CalibrationSettings
    from edgekit.backends.onnx.qdq import QdqSettings
    from edgekit.recover.candidates import GRAPHS, Spec, StaticQdq
    from edgekit.types import TensorSpec

    rng = np.random.default_rng(2)
    gamma = np.ones(32)
    gamma[[3, 17]] = 60.0  # outlier hidden dimensions after the LayerNorm
    inits = {"g": gamma, "beta": rng.standard_normal(32) * 0.1, "wq": rng.standard_normal((32, 32)) / 6,
             "wk": rng.standard_normal((32, 32)) / 6}
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "beta"], ["h"], axis=-1, name="ln"),
             helper.make_node("Reshape", ["h", "shape"], ["h2"], name="flat"),
             helper.make_node("MatMul", ["h2", "wq"], ["q"], name="query"),
             helper.make_node("MatMul", ["h2", "wk"], ["k"], name="key"),
             helper.make_node("Add", ["h", "x"], ["residual"], name="residual_add"),
             helper.make_node("Reshape", ["residual", "shape"], ["r2"], name="flat_residual"),
             helper.make_node("Concat", ["q", "k", "r2"], ["y"], axis=-1, name="outputs")]
    shape = numpy_helper.from_array(np.array([-1, 32], dtype=np.int64), "shape")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [shape, *(numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    src = tmp_path / "src.onnx"
    onnx.save(model, str(src))
    specs = (TensorSpec("x", ("n", 8, 32)),)
    x = rng.standard_normal((48, 8, 32)).astype(np.float32)
    builder = StaticQdq(src, calibration_feed(tmp_path / "c.npz", specs, x=x[:32]), specs,
                        CalibrationSettings(method="minmax", samples=32), QdqSettings(reduce_range=False), tmp_path)
    held_out = {"x": x[32:]}
    exact = _run(src, held_out)
    errors = {}
    for graph in ("reference", *[g for g in GRAPHS if g.startswith("smoothed")]):
        smoothed = builder.graph(graph, "minmax")
        np.testing.assert_allclose(_run(smoothed, held_out), exact, rtol=1e-4, atol=1e-4)
        dst = tmp_path / f"{graph}.onnx"
        builder.build(Spec("minmax", graph, compute_only=True), dst)  # as the search builds smoothed graphs
        model = onnx.load(str(dst))
        muls = [n for n in model.graph.node if n.op_type == "Mul" and n.name.endswith("_smooth")]
        assert len(muls) == (graph != "reference")
        producers = {o: n.op_type for n in model.graph.node for o in n.output}
        assert all(producers.get(i) != "DequantizeLinear" for m in muls for i in m.input), "the smoothing Mul was quantized"
        got = _run(dst, held_out)[:, :64]  # the two projections
        errors[graph] = float(np.mean((got - exact[:, :64]) ** 2) / np.mean(exact[:, :64] ** 2))
    assert errors["smoothed-0.95"] < 0.5 * errors["reference"], errors


def test_rank_layers_blames_the_layer_reading_a_tensor_with_an_outlier_channel(tmp_path):
    from edgekit.backends.base import CalibrationSettings
    from edgekit.backends.onnx.qdq import QdqSettings, preprocess, quantize_static_qdq
    from conftest import calibration_feed
    from edgekit.recover.rank import rank_layers
    from edgekit.types import TensorSpec

    rng = np.random.default_rng(3)
    w2 = rng.standard_normal((32, 32)) / 6
    w3 = rng.standard_normal((32, 8)) / 6
    w2[:, 5] *= 1000.0  # planted: channel 5 of mm2's output is 1000x the others...
    w3[5, :] /= 1000.0  # ...and mm3 reads it back down, so the FP32 model is unchanged in scale
    inits = {"w1": rng.standard_normal((16, 32)) / 4, "w2": w2, "w3": w3}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"], name="mm1"), helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["b"], name="mm2"), helper.make_node("MatMul", ["b", "w3"], ["y"], name="mm3")]
    src = _save(nodes, inits, tmp_path / "src.onnx", inputs=(("x", ["n", 16]),))
    specs = (TensorSpec("x", ("n", 16)),)
    x = rng.standard_normal((64, 16)).astype(np.float32)
    quantize_static_qdq(src, tmp_path / "q.onnx", calibration_feed(tmp_path / "c.npz", specs, x=x), specs,
                        CalibrationSettings(), QdqSettings())
    preprocess(src, tmp_path / "pre.onnx")
    ranked = rank_layers(tmp_path / "q.onnx", tmp_path / "pre.onnx", [{"x": x[:16]}], seconds=30)
    assert ranked[0] == "mm3", ranked
