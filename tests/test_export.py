"""Export + simplify: onnxsim's result is kept only when it is numerically verified; otherwise the reason is recorded."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgekit.config import ExportConfig
from edgekit.export import make_reference, simplify
from edgekit.types import SourceModel, TensorSpec

SPEC = (TensorSpec("x", ("batch", 6), "float32"),)


def _source() -> SourceModel:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)).eval()
    return SourceModel("test", SPEC, ("y",), None, net)


@pytest.fixture()
def exported(tmp_path):
    return make_reference(_source(), {"x": (2, 6)}, ExportConfig(simplify=False), tmp_path / "ref.onnx")


def test_reference_matches_torch_and_carries_names(exported):
    import onnxruntime as ort

    model = onnx.load(str(exported.path))
    assert [i.name for i in model.graph.input] == ["x"] and [o.name for o in model.graph.output] == ["y"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch axis stayed dynamic
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    (y,) = ort.InferenceSession(str(exported.path)).run(None, {"x": x})
    np.testing.assert_allclose(y, _source().module(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_simplify_is_verified_and_kept(exported):
    model = onnx.load(str(exported.path))
    kept, ok, note = simplify(model, SPEC, {"x": (2, 6)})
    assert ok and "verified" in note and kept is not model


def test_simplify_that_changes_outputs_is_refused(exported, monkeypatch):
    import onnxsim

    def corrupting(model, *args, **kwargs):  # stands in for an onnxsim bug: a plausible graph with wrong numbers
        bad = onnx.ModelProto()
        bad.CopyFrom(model)
        w = bad.graph.initializer[0]
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 1.5, w.name))
        return bad, True

    monkeypatch.setattr(onnxsim, "simplify", corrupting)
    model = onnx.load(str(exported.path))
    kept, ok, note = simplify(model, SPEC, {"x": (2, 6)})
    assert not ok and kept is model
    assert "onnxsim changed outputs" in note and "kept the unsimplified graph" in note


def test_simplify_that_raises_keeps_the_original(exported, monkeypatch):
    import onnxsim

    def failing(model, *args, **kwargs):
        raise RuntimeError("Incomplete symbolic shape inference")

    monkeypatch.setattr(onnxsim, "simplify", failing)
    model = onnx.load(str(exported.path))
    kept, ok, note = simplify(model, SPEC, {"x": (2, 6)})
    assert not ok and kept is model and "onnxsim failed (RuntimeError: Incomplete symbolic" in note


class _Embedder(torch.nn.Module):
    """A submodule called ``embedding``: the dynamo exporter names a value after it."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(10, 4)
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, ids):
        return self.lin(self.embedding(ids)).mean(1)


def test_declared_output_name_that_clashes_with_an_exported_value(tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    net = _Embedder().eval()
    spec = (TensorSpec("ids", ("batch", 5), "int64"),)
    source = SourceModel("test", spec, ("embedding",), None, net)
    ref = make_reference(source, {"ids": (1, 5)}, ExportConfig(), tmp_path / "ref.onnx")
    model = onnx.load(str(ref.path))
    onnx.checker.check_model(model)
    assert [o.name for o in model.graph.output] == ["embedding"] and ref.outputs == ("embedding",)
    ids = np.array([[1, 2, 3, 4, 5], [0, 9, 8, 7, 6]], dtype=np.int64)
    (y,) = ort.InferenceSession(str(ref.path)).run(["embedding"], {"ids": ids})
    np.testing.assert_allclose(y, net(torch.from_numpy(ids)).detach().numpy(), rtol=1e-5, atol=1e-6)
