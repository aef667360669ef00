"""The recovery search's own logic (edgekit/recover/search.py, candidates.py), on small real graphs: which kind of
model it is (the step order follows it), the FP32-prefix bisection, and statistics collected once per graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.recover.search import _OutOfBudget, model_kind, smallest_passing


def _save(nodes, inits, path: Path, x=("x", [1, 4, 8, 8])) -> Path:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(x[0], TensorProto.FLOAT, x[1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _conv_chain(path: Path, depthwise: bool, rng: np.random.Generator, relu6: bool = False) -> Path:
    """Conv -> ReLU -> Conv (depthwise or not) -> ReLU -> Conv; ``relu6``: Clip(0, 6), which equalization leaves alone."""
    inits = {"w1": rng.standard_normal((8, 4, 3, 3)) * 0.3, "b1": rng.standard_normal(8) * 0.1,
             "w2": rng.standard_normal((8, 1, 3, 3) if depthwise else (8, 8, 3, 3)) * 0.3,
             "w3": rng.standard_normal((4, 8, 1, 1)) * 0.3, "lo": np.float32(0), "hi": np.float32(6)}

    def act(x: str, y: str, name: str):
        return helper.make_node("Clip", [x, "lo", "hi"], [y], name=name) if relu6 else helper.make_node("Relu", [x], [y], name=name)

    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="c1", pads=[1, 1, 1, 1]), act("a", "r", "act1"),
             helper.make_node("Conv", ["r", "w2"], ["d"], name="c2", pads=[1, 1, 1, 1], group=8 if depthwise else 1),
             act("d", "e", "act2"),
             helper.make_node("Conv", ["e", "w3"], ["y"], name="c3")]
    return _save(nodes, inits, path)


def test_model_kind_orders_the_search_by_what_works_for_it(tmp_path):
    rng = np.random.default_rng(0)
    assert model_kind(_conv_chain(tmp_path / "dw.onnx", True, rng)) == "depthwise"
    assert model_kind(_conv_chain(tmp_path / "cnn.onnx", False, rng)) == "cnn"
    # a ViT-like graph: a conv patch embedding, then MatMuls: not a CNN
    inits = {"wp": rng.standard_normal((8, 4, 4, 4)), "m1": rng.standard_normal((4, 4)), "m2": rng.standard_normal((4, 4)),
             "s": np.array([1, 8, 4], np.float32)}
    nodes = [helper.make_node("Conv", ["x", "wp"], ["p"], name="patch", strides=[4, 4]),
             helper.make_node("Reshape", ["p", "s_i"], ["t"], name="flat"),
             helper.make_node("MatMul", ["t", "m1"], ["h"], name="mm1"), helper.make_node("MatMul", ["h", "m2"], ["y"], name="mm2")]
    path = _save(nodes, inits, tmp_path / "vit.onnx")
    model = onnx.load(str(path))
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, 8, 4], np.int64), "s_i"))
    onnx.save(model, str(path))
    assert model_kind(path) == "other"


@pytest.mark.parametrize("threshold", [1, 2, 3, 11, 16, 17, 40])
def test_the_prefix_search_finds_the_smallest_passing_size_in_few_attempts(threshold):
    tried: list[int] = []

    def passes(k: int) -> bool:
        tried.append(k)
        return k >= threshold

    sizes = [2, 4, 8, 16, 32]
    found = smallest_passing(sizes, passes)
    assert found == (max(threshold, 1) if threshold <= 32 else None)
    assert len(tried) == len(set(tried))  # never the same size twice
    assert len(tried) <= 5 + 4  # doubling, then a bisection of at most log2(16) steps


def test_the_prefix_search_keeps_the_smallest_passing_size_when_the_budget_runs_out():
    def passes(k: int) -> bool:
        if k not in (2, 4, 8, 16):
            raise _OutOfBudget
        return k >= 16

    assert smallest_passing([2, 4, 8, 16], passes) == 16


def test_candidates_differing_in_fp32_nodes_or_bias_correction_collect_statistics_once(tmp_path):
    """Without the build's statistics cache, the builder keeps its own: every candidate of one graph and method,
    and the bias-corrected graph (which differs from its base only in biases), reuses one statistics pass."""
    from conftest import calibration_feed

    from edgekit.backends.base import CalibrationSettings
    from edgekit.backends.onnx import qdq_ranges
    from edgekit.backends.onnx.qdq import QdqSettings
    from edgekit.recover.candidates import Spec, StaticQdq
    from edgekit.types import TensorSpec

    rng = np.random.default_rng(1)
    src = _conv_chain(tmp_path / "src.onnx", False, rng, relu6=True)  # no equalization: correction's base is this graph
    specs = (TensorSpec("x", (1, 4, 8, 8)),)
    x = rng.standard_normal((16, 4, 8, 8)).astype(np.float32)
    feed = calibration_feed(tmp_path / "c.npz", specs, x=x)
    (tmp_path / "work").mkdir()
    builder = StaticQdq(src, feed, specs, CalibrationSettings(method="mse", samples=16), QdqSettings(), tmp_path / "work")
    before = qdq_ranges.PASSES["activation_stats"]
    assert builder.fresh(Spec("mse"))
    builder.build(Spec("mse"), tmp_path / "a.onnx")
    assert not builder.fresh(Spec("mse", exclude=("c2",))) and not builder.fresh(Spec("mse", "corrected"))
    builder.build(Spec("mse", exclude=("c2",)), tmp_path / "b.onnx")
    assert builder.graph("equalized", "mse") is None and builder.graph("corrected", "mse") is not None
    builder.build(Spec("mse", "corrected"), tmp_path / "c.onnx")
    assert qdq_ranges.PASSES["activation_stats"] - before == 1
    assert builder.fresh(Spec("minmax"))
    # the candidates are real QDQ models that run; the excluded node reads FP32 weights
    for name in ("a", "b", "c"):
        out = ort.InferenceSession(str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x[:1]})[0]
        assert out.shape == (1, 4, 8, 8) and np.isfinite(out).all()
    b = onnx.load(str(tmp_path / "b.onnx"))
    c2 = next(n for n in b.graph.node if n.name == "c2")
    assert c2.input[1] == "w2"


def test_role_groups_put_one_layer_of_every_block_together(tmp_path):
    """The roles step's groups, read from a real dynamo export: the same Linear of each block is one role; a layer
    that occurs once (the head) is no role; the Linears that read one tensor in every block (fc1 and gate, as a
    transformer's query, key and value) are also one group."""
    import onnx
    import torch
    from torch import nn

    from edgekit.recover.rank import role_groups

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.gate, self.fc2 = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 8)

        def forward(self, x):
            return x + self.fc2(torch.relu(self.fc1(x)) * torch.sigmoid(self.gate(x)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(Block() for _ in range(3))
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return self.head(x)

    path = tmp_path / "net.onnx"
    torch.onnx.export(Net().eval(), (torch.randn(1, 8),), str(path), dynamo=True, external_data=False)
    model = onnx.load(str(path))
    for node in model.graph.node:  # as the simplified reference the recovery reads: onnxsim drops node metadata
        del node.metadata_props[:]
    onnx.save(model, str(path))
    layers = {n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul")}
    assert len(layers) == 10

    groups = role_groups(path, layers)

    assert sorted(groups) == ["blocks.#.fc1", "blocks.#.fc1+gate", "blocks.#.fc2", "blocks.#.gate"]
    assert set(groups["blocks.#.fc1+gate"]) == set(groups["blocks.#.fc1"]) | set(groups["blocks.#.gate"])
    assert all(len(nodes) == (6 if "+" in role else 3) and set(nodes) <= layers for role, nodes in groups.items())
    assert not set(groups["blocks.#.fc1"]) & set(groups["blocks.#.fc2"])


def test_smoothing_by_role_gives_one_role_its_own_alpha_and_stays_exact(tmp_path):
    """The smoothing step's roles, read from a real dynamo export of a stack of pre-norm blocks: the inputs fc1 and
    gate read together form one role, fc2's another; a graph with its own alpha for fc2's inputs differs from the
    one-alpha graph only in those inputs' smoothing scales, and both compute what the export does."""
    import torch
    from torch import nn

    from conftest import calibration_feed
    from edgekit.backends.base import CalibrationSettings
    from edgekit.backends.onnx.qdq import QdqSettings
    from edgekit.recover.candidates import StaticQdq, smoothed_graph, smoothing_of
    from edgekit.types import TensorSpec

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(8)
            self.fc1, self.gate, self.fc2 = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 8)

        def forward(self, x):
            h = self.norm(x)
            return x + self.fc2(torch.relu(self.fc1(h)) * torch.sigmoid(self.gate(h)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(Block() for _ in range(3))

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return x

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        for b in net.blocks:
            b.norm.weight[2] = 30.0  # an outlier hidden dimension, as BERT's
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (torch.randn(4, 8),), str(path), dynamo=True, external_data=False,
                      dynamic_shapes=({0: torch.export.Dim("n")},))
    model = onnx.load(str(path))
    for node in model.graph.node:  # as the simplified reference the recovery reads: onnxsim drops node metadata
        del node.metadata_props[:]
    onnx.save(model, str(path))
    specs = (TensorSpec("x", ("n", 8)),)
    x = np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32)
    (tmp_path / "work").mkdir()
    builder = StaticQdq(path, calibration_feed(tmp_path / "c.npz", specs, x=x), specs, CalibrationSettings(method="mse", samples=32),
                        QdqSettings(), tmp_path / "work")

    roles = builder.smoothing_roles()

    assert sorted(roles) == ["blocks.#.fc1+gate", "blocks.#.fc2"] and all(len(t) == 3 for t in roles.values())
    name = smoothed_graph(0.95, {"blocks.#.fc2": 0.5})
    assert smoothing_of(name) == (0.95, {"blocks.#.fc2": 0.5})
    scales = {}
    for graph in ("smoothed-0.95", name):
        model = onnx.load(str(builder.graph(graph, "mse")))
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        scales[graph] = {m.input[0]: inits[m.input[1]] for m in model.graph.node if m.name.endswith("_smooth")}
        got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, net(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-4)
    assert set(scales[name]) == set(scales["smoothed-0.95"]) == set(roles["blocks.#.fc1+gate"]) | set(roles["blocks.#.fc2"])
    for tensor, scale in scales[name].items():
        same = np.allclose(scale, scales["smoothed-0.95"][tensor])
        assert same == (tensor in roles["blocks.#.fc1+gate"]), tensor


def test_block_roles_keep_a_layers_place_inside_a_sequential(tmp_path):
    """A block's MLP as an nn.Sequential: its two Linears are two roles (the last index is their place in the
    Sequential), each met in every block; the block index becomes '#'."""
    import torch
    from torch import nn

    from edgekit.recover.rank import block_roles

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(nn.ModuleDict({"mlp": nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))})
                                        for _ in range(2))

        def forward(self, x):
            for b in self.blocks:
                x = x + b["mlp"](x)
            return x

    path = tmp_path / "net.onnx"
    torch.onnx.export(Net().eval(), (torch.randn(1, 8),), str(path), dynamo=True, external_data=False)
    model = onnx.load(str(path))
    for node in model.graph.node:  # as the simplified reference the recovery reads: onnxsim drops node metadata
        del node.metadata_props[:]
    linears = {n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul")}

    roles = block_roles(model, linears)

    assert sorted(roles.values()) == ["blocks.#.mlp.0", "blocks.#.mlp.0", "blocks.#.mlp.2", "blocks.#.mlp.2"], roles


def test_a_speed_up_near_a_speed_gate_is_a_close_call_timed_again():
    """40 interleaved calls put one MobileNetV2-shaped candidate at 1.41x and at 1.25x in two builds against a 1.3x
    gate: within CLOSE_CALL of a speed gate's bound the meter times the candidate again, RECHECK_RUNS calls."""
    from types import SimpleNamespace

    from edgekit.recover.meter import CLOSE_CALL, RECHECK_RUNS, RUNS, Meter
    from edgekit.types import Gates, LatencyStats

    def stats(p50: float) -> LatencyStats:
        return LatencyStats(p50, p50, p50, p50, 0.0, p50, RUNS)

    def close(gates: Gates, base_ms: float, cand_ms: float) -> bool:
        meter = SimpleNamespace(profile=SimpleNamespace(gates=gates))
        return Meter._close_call(meter, {"baseline": stats(base_ms), "candidate": stats(cand_ms)})

    assert RECHECK_RUNS > 3 * RUNS
    gate = Gates(min_speedup=1.3)
    assert close(gate, 5.0, 5.0 / 1.25) and close(gate, 5.0, 5.0 / 1.41)  # the two runs above: both rechecked
    assert not close(gate, 5.0, 5.0 / (1.3 * (1 + CLOSE_CALL) + 0.01))  # clear of the bound: one timing decides
    assert not close(gate, 5.0, 5.0 / 1.0)
    assert close(Gates(max_p50_ms=4.0), 5.0, 4.2) and not close(Gates(max_p50_ms=4.0), 5.0, 2.0)
    assert not close(Gates(), 5.0, 4.0)  # no speed gate: nothing to decide
    assert not Meter._close_call(SimpleNamespace(profile=SimpleNamespace(gates=gate)),
                                 {"baseline": stats(5.0), "candidate": "RuntimeError: refused"})
