"""`edgekit debug`: per-layer analysis of built INT8 targets, run for real on ONNX Runtime.

A small CNN with one planted fragile layer (its input has one channel 1000x the others, the float function unchanged)
is built once with ort-int8; debug must name that layer first, by its ONNX node and its torch module. The digits demo
build (a copy) gives tensorrt-int8 and ort-int8-dynamic analyses. Bad input exits 2; validate still passes after."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgekit import strictjson
from edgekit.cli import main
from edgekit.debug import analyze, resolve_layer_names
from edgekit.debug.run import Timing
from edgekit.errors import UsageError

FRAGILE_NET = '''
import torch
import torch.nn as nn

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv2(self.relu(self.conv1(x))))

class Fragile(nn.Module):
    """block.conv1's output channel 3 is 1000x the others (weights and bias scaled; ReLU commutes) and block.conv2
    divides its input channel 3 by 1000: the same function, but one per-tensor scale for block.conv2's input."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.block = Block()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.head(self.block(self.relu(self.stem(x))))

def build():
    torch.manual_seed(0)
    model = Fragile()
    with torch.no_grad():
        model.block.conv1.weight[3] *= 1000.0
        model.block.conv1.bias[3] = model.block.conv1.bias[3].abs() * 1000.0
        model.block.conv2.weight[:, 3] /= 1000.0
    return model
'''

CONFIG = """
[model]
source = "fragile.py:build"
inputs = [ { name = "x", shape = [1, 1, 8, 8], dynamic = { 0 = "batch" } } ]
outputs = ["logits"]
task = "classification"

[calibration]
data = "calib.npz"

[validation]
data = "val.npz"

[targets]
use = ["ort-int8"]
"""


@pytest.fixture(scope="module")
def fragile(tmp_path_factory) -> Path:
    """The fragile CNN built with ort-int8 (its gates may fail: the build is what debug reads)."""
    root = tmp_path_factory.mktemp("fragile")
    (root / "fragile.py").write_text(FRAGILE_NET)
    (root / "cfg.toml").write_text(CONFIG)
    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_normal((96, 1, 8, 8))).astype(np.float32)
    np.savez(root / "calib.npz", x=x[:64])
    np.savez(root / "val.npz", x=x[64:])
    assert main(["-q", "build", str(root / "cfg.toml"), "-o", str(root / "out")]) in (0, 1)
    return root / "out"


@pytest.fixture()
def fragile_copy(fragile, tmp_path) -> Path:
    dst = tmp_path / "out"
    shutil.copytree(fragile, dst)
    return dst


@pytest.mark.slow  # builds the fragile CNN (module fixture)
def test_planted_fragile_layer_is_named_first_by_onnx_node_and_torch_module(fragile_copy, capsys):
    reference = onnx.load(str(fragile_copy / "reference" / "model.onnx"))
    node = resolve_layer_names(["block.conv2"], reference)
    assert len(node) == 1 and node[0] != "block.conv2"  # a module name resolves to its ONNX node

    assert main(["debug", str(fragile_copy), "--target", "ort-int8", "--top", "3"]) == 0
    table = capsys.readouterr().out
    d = strictjson.restore(json.loads((fragile_copy / "ort-int8" / "debug.json").read_text()))
    first = d["layers"][0]
    assert first["onnx_node"] == node[0] and first["torch_module"] == "block.conv2" and first["rank"] == 1
    # the planted layer is fragile by itself (its input's per-tensor scale), and keeping it FP32 recovers the model
    assert first["activation_only_sqnr_db"] < 15.0 and first["local_sqnr_db"] < 15.0
    others = [x for x in d["layers"][1:] if x["local_sqnr_db"] is not None]
    assert others and min(x["local_sqnr_db"] for x in others) > first["local_sqnr_db"] + 10.0
    assert d["end_to_end"]["cosine"] < 0.999 and first["keep_fp32"]["cosine"] > 0.9999
    assert first["keep_fp32"]["cosine"] > max(x["keep_fp32"]["cosine"] for x in d["layers"][1:])
    lines = table.splitlines()
    row = next(ln for ln in lines if ln.startswith("1 "))
    assert "block.conv2" in row and node[0] in row
    assert "## Per-layer analysis" in (fragile_copy / "report.md").read_text()
    assert "`block.conv2`" in (fragile_copy / "report.md").read_text()
    # debug.json is no artifact: the folder still validates (sha256 and re-measure), the section survives re-rendering
    assert main(["-q", "validate", str(fragile_copy)]) in (0, 1)
    assert main(["-q", "report", str(fragile_copy)]) in (0, 1)
    assert "`block.conv2`" in (fragile_copy / "report.md").read_text()


@pytest.mark.slow  # builds the fragile CNN (module fixture)
def test_many_layers_go_block_by_block_then_bisect_to_the_fragile_layer(fragile, monkeypatch):
    from edgekit.debug import rank as module

    monkeypatch.setattr(module, "BLOCK_THRESHOLD", 2)  # 4 quantized layers count as many: blocks, then bisection
    monkeypatch.setattr(module, "BISECT_BLOCKS", 1)
    report = analyze(fragile, "ort-int8", samples=16, timing=Timing(warmup=2, runs=10), write=False)
    assert {b.name: len(b.layers) for b in report.blocks} == {"block": 2, "head": 2}
    assert max(report.blocks, key=lambda b: b.keep_fp32.cosine).name == "block"
    first = report.layers[0]
    assert first.torch_module == "block.conv2" and first.rank == 1 and first.keep_fp32.cosine > 0.9999
    assert [x.keep_fp32 for x in report.layers if x.torch_module.startswith("head.")] == [None, None]
    assert not (fragile / "ort-int8" / "debug.json").exists()


@pytest.mark.slow  # builds the fragile CNN (module fixture)
def test_resolve_layer_names_takes_onnx_nodes_torch_modules_and_prefixes(fragile):
    reference = onnx.load(str(fragile / "reference" / "model.onnx"))
    conv1, conv2 = resolve_layer_names(["block.conv1", "block.conv2"], reference)
    assert resolve_layer_names([conv2, "block.conv1"], reference) == [conv2, conv1]
    assert set(resolve_layer_names(["block"], reference)) == {conv1, conv2}
    with pytest.raises(UsageError, match="block.conv3.*did you mean"):
        resolve_layer_names(["block.conv3"], reference)


@pytest.mark.parametrize("target", ["tensorrt-int8", "ort-int8-dynamic", "torch-fbgemm", "tensorrt-fp16"])
def test_other_backends_write_debug_json_on_the_digits_demo(digits_build, tmp_path, target):
    out = tmp_path / "out"
    shutil.copytree(digits_build.out, out)
    report = analyze(out, target, samples=32, timing=Timing(warmup=2, runs=10))
    text = (out / target / "debug.json").read_text()
    d = strictjson.loads_strict(text)
    precision = "fp16" if target.endswith("fp16") else "int8"
    low, high = (55.0, 120.0) if precision == "fp16" else (25.0, 80.0)  # SQNR dB one layer's rounding gives
    assert d["schema"] == 1 and d["target"] == target and d["precision"] == precision and d["samples"] == 32
    assert d["data"] == "validation" and 0.999 < d["end_to_end"]["cosine"] <= 1.0
    assert len(d["layers"]) == len(report.layers) == 4  # features.0, features.3, classifier.1, classifier.3
    assert {x["torch_module"] for x in d["layers"]} == {"features.0", "features.3", "classifier.1", "classifier.3"}
    for x in d["layers"]:
        assert low < x["local_sqnr_db"] < high and low < x["accumulated_sqnr_db"] < high
        assert x["weight_only_sqnr_db"] >= x["local_sqnr_db"] - 1.0
        assert x["keep_fp32"]["cosine"] > 0.999 and x["rank"] in (1, 2, 3, 4)
    if target == "tensorrt-int8":  # debug.json is no artifact: the folder still validates
        assert main(["-q", "validate", str(out), "--target", target]) == 0


def test_bad_input_exits_2_with_one_line_and_writes_nothing(digits_build, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(digits_build.out, out)
    before = sorted(p.name for p in out.rglob("*"))
    cases = [
        (["debug", str(out), "--target", "nope"], "not in this build"),
        (["debug", str(out), "--target", "ort-fp32"], "is fp32"),
        (["debug", str(tmp_path / "missing"), "--target", "ort-int8"], "not a directory"),
        (["debug", str(out), "--target", "ort-int8", "--data", str(tmp_path / "none.npz")], "does not exist"),
        (["debug", str(out), "--target", "ort-int8", "--top", "0"], "--top"),
        (["debug", str(out), "--target", "ort-int8", "--samples", "0"], "--samples"),
        (["debug", str(out)], "--target"),
    ]
    for argv, words in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], (argv, err)
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    assert main(["debug", str(out), "--target", "ort-int8", "--data", str(tmp_path / "bad.npz")]) == 2
    assert sorted(p.name for p in out.rglob("*")) == before


def test_debug_help_explains_the_numbers(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["debug", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for words in ("usage: edgekit debug", "local SQNR dB", "accumulated SQNR dB", "keep-FP32 cosine", "recovered/ms",
                  "--data", "--top"):
        assert words in out


def test_module_names_come_from_scopes_parameters_and_metadata_never_from_shared_constants():
    from onnx import helper

    from edgekit.debug.names import module_map

    w = [helper.make_tensor(n, 1, [1], [1.0]) for n in ("a.weight", "layer1.0.conv2.weight", "shared.weight")]
    nodes = [
        helper.make_node("Conv", ["x", "onnx::Conv_7"], ["t1"], name="/layer1/layer1.0/conv1/Conv"),  # TorchScript
        helper.make_node("Conv", ["t1", "layer1.0.conv2.weight"], ["t2"], name="node_Conv_31"),  # dynamo: the weight
        helper.make_node("Mul", ["t2", "a.weight"], ["t3"], name="node_mul"),
        helper.make_node("LayerNormalization", ["t3", "shared.weight"], ["t4"], name="ln_a"),  # merged constant
        helper.make_node("LayerNormalization", ["t4", "shared.weight"], ["y"], name="ln_b"),
    ]
    nodes[2].metadata_props.add(key="pkg.torch.onnx.name_scopes", value="['', 'blocks', 'blocks.3', 'blocks.3.scale']")
    model = helper.make_model(helper.make_graph(nodes, "g", [], [], w))
    assert module_map(model) == {"/layer1/layer1.0/conv1/Conv": "layer1.0.conv1", "node_Conv_31": "layer1.0.conv2",
                                 "node_mul": "blocks.3.scale"}
    assert resolve_layer_names(["layer1"], model) == ["/layer1/layer1.0/conv1/Conv", "node_Conv_31"]


def test_the_rank_orders_scores_it_cannot_tell_apart_by_the_cosine_recovered():
    """ResNet's measured case (docs/debug.md): fc recovers little for nothing and leads; the stem and two convs score
    within each other's two standard errors per ms, so the one recovering most comes first among them; a layer far
    below stays last. Without standard errors (the recovery's untimed ranking) the order is by score alone."""
    from edgekit.debug.rank import ranked
    from edgekit.debug.report import KeepFp32

    keep = {"fc": KeepFp32(0.99919, recovered=3.3e-5, recovered_per_ms=2.8e-4, recovered_per_ms_se=0.3e-4),
            "conv1": KeepFp32(0.99922, recovered=6.7e-5, recovered_per_ms=6.5e-5, recovered_per_ms_se=1.2e-5),
            "conv0": KeepFp32(0.99924, recovered=8.5e-5, recovered_per_ms=6.3e-5, recovered_per_ms_se=1.1e-5),
            "stem": KeepFp32(0.99928, recovered=1.24e-4, recovered_per_ms=6.2e-5, recovered_per_ms_se=1.1e-5),
            "late": KeepFp32(0.99916, recovered=1e-6, recovered_per_ms=1e-6, recovered_per_ms_se=1e-7)}

    assert ranked(list(keep), keep.get, lambda n: n) == ["fc", "stem", "conv0", "conv1", "late"]
    for k in keep.values():
        k.recovered_per_ms_se = None
    assert ranked(list(keep), keep.get, lambda n: n) == ["fc", "conv1", "conv0", "stem", "late"]
