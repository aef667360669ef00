"""Pruning arithmetic on small layers: exact unstructured counts, channel removal that rewires every dependent layer."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.compress import PruneSettings, prune
from edgekit.errors import ConfigError


class ConvNet(nn.Module):
    """conv1 -> bn1 -> relu -> conv2 -> bn2 -> relu -> flatten -> fc (output)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(self.flat(torch.relu(self.bn2(self.conv2(h)))))


class BasicBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + x)


class ResNetish(nn.Module):
    """stem -> basic block (residual add) -> depthwise -> pointwise -> pool -> flatten -> fc -> out."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.block = BasicBlock(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8 * 2 * 2, 32)
        self.out = nn.Linear(32, 10)

    def forward(self, x):
        x = self.block(torch.relu(self.bn(self.stem(x))))
        x = F.adaptive_avg_pool2d(self.pw(self.dw(x)), 2).flatten(1)
        return self.out(torch.relu(self.fc(x)))


def _randomize_bn(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def _kept(original: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """Which rows of ``original`` survive in ``pruned`` (rows are unique random weights)."""
    o, p = original.flatten(1), pruned.flatten(1)
    return [int((o - row).abs().sum(1).argmin()) for row in p]


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------- unstructured


def test_unstructured_l1_zeroes_exactly_the_smallest_and_leaves_no_masks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 4))
    before = [model[0].weight.detach().clone(), model[2].weight.detach().clone()]
    pruned, report = prune(model, PruneSettings(amount=0.3, structured=False), torch.randn(2, 20))

    for w0, layer in zip(before, (pruned[0], pruned[2])):
        k = round(0.3 * w0.numel())
        zero = layer.weight == 0
        assert int(zero.sum()) == k
        smallest = torch.zeros(w0.numel(), dtype=torch.bool)
        smallest[w0.abs().flatten().argsort()[:k]] = True
        assert torch.equal(zero.flatten(), smallest)
        assert torch.equal(layer.weight[~zero], w0[~zero])  # survivors unchanged
    assert set(pruned.state_dict()) == set(model.state_dict())  # no weight_orig / weight_mask
    assert not any(hasattr(m, "weight_mask") or hasattr(m, "weight_orig") for m in pruned.modules())
    assert not pruned[0]._forward_pre_hooks
    assert torch.equal(model[0].weight, before[0])  # the input model is untouched
    assert report["weights_zeroed"] == 60 + 12 and report["sparsity"] == pytest.approx(72 / 240, abs=1e-4)


def test_unstructured_global_takes_more_from_the_small_layer_local_takes_the_same_share():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16))
    model[1].weight.data *= 10.0  # a layer with much larger weights
    x = torch.randn(2, 16)
    local, _ = prune(model, PruneSettings(amount=0.5, structured=False, scope="local"), x)
    glob, _ = prune(model, PruneSettings(amount=0.5, structured=False, scope="global"), x)

    assert [int((local[i].weight == 0).sum()) for i in (0, 1)] == [128, 128]
    zeros = [int((glob[i].weight == 0).sum()) for i in (0, 1)]
    assert sum(zeros) == 256 and zeros[0] >= 224 and zeros[1] <= 32
    magnitudes = torch.cat([model[i].weight.detach().abs().flatten() for i in (0, 1)])
    threshold = max(float(model[i].weight.detach().abs()[glob[i].weight == 0].max()) for i in (0, 1))
    assert int((magnitudes <= threshold).sum()) == 256  # one threshold across both layers


def test_unstructured_random_is_seeded_and_gradual_steps_reach_the_amount():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 8))
    x = torch.randn(2, 32)
    a, _ = prune(model, PruneSettings(amount=0.4, structured=False, criterion="random", seed=3), x)
    b, _ = prune(model, PruneSettings(amount=0.4, structured=False, criterion="random", seed=3), x)
    c, _ = prune(model, PruneSettings(amount=0.4, structured=False, criterion="random", seed=4), x)
    assert torch.equal(a[0].weight, b[0].weight) and not torch.equal(a[0].weight, c[0].weight)
    calls = []
    g, _ = prune(model, PruneSettings(amount=0.5, structured=False, steps=3),
                 x, finetune=lambda m, step: calls.append((step, int((m[0].weight == 0).sum()))))
    assert [s for s, _ in calls] == [1, 2]
    assert calls[0][1] < calls[1][1] < 512
    assert int((g[0].weight == 0).sum()) == 512


# ---------------------------------------------------------------- structured


def test_structured_prune_keeps_untouched_channels_identical_and_rewires_the_next_conv():
    torch.manual_seed(0)
    model = _randomize_bn(ConvNet())
    x = torch.randn(4, 3, 4, 4)
    pruned, report = prune(model, PruneSettings(amount=0.5, exclude=("conv2",)), x)

    assert pruned.conv1.out_channels == 4 and pruned.bn1.num_features == 4 and pruned.conv2.in_channels == 4
    assert pruned.conv2.out_channels == 6 and report["layers_pruned"] == 1
    kept = _kept(model.conv1.weight, pruned.conv1.weight)
    assert len(set(kept)) == 4
    grab = {}
    model.bn1.register_forward_hook(lambda m, i, o: grab.__setitem__("orig", o))
    pruned.bn1.register_forward_hook(lambda m, i, o: grab.__setitem__("new", o))
    with torch.no_grad():
        y0 = model(x)
        y1 = pruned(x)
    torch.testing.assert_close(grab["new"], grab["orig"][:, kept], rtol=0, atol=1e-6)
    # the pruned net equals the original with the removed channels' inputs to conv2 cut
    removed = [c for c in range(8) if c not in kept]
    with torch.no_grad():
        model.conv2.weight[:, removed] = 0
        torch.testing.assert_close(y1, model(x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(y0, y1)


def test_structured_prune_through_flatten_removes_each_channels_hw_block():
    torch.manual_seed(0)
    model = _randomize_bn(ConvNet())
    x = torch.randn(4, 3, 4, 4)
    pruned, report = prune(model, PruneSettings(amount=0.5, exclude=("conv1",)), x)

    assert pruned.conv2.out_channels == 3 and pruned.fc.in_features == 3 * 16
    assert pruned.fc.out_features == 5 and "fc" in report["protected"]  # the output layer keeps its outputs
    kept = _kept(model.conv2.weight, pruned.conv2.weight)
    cols = [c * 16 + j for c in kept for j in range(16)]
    torch.testing.assert_close(pruned.fc.weight, model.fc.weight[:, cols])
    removed = [c * 16 + j for c in range(6) if c not in kept for j in range(16)]
    with torch.no_grad():
        y1 = pruned(x)
        model.fc.weight[:, removed] = 0
        torch.testing.assert_close(y1, model(x), rtol=1e-5, atol=1e-5)


def test_structured_prune_through_a_residual_block_prunes_tied_channels_as_one_group():
    torch.manual_seed(0)
    model = _randomize_bn(ResNetish())
    x = torch.randn(2, 3, 8, 8)
    pruned, report = prune(model, PruneSettings(amount=0.5), x)

    width = pruned.stem.out_channels
    assert width == 8
    # stem, the block's second conv and the depthwise conv are tied by the add: same width, same channels
    assert pruned.bn.num_features == pruned.block.conv2.out_channels == pruned.block.bn2.num_features == width
    assert pruned.dw.in_channels == pruned.dw.out_channels == pruned.dw.groups == width
    assert pruned.block.conv1.in_channels == pruned.pw.in_channels == width
    kept = _kept(model.stem.weight, pruned.stem.weight)
    assert _kept(model.block.bn2.running_mean[:, None], pruned.block.bn2.running_mean[:, None]) == kept
    assert _kept(model.bn.running_mean[:, None], pruned.bn.running_mean[:, None]) == kept
    assert _kept(model.dw.weight, pruned.dw.weight) == kept
    assert pruned.fc.in_features == pruned.pw.out_channels * 4
    assert pruned.out.out_features == 10 and pruned(x).shape == (2, 10)
    assert _params(pruned) < 0.5 * _params(model)
    assert report["channels_after"] < report["channels_before"]


def test_structured_prune_never_breaks_model_outputs_or_inputs():
    class OutputResidual(nn.Module):  # the output is a sum: its whole group must stay
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(8, 16), nn.Linear(16, 8), nn.Linear(8, 8)

        def forward(self, x):
            return self.c(x) + self.b(torch.relu(self.a(x)))

    class InputResidual(nn.Module):  # b's outputs are added to the raw input: they must stay
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(8, 16), nn.Linear(16, 8), nn.Linear(8, 4)

        def forward(self, x):
            return self.c(x + self.b(torch.relu(self.a(x))))

    torch.manual_seed(0)
    x = torch.randn(3, 8)
    for cls in (OutputResidual, InputResidual):
        model = cls()
        pruned, report = prune(model, PruneSettings(amount=0.5), x)
        assert pruned.a.out_features == 8 and pruned.b.in_features == 8
        assert pruned.b.out_features == 8 and pruned.c.in_features == 8
        assert pruned(x).shape == model(x).shape
        assert {"b", "c"} <= set(report["protected"])


def test_structured_global_prunes_the_layer_with_weak_channels_harder_than_local():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():  # layer 0: 28 of its 32 channels carry almost nothing
        model[0].weight[4:] *= 1e-3
        model[0].bias[4:] *= 1e-3
        model[2].weight[:, 4:] *= 1e-3
    x = torch.randn(2, 8)
    local, _ = prune(model, PruneSettings(amount=0.5), x)
    glob, _ = prune(model, PruneSettings(amount=0.5, scope="global"), x)

    assert (local[0].out_features, local[2].out_features) == (16, 16)
    assert glob[0].out_features < 16 < glob[2].out_features
    assert sorted(_kept(model[0].weight, glob[0].weight))[:4] == [0, 1, 2, 3]  # the strong channels survive
    assert glob[0].out_features + glob[2].out_features == pytest.approx(32, abs=2)
    assert glob[0].out_features >= 1


def test_structured_round_to_keeps_multiples_and_exclude_by_type():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 4, 4))
    x = torch.randn(2, 3, 6, 6)
    pruned, _ = prune(model, PruneSettings(amount=0.3, round_to=8), x)
    assert pruned[0].out_channels % 8 == 0 and pruned[2].out_channels % 8 == 0
    assert pruned[0].out_channels < 32 and pruned(x).shape == (2, 4)
    only_linear, report = prune(model, PruneSettings(amount=0.3, exclude=("Conv2d",)), x)
    assert only_linear[0].out_channels == 32 and only_linear[2].out_channels == 32 and report["layers_pruned"] == 0
    with pytest.raises(ConfigError, match="did you mean '0'|matches no layer"):
        prune(model, PruneSettings(amount=0.3, exclude=("conv9",)), x)


def test_structured_gradual_schedule_calls_finetune_between_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4))
    x = torch.randn(2, 8)
    widths = []
    pruned, _ = prune(model, PruneSettings(amount=0.75, steps=3), x, finetune=lambda m, step: widths.append((step, m[0].out_features)))
    one_shot, _ = prune(model, PruneSettings(amount=0.75), x)
    assert [s for s, _ in widths] == [1, 2]
    assert widths[0][1] == 40 and widths[1][1] == 25  # geometric: keep 0.25 ** (k/3) of 64 after step k
    assert pruned[0].out_features == one_shot[0].out_features == 16


@pytest.mark.parametrize("dynamo", [False, True])
def test_pruned_model_exports_to_onnx_and_matches_torch_on_onnxruntime(tmp_path, dynamo):
    torch.manual_seed(0)
    model = _randomize_bn(ResNetish())
    x = torch.randn(2, 3, 8, 8)
    pruned, _ = prune(model, PruneSettings(amount=0.5, scope="global", round_to=4), x)
    path = tmp_path / "pruned.onnx"
    torch.onnx.export(pruned, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=dynamo)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = pruned(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
