"""Low-rank factorisation: the Eckart–Young error, rank selection, and layers left alone when nothing is saved."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.compress import LowRankSettings, low_rank
from edgekit.errors import ConfigError


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 48)
        self.head = nn.Linear(48, 8)

    def forward(self, x):
        x = torch.relu(self.conv(x)).flatten(1)
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _composed(seq: nn.Sequential) -> torch.Tensor:
    """The (out, in·k·k) weight the two factors compute together."""
    first, second = seq[0].weight.detach(), seq[1].weight.detach()
    return second.flatten(1) @ first.flatten(1)


def _singular_values(w: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(w.detach().flatten(1).double())


def test_linear_factorisation_error_is_the_discarded_singular_values():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48))
    new, report = low_rank(model, LowRankSettings(rank_ratio=0.25))
    seq = new[0]
    r = math.ceil(0.25 * 48)
    assert isinstance(seq, nn.Sequential) and seq[0].out_features == r and seq[0].bias is None
    assert (seq[0].in_features, seq[1].in_features, seq[1].out_features) == (64, r, 48)
    s = _singular_values(model[0].weight)
    err = torch.linalg.matrix_norm(model[0].weight.detach().double() - _composed(seq).double())
    assert float(err) == pytest.approx(float(s[r:].square().sum().sqrt()), rel=1e-4)
    assert report["max_weight_rel_error"] == pytest.approx(float(s[r:].square().sum().sqrt() / s.square().sum().sqrt()), rel=1e-4)
    x = torch.randn(5, 64)
    with torch.no_grad():
        torch.testing.assert_close(new(x), x @ _composed(seq).T + model[0].bias, rtol=1e-4, atol=1e-5)
    assert isinstance(model[0], nn.Linear)  # the input model is untouched


def test_conv_factorisation_keeps_stride_padding_and_the_svd_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1))
    new, _ = low_rank(model, LowRankSettings(rank_ratio=0.25, layer_types=("Conv2d",)))
    first, second = new[0]
    r = math.ceil(0.25 * min(32, 16 * 9))
    assert (first.out_channels, first.kernel_size, first.stride, first.padding, first.bias) == (r, (3, 3), (2, 2), (1, 1), None)
    assert (second.in_channels, second.out_channels, second.kernel_size) == (r, 32, (1, 1))
    w = model[0].weight.detach()
    s = _singular_values(w)
    err = torch.linalg.matrix_norm(w.flatten(1).double() - _composed(new[0]).double())
    assert float(err) == pytest.approx(float(s[r:].square().sum().sqrt()), rel=1e-4)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        want = F.conv2d(x, _composed(new[0]).reshape(w.shape), model[0].bias, stride=2, padding=1)
        torch.testing.assert_close(new(x), want, rtol=1e-4, atol=1e-5)


def test_energy_picks_the_smallest_rank_keeping_that_energy():
    torch.manual_seed(0)
    layer = nn.Linear(40, 30)
    with torch.no_grad():  # a decaying spectrum, so energy and rank differ clearly
        u, _, vh = torch.linalg.svd(torch.randn(30, 40), full_matrices=False)
        layer.weight.copy_(u @ torch.diag(0.7 ** torch.arange(30.0)) @ vh)
    s2 = _singular_values(layer.weight).numpy() ** 2
    for energy in (0.5, 0.9, 0.99):
        new, _ = low_rank(nn.Sequential(layer), LowRankSettings(energy=energy))
        expected = int(np.argmax(np.cumsum(s2) / s2.sum() >= energy)) + 1
        assert new[0][0].out_features == expected
        kept = s2[:expected].sum() / s2.sum()
        assert kept >= energy and s2[: expected - 1].sum() / s2.sum() < energy


def test_layer_whose_factorisation_would_not_save_parameters_is_left_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 64))
    new, report = low_rank(model, LowRankSettings(rank_ratio=0.9))  # r=8: 8·(8+8) > 64 and 8·(8+64) > 512
    assert isinstance(new[0], nn.Linear) and isinstance(new[1], nn.Linear)
    assert torch.equal(new[0].weight, model[0].weight)
    assert report["layers_factorised"] == 0 and report["layers_kept"] == 2
    new, report = low_rank(model, LowRankSettings(rank_ratio=0.1))  # r=1: 1·(8+64) < 512 but 1·16 < 64 too
    assert report["layers_factorised"] == 2


def test_include_exclude_and_layer_types_choose_the_layers():
    torch.manual_seed(0)
    model = Net()
    new, report = low_rank(model, LowRankSettings(rank_ratio=0.25, include=("fc*",), exclude=("fc2",)))
    assert isinstance(new.fc1, nn.Sequential) and isinstance(new.fc2, nn.Linear) and isinstance(new.head, nn.Linear)
    assert isinstance(new.conv, nn.Conv2d) and report["factorised"] == ["fc1"]
    new, report = low_rank(model, LowRankSettings(rank_ratio=0.25, layer_types=("Linear", "Conv2d")))
    assert report["layers_factorised"] == 4
    assert sum(p.numel() for p in new.parameters()) < 0.5 * sum(p.numel() for p in model.parameters())
    with pytest.raises(ConfigError, match="did you mean 'fc2'"):
        low_rank(model, LowRankSettings(rank_ratio=0.25, exclude=("fc3",)))


def test_factorised_model_exports_to_onnx_and_matches_torch(tmp_path):
    torch.manual_seed(0)
    new, _ = low_rank(Net().eval(), LowRankSettings(energy=0.8, layer_types=("Linear", "Conv2d")))
    x = torch.randn(2, 16, 8, 8)
    path = tmp_path / "lr.onnx"
    torch.onnx.export(new, (x,), str(path), input_names=["x"], dynamo=False)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, new(x).numpy(), atol=1e-4, rtol=0)
