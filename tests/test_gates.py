"""Gates that know their resolution: the intervals (known values, coverage), accuracy gates on too few samples, the
speed gate (decided only where the model is big enough to time), the INT8 layer census on real ONNX files, and
real builds where a target quantized nothing or ran slower than FP32 and says so."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.backends.onnx.census import onnx_census
from edgekit.backends.onnx.session import session
from edgekit.cli import main
from edgekit.types import Gates, GateVerdict, LayerCensus
from edgekit.validate.gates import check
from edgekit.validate.stats import DropInterval, Paired, paired_difference, samples_to_decide, straddles, wilson

# ------------------------------------------------------------------------------------------ statistics


@pytest.mark.parametrize("k, n, low, high", [
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, method 3 (score, no CC)
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718),
])
def test_wilson_matches_newcombes_published_intervals(k, n, low, high):
    lo, hi = wilson(k, n)
    assert (round(lo, 4), round(hi, 4)) == (low, high)


def test_paired_interval_holds_its_95_percent_coverage():
    """Newcombe's method 10 on 2000 simulated paired tables of 40 samples: the true drop is inside ~95% of them."""
    rng = np.random.default_rng(0)
    probs = np.array([0.80, 0.09, 0.03, 0.08])  # both right, only the reference, only the candidate, neither
    true_drop = probs[1] - probs[2]
    tables = rng.multinomial(40, probs, size=2000)
    covered = sum(lo <= true_drop <= hi for lo, hi in (paired_difference(Paired(*map(int, t))) for t in tables))
    assert 0.93 <= covered / len(tables) <= 0.99


def test_paired_interval_is_symmetric_without_discordant_pairs_and_contains_the_estimate():
    lo, hi = paired_difference(Paired(30, 0, 0, 2))
    assert lo == pytest.approx(-hi) and hi > 0
    t = Paired(40, 7, 1, 2)
    lo, hi = paired_difference(t)
    assert lo < t.drop < hi and lo > 0  # 7 against 1 discordant pairs on 50 samples: a real drop


def test_samples_to_decide_is_where_the_interval_leaves_the_bound():
    one_flip = DropInterval(Paired(30, 1, 0, 1))  # 32 samples, one prediction flipped: 3.1 points
    assert straddles(one_flip(32), 1.0)
    needed = samples_to_decide(one_flip, 32, 1.0)
    assert needed is not None and 100 < needed < 1000
    assert not straddles(one_flip(needed), 1.0) and straddles(one_flip(int(needed * 0.9)), 1.0)


# ----------------------------------------------------------------------------------------- verdicts


def test_one_flip_in_32_samples_is_not_decided_and_says_what_would_decide_it():
    (v,) = check("t", Gates(max_top1_drop=1.0), {"top1_drop": 3.125, "paired": (30, 1, 0, 1)})
    assert v.passed is None and v.resolution == "too few samples: one sample = 3.1 points, bound 1 points"
    assert v.interval is not None and v.interval[0] < 1.0 < v.interval[1]
    assert re.search(r"32 samples cannot resolve 1 points .*95% CI \[-\d+\.\d, \d+\.\d\]; ~[\d,]+ samples needed", v.message)
    assert v.to_dict()["interval"] == list(v.interval) and GateVerdict.from_dict(v.to_dict()) == v


def test_a_drop_too_large_for_noise_fails_even_on_32_samples():
    (v,) = check("t", Gates(max_top1_drop=1.0), {"top1_drop": 31.25, "paired": (20, 10, 0, 2)})
    assert v.passed is False and v.resolution is not None and v.interval[0] > 1.0
    assert "lies on one side" in v.message


def test_enough_samples_decide_on_the_point_estimate_with_the_interval_recorded():
    (v,) = check("t", Gates(max_top1_drop=1.0), {"top1_drop": 100 / 450, "paired": (440, 1, 0, 9)})
    assert v.passed is True and v.resolution is None and v.interval is not None
    assert "resolution" not in v.to_dict()
    (bare,) = check("t", Gates(min_cosine=0.99), {"cosine": 0.995})
    assert set(bare.to_dict()) == {"gate", "bound", "value", "passed", "message"}  # old manifests' shape


def test_min_top1_agreement_knows_its_resolution_too():
    (v,) = check("t", Gates(min_top1_agreement=0.99), {"top1_agreement": 31 / 32, "agreement_counts": (31, 32)})
    assert v.passed is None and "32 samples cannot resolve" in v.message


def test_speed_gate_is_decided_only_where_the_model_can_be_timed():
    (slow,) = check("ort-int8-dynamic", Gates(min_speedup=1.0), {"speedup": 0.03, "speed_undecided": ""})
    assert slow.passed is False and slow.message == "ort-int8-dynamic: speedup 0.03x fails min_speedup (>= 1x)"
    (tiny,) = check("t", Gates(min_speedup=1.0), {"speedup": 0.3, "speed_undecided": "model too small to time: ..."})
    assert tiny.passed is None and tiny.resolution == "model too small to time: ..." and "not decided" in tiny.message
    (none,) = check("t", Gates(min_speedup=1.0), {})
    assert none.passed is None and "speedup was not measured" in none.message


def test_quantized_nothing_fails_min_int8_fraction_naming_the_counts():
    census = LayerCensus(0, 96, ("layer.0",))
    (v,) = check("torch-fbgemm", Gates(min_int8_fraction=0.5), {"int8_fraction": census.fraction, "int8_layers": census})
    assert v.passed is False and v.message.startswith("torch-fbgemm: 0 of 96 compute layers INT8 (0%) fails")
    assert LayerCensus.from_dict(census.to_dict()) == census


# ----------------------------------------------------------------------------------- ONNX census


def _cnn(path: Path) -> None:
    """Conv -> Relu -> Flatten -> MatMul(W) -> MatMul(itself, transposed): two layers with weights, one product of
    activations (not a layer)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.2, "w")
    fc = numpy_helper.from_array(rng.standard_normal((8 * 8 * 8, 16)).astype(np.float32) * 0.05, "fc")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["h"], name="fc"),
        helper.make_node("Transpose", ["h"], ["ht"], perm=[1, 0]),
        helper.make_node("MatMul", ["h", "ht"], ["y"], name="gram"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])], [w, fc])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _without_qdq(src: Path, dst: Path) -> None:
    """The QDQ model with every QuantizeLinear/DequantizeLinear pair removed: what a quantizer that gave up leaves."""
    model = onnx.load(str(src))
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    inits = {t.name: t for t in graph.initializer}
    source: dict[str, str] = {}
    for n in graph.node:
        if n.op_type == "DequantizeLinear":
            q = producer.get(n.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                source[n.output[0]] = q.input[0]
            elif n.input[0] in inits:  # a quantized weight: back to float
                scale = numpy_helper.to_array(inits[n.input[1]])
                zero = numpy_helper.to_array(inits[n.input[2]]) if len(n.input) > 2 else 0
                q8 = numpy_helper.to_array(inits[n.input[0]]).astype(np.float32)
                axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
                shape = [1] * q8.ndim
                if np.ndim(scale):
                    shape[axis] = -1
                value = (q8 - np.reshape(zero, shape)) * np.reshape(scale, shape) if np.ndim(scale) else (q8 - zero) * scale
                graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), n.output[0] + "_f"))
                source[n.output[0]] = n.output[0] + "_f"
    keep = [n for n in graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]
    for n in keep:
        for i, name in enumerate(n.input):
            n.input[i] = source.get(name, name)
    keep += [helper.make_node("Identity", [source[o.name]], [o.name]) for o in graph.output if o.name in source]
    del graph.node[:]
    graph.node.extend(keep)
    onnx.save(model, str(dst))


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> dict[str, Path]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

    root = tmp_path_factory.mktemp("census")
    paths = {k: root / f"{k}.onnx" for k in ("fp32", "static", "dynamic", "stripped")}
    _cnn(paths["fp32"])
    rng = np.random.default_rng(1)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(paths["fp32"]), str(paths["static"]), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    quantize_dynamic(str(paths["fp32"]), str(paths["dynamic"]), weight_type=QuantType.QInt8)
    _without_qdq(paths["static"], paths["stripped"])
    return paths


def test_census_counts_layers_with_weights_only(quantized):
    census = onnx_census(quantized["fp32"])
    assert (census.int8, census.total, census.fp32) == (0, 2, ("conv", "fc"))  # the activation product is no layer


def test_census_counts_qdq_wrapped_and_integer_layers(quantized):
    static, dynamic = onnx_census(quantized["static"]), onnx_census(quantized["dynamic"])
    assert (static.int8, static.total) == (2, 2)
    ops = {n.op_type for n in onnx.load(str(quantized["dynamic"])).graph.node}
    assert {"ConvInteger", "MatMulInteger"} <= ops and (dynamic.int8, dynamic.total) == (2, 2)


def test_a_graph_with_its_qdq_removed_runs_fp32_and_fails_the_int8_gate(quantized):
    x = {"x": np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    stripped = session(str(quantized["stripped"]), 1).run(None, x)[0]
    qdq = session(str(quantized["static"]), 1).run(None, x)[0]
    fp32 = session(str(quantized["fp32"]), 1).run(None, x)[0]
    # FP32 arithmetic on the quantized weights: near FP32, and unlike the QDQ graph no activation is rounded
    assert np.allclose(stripped, fp32, rtol=0.05) and not np.array_equal(stripped, qdq)
    census = onnx_census(quantized["stripped"])
    assert (census.int8, census.total) == (0, 2)
    (v,) = check("ort-int8", Gates(min_int8_fraction=0.5), {"int8_fraction": census.fraction, "int8_layers": census})
    assert v.passed is False and "0 of 2 compute layers INT8 (0%) fails min_int8_fraction" in v.message


# ----------------------------------------------------------------------------------------- builds

UNTRACEABLE_MLP = '''
import torch
from torch import nn


class Body(nn.Module):
    """Three Linear layers behind a loop over a shape, which torch.fx cannot trace: torch.ao leaves it all float."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(32, 64), nn.Linear(64, 64), nn.Linear(64, 10)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        for _ in range(int(h.shape[-1] // 64)):
            h = torch.relu(self.fc2(h))
        return self.fc3(h)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = Body()

    def forward(self, x):
        return self.body(x)


def build():
    torch.manual_seed(0)
    return Net().eval()
'''

MLP_CONFIG = """
[model]
source = "mlp.py:build"
inputs = [ { name = "x", shape = [1, 32], dynamic = { 0 = "batch" } } ]
outputs = ["logits"]
task = "classification"

[calibration]
data = "calib.npz"

[validation]
data = "val.npz"
labels = "y"

[targets]
use = ["ort-int8-dynamic", "torch-fbgemm"]

[targets.ort-int8-dynamic.runtime]
warmup = 2
runs = 10

[targets.torch-fbgemm.runtime]
warmup = 2
runs = 10
"""


@pytest.mark.slow
def test_torch_target_that_quantized_nothing_fails_and_names_the_peer_that_passed(tmp_path):
    """As a user meets it: torch.ao cannot trace the model, so torch-fbgemm ships FP32; the build says "0 of 3
    compute layers INT8" and points at ort-int8-dynamic, which passed on the same CPU. 64 labelled samples cannot
    resolve the 1-point accuracy bound: not decided, with the interval."""
    (tmp_path / "mlp.py").write_text(UNTRACEABLE_MLP)
    (tmp_path / "cfg.toml").write_text(MLP_CONFIG)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 32)).astype(np.float32)
    y = rng.integers(0, 10, 96)
    np.savez(tmp_path / "calib.npz", x=x[:32])
    np.savez(tmp_path / "val.npz", x=x[32:], y=y[32:])
    assert main(["-q", "build", str(tmp_path / "cfg.toml"), "-o", str(tmp_path / "out")]) == 1
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    fbgemm, dynamic = manifest["targets"]["torch-fbgemm"], manifest["targets"]["ort-int8-dynamic"]
    assert fbgemm["notes"]["int8_layers"]["int8"] == 0 and fbgemm["notes"]["int8_layers"]["total"] == 3
    assert fbgemm["status"] == "failed"
    assert fbgemm["reason"].startswith("torch-fbgemm: 0 of 3 compute layers INT8 (0%) fails min_int8_fraction (>= 0.5)")
    assert re.search(r"; ort-int8-dynamic passed at int8_fraction 1, [\d.]+x$", fbgemm["reason"])
    assert dynamic["status"] == "passed" and dynamic["notes"]["int8_layers"]["int8"] == 3
    drop = next(g for g in dynamic["gates"] if g["gate"] == "max_top1_drop")
    assert drop["resolution"] == "too few samples: one sample = 1.6 points, bound 1 points" and len(drop["interval"]) == 2
    speed = next(g for g in dynamic["gates"] if g["gate"] == "min_speedup")
    assert speed["passed"] is None and speed["resolution"].startswith("model too small to time: onnx-fp32 runs in")
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Gates the data cannot decide" in report and "gate not decided: ort-int8-dynamic: top1_drop" in report


def _wide_cnn(path: Path) -> None:
    """Two 64-channel 3x3 convolutions on a 64x64 image (~160 MFLOP: milliseconds in FP32 on any CPU), then a
    global pool and a classifier."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name) for name, shape, scale in
             (("w1", (64, 3, 3, 3), 0.2), ("w2", (64, 64, 3, 3), 0.05), ("fc", (64, 10), 0.1))]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["logits"]),
    ]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


CNN_CONFIG = """
[model]
source = "cnn.onnx"

[validation]
data = "val.npz"

[targets]
use = ["ort-fp32", "ort-int8-dynamic"]

[targets.ort-fp32.runtime]
warmup = 2
runs = 20

[targets.ort-int8-dynamic.runtime]
warmup = 2
runs = 20

[targets.ort-int8-dynamic.recover]
enabled = false  # the verdict on the artifact as built (recovery would keep a conv FP32 to gain speed)
"""


@pytest.mark.slow
def test_dynamic_int8_on_a_cnn_big_enough_to_time_gets_a_decided_speed_verdict(tmp_path):
    """ONNX Runtime's ConvInteger makes dynamic INT8 CNNs many times slower than FP32; on a model that takes
    milliseconds the speed gate is decided (no longer a silent pass). Which way it goes is the measurement's, so the
    test checks the verdict follows the measured speed-up, not the speed itself."""
    from edgekit.config import load_config
    from edgekit.pipeline import BuildOptions, build
    from edgekit.validate.measure import ReferenceTiming

    _wide_cnn(tmp_path / "cnn.onnx")
    (tmp_path / "cfg.toml").write_text(CNN_CONFIG)
    np.savez(tmp_path / "val.npz", x=np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32))
    manifest = build(load_config(tmp_path / "cfg.toml"), BuildOptions(tmp_path / "out", reference_timing=ReferenceTiming(2, 20)))
    fp32, target = manifest.results["ort-fp32"], manifest.results["ort-int8-dynamic"]
    assert target.artifact is not None and target.artifact.layers.int8 == 3  # the convolutions run as ConvInteger
    fastest = fp32.latency.stats.min_ms
    assert fastest >= 1.0, f"the test model must take over 1 ms in FP32 to be timeable; it took {fastest:.3f} ms"
    speed = next(g for g in target.gates if g.gate == "min_speedup")
    assert speed.passed is (speed.value >= 1.0) and speed.resolution is None
    assert (target.status == "failed") is (speed.passed is False)
    assert manifest.exit_code == (1 if speed.passed is False else 0)
    print(f"ort-int8-dynamic on the 64-channel CNN: {speed.message}")


def test_a_model_without_compute_layers_is_not_checked_for_int8_fraction():
    (v,) = check("t", Gates(min_int8_fraction=0.5), {"int8_fraction": None, "int8_layers": LayerCensus(0, 0)})
    assert v.passed is None and "no Conv, MatMul, Gemm or RNN layer" in v.message
    (old,) = check("t", Gates(min_int8_fraction=0.5), {})  # a manifest written before the census
    assert old.passed is None and "does not count its INT8 layers" in old.message
