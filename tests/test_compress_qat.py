"""QAT arithmetic and result: int8 fake quantization as ONNX Runtime rounds, a float model that exports and quantizes."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edgekit.backends.base import CalibrationSettings
from edgekit.backends.onnx.qdq import QdqSettings, quantize_static_qdq
from edgekit.compress import QATSettings, qat
from edgekit.compress.qat import FakeQuant
from edgekit.config import DataConfig
from edgekit.data import open_feed
from edgekit.errors import ConfigError
from edgekit.types import TensorSpec

SPECS = (TensorSpec("x", ("batch", 2, 8, 8)),)


class Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 6)

    def forward(self, x):
        h = torch.nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(h.flatten(1))


def test_fake_quant_rounds_inputs_to_uint8_and_weights_to_int8_per_channel():
    torch.manual_seed(0)
    layer = nn.Linear(5, 3)
    fq = FakeQuant(layer).eval()
    x = torch.randn(4, 5) * 2.0
    y = fq(x)  # first call observes x's range, then quantizes with it

    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = np.float32((hi - lo) / 255.0)
    zero = np.clip(np.round(-lo / scale), 0, 255)
    xq = (np.clip(np.round(x.numpy() / scale) + zero, 0, 255) - zero) * scale
    w = layer.weight.detach().numpy()
    w_scale = (np.abs(w).max(1, keepdims=True) / 127.0).astype(np.float32)
    wq = np.clip(np.round(w / w_scale), -127, 127) * w_scale
    expected = xq @ wq.T + layer.bias.detach().numpy()
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-5, atol=1e-5)
    assert len(np.unique(np.round((xq / scale).ravel()))) <= 256
    assert not np.allclose(expected, layer(x).detach().numpy(), atol=1e-4), "rounding is really applied"


@pytest.fixture()
def trained(tmp_path):
    torch.manual_seed(0)
    teacher = Cnn()
    with torch.no_grad():
        teacher.bn.running_mean.uniform_(-0.2, 0.2)
        teacher.bn.running_var.uniform_(0.5, 1.5)
    teacher.eval()
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", x=rng.standard_normal((96, 2, 8, 8)).astype(np.float32))
    train = open_feed(DataConfig(str(tmp_path / "train.npz")), SPECS, "train")
    epochs = []
    model, report = qat(teacher, QATSettings(epochs=3, lr=3e-5, batch_size=16), train, ("x",), teacher=teacher,
                        on_epoch=lambda e, n, loss: epochs.append((e, n)))
    return teacher, model, report, train, epochs


def test_qat_returns_a_plain_float_model_with_lower_int8_error(trained):
    teacher, model, report, _, epochs = trained
    assert epochs == [(1, 3), (2, 3), (3, 3)]
    assert not any(isinstance(m, FakeQuant) for m in model.modules())
    assert [type(m) for m in model.children()] == [nn.Conv2d, nn.BatchNorm2d, nn.Linear]
    assert report["layers"] == 2 and report["loss"] == "mse to teacher"
    assert report["int8_rel_error_after"] < 0.95 * report["int8_rel_error_before"]
    assert report["kept_epoch"] >= 1 and report["int8_rel_error_after"] == min(report["epoch_int8_rel_error"])
    assert not torch.equal(model.conv.weight, teacher.conv.weight), "weights were tuned"
    assert torch.equal(model.bn.running_var, teacher.bn.running_var), "BatchNorm statistics stay frozen"
    x = torch.randn(4, 2, 8, 8)
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(model(x), teacher(x)).min()
    assert cos > 0.99, "fine-tuning under fake quantization keeps the float model close to the teacher"


def test_qat_model_exports_to_onnx_and_quantizes_through_the_ort_int8_path(trained, tmp_path):
    _, model, _, train, _ = trained
    x = torch.randn(3, 2, 8, 8)
    fp32 = tmp_path / "fp32.onnx"
    torch.onnx.export(model, (x,), str(fp32), dynamo=True, input_names=["x"], output_names=["y"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False)
    (y_onnx,) = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    with torch.no_grad():
        y_torch = model(x).numpy()
    np.testing.assert_allclose(y_onnx, y_torch, rtol=1e-4, atol=1e-5)

    int8 = tmp_path / "int8.onnx"
    notes = quantize_static_qdq(fp32, int8, train, SPECS, CalibrationSettings(samples=64), QdqSettings())
    assert notes["calibration"]["samples"] == 64
    (y_int8,) = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    cos = np.sum(y_int8 * y_torch, 1) / np.linalg.norm(y_int8, axis=1) / np.linalg.norm(y_torch, axis=1)
    assert y_int8.shape == (3, 6) and cos.min() > 0.99


def test_qat_keeps_the_input_weights_when_tuning_only_makes_int8_worse(trained):
    teacher, _, _, train, _ = trained
    # Adam at a high rate takes full-size steps on near-zero gradients: the weights hop across int8 grid points
    model, report = qat(teacher, QATSettings(epochs=2, lr=1e-2), train, ("x",), teacher=teacher)
    assert min(report["epoch_int8_rel_error"]) > report["int8_rel_error_before"]
    assert report["kept_epoch"] == 0 and report["int8_rel_error_after"] == report["int8_rel_error_before"]
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in model.state_dict().items())


def test_qat_without_teacher_needs_labels(tmp_path):
    np.savez(tmp_path / "t.npz", x=np.zeros((4, 2, 8, 8), np.float32))
    train = open_feed(DataConfig(str(tmp_path / "t.npz")), SPECS, "train")
    with pytest.raises(ConfigError, match="teacher model or integer class labels"):
        qat(Cnn(), QATSettings(), train, ("x",))
