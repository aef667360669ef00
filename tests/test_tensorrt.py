"""TensorRT targets: FP16 keep-list and INT8 QDQ graphs measured as host proxies on ONNX Runtime CPU, optimization
profiles, recipe checks, the unavailable path, optional imports; engine builds where TensorRT and a GPU exist."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgekit.backends.tensorrt.backend import HOST_PROXY, TensorRTBackend, engine_unavailable, optimization_profile
from edgekit.backends.tensorrt.recipe import TensorRTRecipe
from edgekit.backends.tensorrt.fp16 import (
    DEFAULT_KEEP_FP32_OPS,
    _constant_problem,
    convert_fp16,
    emulate_fp16,
    fp16_keep_list,
    make_fp16_onnx,
)
from edgekit.cli import main
from edgekit.errors import ProfileError
from edgekit.resources import calibration_dir
from edgekit.types import TargetProfile, TensorSpec

RUNTIME = "[targets.{t}.runtime]\nwarmup = 2\nruns = 10\n"


def _trt_importable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return True


ENGINE_HERE = engine_unavailable() == ""
needs_proxy_path = pytest.mark.skipif(ENGINE_HERE, reason="TensorRT and a GPU are present: targets build real engines")
needs_engine = pytest.mark.skipif(
    not ENGINE_HERE, reason="TensorRT not installed" if not _trt_importable() else "no CUDA device for TensorRT"
)

RESNET_NET = '''
import torch
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        return torch.relu(self.b2(self.c2(y)) + self.short(x))


class ResNetish(nn.Module):
    """ResNet-18's shape at toy size: stem, three residual stages, global pool, classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.stages = nn.Sequential(Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


def build():
    torch.manual_seed(0)
    net = ResNetish()
    for m in net.modules():  # trained-looking BatchNorm statistics, so folding BN into conv is exercised
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.6, 1.4)
            m.bias.data.uniform_(-0.2, 0.2)
    return net
'''

LN_NET = '''
import torch
import torch.nn as nn


class LayerNormBigConstant(nn.Module):
    """A LayerNorm, a Softmax, and a constant of 1e5 (beyond FP16's 65504) added and taken away again."""

    def __init__(self):
        super().__init__()
        self.fc1, self.ln, self.fc2 = nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 4)
        self.register_buffer("big", torch.full((32,), 1.0e5))

    def forward(self, x):
        h = self.ln(self.fc1(x)) * 1000.0
        return self.fc2(torch.softmax((h + self.big) - self.big, -1))


def build():
    torch.manual_seed(0)
    return LayerNormBigConstant()
'''


def _build(root: Path, config: str, out: str = "out", extra: tuple[str, ...] = ()) -> tuple[int, dict]:
    (root / "cfg.toml").write_text(config)
    code = main(["-q", "build", str(root / "cfg.toml"), "-o", str(root / out), *extra])
    path = root / out / "manifest.json"
    return code, json.loads(path.read_text()) if path.exists() else {}


def _digits_config(targets: list[str]) -> str:
    data = calibration_dir() / "digits"
    return textwrap.dedent(f"""
        [model]
        source = "example:digits"
        inputs = [ {{ name = "image", shape = [1, 1, 8, 8], dynamic = {{ 0 = "batch" }} }} ]
        outputs = ["logits"]
        task = "classification"

        [calibration]
        data = "{data / 'calib.npz'}"
        samples = 256
        method = "minmax"

        [validation]
        data = "{data / 'val.npz'}"
        labels = "labels"

        [targets]
        use = {json.dumps(targets)}
        """) + "".join(RUNTIME.format(t=t) for t in targets)


@pytest.fixture(scope="module")
def digits(digits_build):
    """The session's demo build (conftest.py): the bundled digits model, every built-in target, TensorRT's among them."""
    return digits_build.root, digits_build.code, digits_build.manifest


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    root = tmp_path_factory.mktemp("trt_resnet")
    (root / "resnet.py").write_text(RESNET_NET)
    rng = np.random.default_rng(0)
    np.savez(root / "calib.npz", x=rng.standard_normal((64, 3, 16, 16)).astype(np.float32))
    np.savez(root / "val.npz", x=rng.standard_normal((48, 3, 16, 16)).astype(np.float32))
    targets = ["tensorrt-fp16", "tensorrt-int8"]
    config = textwrap.dedent(f"""
        [model]
        source = "resnet.py:build"
        inputs = [ {{ name = "x", shape = [1, 3, 16, 16], dynamic = {{ 0 = "batch" }} }} ]
        outputs = ["logits"]
        task = "classification"

        [calibration]
        data = "calib.npz"

        [validation]
        data = "val.npz"

        [targets]
        use = {json.dumps(targets)}
        """) + "".join(RUNTIME.format(t=t) for t in targets)
    code, manifest = _build(root, config)
    return root, code, manifest


@pytest.fixture(scope="module")
def layernorm(tmp_path_factory):
    root = tmp_path_factory.mktemp("trt_ln")
    (root / "net.py").write_text(LN_NET)
    np.savez(root / "val.npz", x=np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32))
    config = textwrap.dedent("""
        [model]
        source = "net.py:build"
        inputs = [ { name = "x", shape = [1, 16], dynamic = { 0 = "batch" } } ]
        outputs = ["y"]

        [validation]
        data = "val.npz"

        [targets]
        use = ["tensorrt-fp16"]
        """) + RUNTIME.format(t="tensorrt-fp16")
    code, manifest = _build(root, config)
    return root, code, manifest


def _worst(manifest: dict, target: str) -> dict:
    return manifest["targets"][target]["metrics"]["vs_torch"]["worst"]


# ------------------------------------------------------------------------------- host proxy numbers


@needs_proxy_path
def test_digits_host_proxies_keep_accuracy(digits):
    _, code, m = digits
    assert code == m["exit_code"] == 0
    ref = m["references"]["torch-fp32"]["accuracy"]
    fp16, int8 = m["targets"]["tensorrt-fp16"], m["targets"]["tensorrt-int8"]
    assert _worst(m, "tensorrt-fp16")["cosine"] >= 0.999
    assert _worst(m, "tensorrt-int8")["cosine"] >= 0.99
    assert abs(fp16["metrics"]["accuracy"] - ref) <= 0.5
    assert abs(int8["metrics"]["accuracy"] - ref) <= 1.0
    assert int8["metrics"]["vs_torch"]["top1_agreement"] >= 0.98
    assert 0.2 < int8["size"]["ratio_to_fp32"] < 0.35 and 0.45 < fp16["size"]["ratio_to_fp32"] < 0.55


@needs_proxy_path
def test_resnet_style_host_proxies(resnet):
    _, code, m = resnet
    assert code == 0, {t: r["reason"] for t, r in m["targets"].items()}
    assert _worst(m, "tensorrt-fp16")["cosine"] >= 0.999
    assert _worst(m, "tensorrt-fp16")["sqnr_db"] > 40
    assert _worst(m, "tensorrt-int8")["cosine"] >= 0.99
    # (no top-1 bound: an untrained net's logits nearly tie, so top-1 flips on noise and means nothing here)


@needs_proxy_path
def test_unavailable_targets_are_host_proxies_with_reason_and_hint(digits):
    root, _, m = digits
    report = (root / "out" / "report.md").read_text()
    for name in ("tensorrt-fp16", "tensorrt-int8"):
        t = m["targets"][name]
        assert t["status"] == "unavailable" and t["reason"].startswith(HOST_PROXY)
        assert t["notes"]["host_proxy"] == HOST_PROXY
        assert t["measured_on"].startswith(HOST_PROXY)
        assert t["notes"]["engine"].startswith("not built: ") and "pip install tensorrt" in t["notes"]["engine"]
        assert [f["path"] for f in t["files"]] == [f"{name}/model.onnx"]
        assert t["notes"]["optimization_profile"] == {"image": "min [1, 1, 8, 8] opt [1, 1, 8, 8] max [32, 1, 8, 8]"}
        assert f"### {name} — unavailable" in report
    assert report.count(f"Reason: {HOST_PROXY}") == 2
    assert "TensorRT is not installed" in report and "pip install tensorrt" in report


# ------------------------------------------------------------------------------------------ FP16


def test_keep_list_keeps_layernorm_softmax_and_large_constant_fp32(layernorm):
    root, code, m = layernorm
    assert code == 0, m["targets"]["tensorrt-fp16"]["reason"]
    notes = m["targets"]["tensorrt-fp16"]["notes"]
    kept = notes["fp32_keep_list"]
    assert any("(LayerNormalization): op type in keep_fp32_ops" in k for k in kept)
    assert any("(Softmax): op type in keep_fp32_ops" in k for k in kept)
    big = [k for k in kept if "constant 'big'" in k]
    assert len(big) == 2 and all("(Add)" in k or "(Sub)" in k for k in big) and all("65504" in k for k in big)
    assert not any("(Gemm)" in k for k in kept)
    assert "3 node(s) FP16, 4 with FP32 tensors" in notes["precision"]

    model = onnx.load(str(root / "out" / "tensorrt-fp16" / "model.onnx"))
    types = {i.name: i.data_type for i in model.graph.initializer}
    assert types["big"] == onnx.TensorProto.FLOAT and types["ln.weight"] == onnx.TensorProto.FLOAT
    assert types["fc1.weight"] == types["fc2.weight"] == onnx.TensorProto.FLOAT16
    assert [i.type.tensor_type.elem_type for i in [*model.graph.input, *model.graph.output]] == [1, 1]
    # kept nodes in a row pass FP32 straight through: no Cast between Add, Sub and Softmax
    producer = {o: n for n in model.graph.node for o in n.output}
    sub = next(n for n in model.graph.node if n.op_type == "Sub")
    assert producer[sub.input[0]].op_type == "Add"
    assert _worst(m, "tensorrt-fp16")["cosine"] >= 0.999


def test_without_the_keep_list_the_large_constant_breaks_fp16(layernorm):
    """The control: the same graph with nothing kept FP32 overflows in FP16 (seen through the FP16 emulation;
    ONNX Runtime CPU given the FP16 graph itself computes it in FP32 and hides the overflow)."""
    import onnxruntime as ort

    root, _, _ = layernorm
    reference = onnx.load(str(root / "out" / "reference" / "model.onnx"))
    x = np.random.default_rng(2).standard_normal((16, 16)).astype(np.float32)

    def run(model):
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, {"x": x})[0].astype(np.float64)

    y32 = run(reference)
    good = run(emulate_fp16(convert_fp16(reference, fp16_keep_list(reference, DEFAULT_KEEP_FP32_OPS)).model))
    bad = convert_fp16(reference, []).model
    cos = np.sum(good * y32, 1) / np.linalg.norm(good, axis=1) / np.linalg.norm(y32, axis=1)
    assert cos.min() >= 0.999
    assert not np.all(np.isfinite(run(emulate_fp16(bad))))
    assert np.all(np.isfinite(run(bad))), "ONNX Runtime CPU now runs FP16 for real: the emulation may be retired"


def test_fp16_emulation_rounds_every_fp16_tensor():
    import onnxruntime as ort
    from onnx import TensorProto as T
    from onnx import helper

    c = numpy_helper.from_array(np.array([60000.0], np.float16), "c")
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["x16"], to=T.FLOAT16), helper.make_node("Add", ["x16", "c"], ["a"]),
         helper.make_node("Sub", ["a", "c"], ["s"]), helper.make_node("Cast", ["s"], ["y"], to=T.FLOAT)],
        "g", [helper.make_tensor_value_info("x", T.FLOAT, [3])], [helper.make_tensor_value_info("y", T.FLOAT, [3])], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    sess = ort.InferenceSession(emulate_fp16(model).SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": np.array([10000.0, 20.0, 1e-3], np.float32)})[0]
    assert y[0] == np.inf  # 10000 + 60000 overflows FP16
    assert y[1] == 32.0 and y[2] == 0.0  # FP16 spacing at 60000 is 32: 60020 rounds to 60032, 60000.001 to 60000


def test_fp16_onnx_is_byte_identical_on_rebuild(layernorm, tmp_path):
    root, _, m = layernorm
    make_fp16_onnx(root / "out" / "reference" / "model.onnx", tmp_path / "again.onnx", DEFAULT_KEEP_FP32_OPS)
    digest = hashlib.sha256((tmp_path / "again.onnx").read_bytes()).hexdigest()
    assert digest == m["targets"]["tensorrt-fp16"]["files"][0]["sha256"]


def test_control_flow_and_what_it_reads_stay_fp32():
    from onnx import TensorProto as T
    from onnx import helper

    w = numpy_helper.from_array(np.full((4,), 2.0, np.float32), "w")
    out = [helper.make_tensor_value_info("o", T.FLOAT, [None, 4])]
    then_g = helper.make_graph([helper.make_node("Mul", ["h", "w"], ["o"])], "then", [], out)
    else_g = helper.make_graph([helper.make_node("Neg", ["h"], ["o"])], "else", [], out)
    graph = helper.make_graph([
        helper.make_node("Relu", ["x"], ["h"], name="relu"),
        helper.make_node("ReduceSum", ["h"], ["s"], keepdims=0, name="sum"),
        helper.make_node("Greater", ["s", "zero"], ["c"], name="gt"),
        helper.make_node("If", ["c"], ["y0"], then_branch=then_g, else_branch=else_g, name="if"),
        helper.make_node("Add", ["y0", "w"], ["y"], name="add"),
    ], "g", [helper.make_tensor_value_info("x", T.FLOAT, [None, 4])], [helper.make_tensor_value_info("y", T.FLOAT, [None, 4])],
        [w, numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    result = convert_fp16(model, fp16_keep_list(model, DEFAULT_KEEP_FP32_OPS))
    assert {k.node: k.reason for k in result.kept} == {
        "relu": "output 'h' is read by a control-flow subgraph",
        "sum": "op type in keep_fp32_ops",
        "if": "control flow (subgraphs stay as exported)",
    }
    add = next(n for n in result.model.graph.node if n.op_type == "Add")
    types = {t.name: t.data_type for t in result.model.graph.initializer}
    assert types["w"] == T.FLOAT and types[add.input[1]] == T.FLOAT16  # the subgraph still reads the FP32 'w'
    onnx.checker.check_model(result.model, full_check=True)


def test_constant_rules_overflow_underflow_and_harmless_tiny_weights():
    assert "65504" in _constant_problem("c", np.array([1.0, -7.0e4], np.float32))
    assert _constant_problem("c", np.array([6.0e4, np.inf], np.float32)) == ""  # inf exists in FP16 too
    assert "round to 0" in _constant_problem("eps", np.array(1e-12, np.float32))
    weights = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    weights[:5] = 1e-9  # a few dead weights vanish in FP16 but carry no mass
    assert _constant_problem("w", weights) == ""


def test_fp16_keep_list_by_node_name_and_digits_graph_is_all_fp16(digits):
    root, _, m = digits
    reference = onnx.load(str(root / "out" / "reference" / "model.onnx"))
    assert fp16_keep_list(reference, DEFAULT_KEEP_FP32_OPS) == []
    first = reference.graph.node[0].name
    kept = fp16_keep_list(reference, (), keep_nodes=(first,))
    assert [(k.node, k.reason) for k in kept] == [(first, "named in keep_fp32_nodes")]
    model = onnx.load(str(root / "out" / "tensorrt-fp16" / "model.onnx"))
    assert {t.data_type for t in model.graph.initializer if t.dims and len(t.dims) > 1} == {onnx.TensorProto.FLOAT16}
    assert m["targets"]["tensorrt-fp16"]["notes"]["fp32_keep_list"] == ["(none)"]


# ------------------------------------------------------------------------------------------ INT8


@pytest.mark.slow  # reads the digits/resnet build fixtures through request.getfixturevalue
@pytest.mark.parametrize("which", ["digits", "resnet"])
def test_qdq_is_symmetric_int8_with_per_channel_weights(which, request):
    root, _, m = request.getfixturevalue(which)
    model = onnx.load(str(root / "out" / "tensorrt-int8" / "model.onnx"))
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consumers = {i: n for n in model.graph.node for i in n.input}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) >= 10
    weights = 0
    for node in qdq:
        zero_point = consts[node.input[2]]
        assert zero_point.dtype == np.int8 and not np.any(zero_point), node.name
        x = consts.get(node.input[0])
        if node.op_type == "DequantizeLinear" and x is not None:
            assert x.dtype == np.int8, f"{node.name} dequantizes {x.dtype} (TensorRT takes int8 only)"
            user = consumers[node.output[0]]
            if user.op_type in ("Conv", "Gemm") and user.input[1] == node.output[0]:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                assert axis == 0 and consts[node.input[1]].shape == (x.shape[0],) and x.shape[0] > 1
                weights += 1
    assert weights == (4 if which == "digits" else 10)
    notes = m["targets"]["tensorrt-int8"]["notes"]
    assert notes["activations"] == "int8 symmetric per-tensor"
    assert notes["weights"] == "int8 symmetric per-channel, 8-bit range"


def test_int8_uses_the_shared_calibration_settings(digits):
    _, _, m = digits
    assert m["targets"]["tensorrt-int8"]["notes"]["calibration"] == {
        "method": "minmax", "samples": 256, "batches": 8, "ort_pass": "skipped: edgekit's min/max pass handed over"}
    assert m["targets"]["tensorrt-int8"]["notes"]["calibration_statistics"] == "collected (256 samples); no cache"


# ------------------------------------------------------------------------------ profiles and recipes


def test_optimization_profile_defaults_from_dynamic_axes():
    specs = (TensorSpec("image", ("batch", 3, 224, 224)), TensorSpec("mask", ("batch", "seq")), TensorSpec("k", (4,)))
    got = optimization_profile(specs, {"image": (8, 3, 224, 224), "mask": (8, 128)}, {})
    assert got["image"] == ((1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224))
    assert got["mask"] == ((1, 1), (8, 128), (32, 128))  # max is max(opt, 32)
    assert got["k"] == ((4,), (4,), (4,))
    assert optimization_profile(specs[:1], {}, {})["image"][1] == (1, 3, 224, 224)  # no configured shape: opt 1


def test_optimization_profile_from_recipe_shapes():
    specs = (TensorSpec("ids", ("batch", "seq")), TensorSpec("mask", ("batch", "seq")))
    ranges = {"batch": {"min": 1, "opt": 8, "max": 64}, "seq": {"max": 512}}
    got = optimization_profile(specs, {"ids": (4, 128), "mask": (4, 128)}, ranges)
    assert got["ids"] == got["mask"] == ((1, 1), (8, 128), (64, 512))
    with pytest.raises(ProfileError, match=r"\['batchsize'\].*dynamic dimensions: batch, seq"):
        optimization_profile(specs, {}, {"batchsize": {"max": 8}})
    with pytest.raises(ProfileError, match="dimension 'batch'.*min 1, opt 16, max 8"):
        optimization_profile(specs, {"ids": (16, 4)}, {"batch": {"max": 8}})


def _profile(recipe: dict, precision: str = "fp16") -> TargetProfile:
    return TargetProfile(name="trt", backend="tensorrt", precision=precision, device="gpu", recipe=recipe)


@pytest.mark.parametrize("recipe, precision, message", [
    ({"workspace_mbb": 512}, "fp16", "unknown key 'workspace_mbb'.*did you mean 'workspace_mb'"),
    ({"workspace_mb": 0}, "fp16", "key 'workspace_mb' must be an integer >= 1"),
    ({"builder_optimization_level": 7}, "int8", "key 'builder_optimization_level' must be an integer from 0 to 5"),
    ({"timing_cache": 3}, "fp16", "key 'timing_cache' must be a string"),
    ({"keep_fp32_ops": "Softmax"}, "fp16", "key 'keep_fp32_ops' must be a list of strings"),
    ({"keep_fp32_nodes": ["n1"]}, "int8", "key 'keep_fp32_nodes' applies to precision fp16 only"),
    ({"calibrator": "minmax"}, "int8", "key 'calibrator' = 'minmax'; expected one of none, entropy"),
    ({"calibrator": "entropy"}, "fp16", "key 'calibrator' applies to precision int8 only"),
    ({"shapes": {"batch": {"min": 1, "mx": 8}}}, "fp16", "unknown key 'shapes.batch.mx'"),
    ({"shapes": {"batch": {"min": 8, "max": 4}}}, "fp16", "key 'shapes.batch' needs min <= opt <= max"),
    ({}, "fp32", "precision fp16 or int8"),
])
def test_recipe_errors_name_the_key(recipe, precision, message):
    with pytest.raises(ProfileError, match=message):
        TensorRTRecipe.parse(_profile(recipe, precision))


def test_builtin_profiles_parse():
    from edgekit.profiles import load_profile

    for name in ("tensorrt-fp16", "tensorrt-int8"):
        profile = load_profile(name)
        recipe = TensorRTRecipe.parse(profile)
        assert recipe.keep_fp32_ops == DEFAULT_KEEP_FP32_OPS and recipe.calibrator == "none"
        assert profile.host_is_device is False


# ---------------------------------------------------------------------------------- unavailable path


def test_availability_without_tensorrt_names_reason_and_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt now raises ImportError
    avail = TensorRTBackend().availability(_profile({}))
    assert (avail.ok, avail.proxy) == (False, True)
    assert avail.reason.startswith("TensorRT is not installed (")
    assert avail.hint == "pip install tensorrt (needs an NVIDIA GPU and driver)"


def test_strict_exits_3_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    (tmp_path / "cfg.toml").write_text(_digits_config(["ort-fp32", "tensorrt-fp16"]))
    code = main(["build", str(tmp_path / "cfg.toml"), "-o", str(tmp_path / "out"), "--strict"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3
    assert len(err) == 1 and "tensorrt-fp16" in err[0] and "TensorRT is not installed" in err[0]
    assert "pip install tensorrt" in err[0]
    assert not (tmp_path / "out").exists()


BLOCKED_IMPORTS = '''
import importlib, importlib.abc, json, pkgutil, sys

attempts = []

class BlockTensorRT(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tensorrt" or name.startswith("tensorrt."):
            attempts.append(name)
            raise ImportError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, BlockTensorRT())
import edgekit

failures = {}
names = sorted(m.name for m in pkgutil.walk_packages(edgekit.__path__, "edgekit.") if not m.name.endswith("__main__"))
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failures[name] = f"{type(exc).__name__}: {exc}"
at_import = list(attempts)
from edgekit.backends import get_backend
from edgekit.profiles import load_profile
avail = get_backend("tensorrt").availability(load_profile("tensorrt-int8"))
print(json.dumps({"modules": names, "failures": failures, "at_import": at_import, "reason": avail.reason}))
'''


def test_every_module_imports_with_tensorrt_blocked():
    proc = subprocess.run([sys.executable, "-c", BLOCKED_IMPORTS], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for module in ("tensorrt", "tensorrt.backend", "tensorrt.recipe", "tensorrt.engine", "tensorrt.fp16", "tensorrt.int8"):
        assert f"edgekit.backends.{module}" in result["modules"]
    assert result["failures"] == {}
    assert result["at_import"] == [], "a module imports tensorrt at import time; import it inside functions"
    assert result["reason"].startswith("TensorRT is not installed (ImportError")


# ------------------------------------------------------------------------- engine (TensorRT + GPU only)


@needs_engine
def test_engine_builds_strongly_typed_and_matches_the_reference(tmp_path):
    code, m = _build(tmp_path, _digits_config(["tensorrt-fp16", "tensorrt-int8"]))
    assert code == 0, {t: r["reason"] for t, r in m["targets"].items()}
    for name, bound in (("tensorrt-fp16", 0.999), ("tensorrt-int8", 0.99)):
        t = m["targets"][name]
        assert t["status"] == "passed" and "host_proxy" not in t["notes"]
        assert {Path(f["path"]).name for f in t["files"]} == {"model.onnx", "model.engine"}
        assert "strongly typed" in t["notes"]["engine"] and t["measured_on"].startswith("TensorRT ")
        assert _worst(m, name)["cosine"] >= bound
    assert abs(m["targets"]["tensorrt-int8"]["metrics"]["top1_drop"]) <= 1.0


@needs_engine
def test_engine_timing_cache_is_reused(tmp_path):
    cache = tmp_path / "timing.cache"
    config = _digits_config(["tensorrt-fp16"]) + f'[targets.tensorrt-fp16.recipe]\ntiming_cache = "{cache}"\n'
    _, first = _build(tmp_path, config, out="a")
    _, second = _build(tmp_path, config, out="b")
    assert cache.is_file() and cache.stat().st_size > 0
    assert first["targets"]["tensorrt-fp16"]["notes"]["timing_cache"].endswith("(new)")
    assert second["targets"]["tensorrt-fp16"]["notes"]["timing_cache"].endswith("(reused)")


@needs_engine
def test_engine_runs_batches_beyond_the_profile_max_in_chunks(tmp_path):
    config = _digits_config(["tensorrt-fp16"]) + "[targets.tensorrt-fp16.recipe.shapes]\nbatch = { min = 1, opt = 4, max = 8 }\n"
    code, m = _build(tmp_path, config)  # validation batches are 32 samples
    assert code == 0
    assert m["targets"]["tensorrt-fp16"]["notes"]["optimization_profile"]["image"].endswith("max [8, 1, 8, 8]")
    assert _worst(m, "tensorrt-fp16")["cosine"] >= 0.999
