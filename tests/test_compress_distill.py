"""Distillation arithmetic and loop: KL × T² on softened outputs, the KD / hard-label mix, feature terms, progress."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.compress import DistillSettings, PruneSettings, distill, prune
from edgekit.compress.distill import kd_loss
from edgekit.config import DataConfig
from edgekit.data import open_feed
from edgekit.errors import ConfigError
from edgekit.types import TensorSpec

SPECS = (TensorSpec("x", ("batch", 16)),)


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 64)
        self.fc2 = nn.Linear(64, 5)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_kd_loss_is_kl_of_softened_outputs_times_t_squared():
    rng = np.random.default_rng(0)
    s, t = rng.standard_normal((6, 7)), rng.standard_normal((6, 7))
    for temperature in (1.0, 4.0):
        ps, pt = _softmax(s / temperature), _softmax(t / temperature)
        expected = np.sum(pt * (np.log(pt) - np.log(ps))) / 6 * temperature**2
        got = float(kd_loss(torch.from_numpy(s), torch.from_numpy(t), temperature))
        assert got == pytest.approx(expected, rel=1e-9)
    assert float(kd_loss(torch.from_numpy(t), torch.from_numpy(t), 4.0)) == pytest.approx(0.0, abs=1e-12)


def test_kd_loss_on_dense_outputs_averages_over_positions():
    rng = np.random.default_rng(1)
    s, t = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 3, 4, 5))  # classes on dim 1
    rows_s, rows_t = np.moveaxis(s, 1, -1).reshape(-1, 3), np.moveaxis(t, 1, -1).reshape(-1, 3)
    pt, ps = _softmax(rows_t / 2.0), _softmax(rows_s / 2.0)
    expected = np.sum(pt * (np.log(pt) - np.log(ps))) / rows_s.shape[0] * 4.0
    assert float(kd_loss(torch.from_numpy(s), torch.from_numpy(t), 2.0)) == pytest.approx(expected, rel=1e-9)


@pytest.fixture()
def setup(tmp_path):
    torch.manual_seed(0)
    teacher = Mlp().eval()
    with torch.no_grad():
        teacher.fc2.weight.mul_(6.0)  # confident outputs, as a trained classifier's are
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 16)).astype(np.float32)
    with torch.no_grad():
        labels = teacher(torch.from_numpy(x)).argmax(1).numpy()
    np.savez(tmp_path / "train.npz", x=x, y=labels)
    labelled = open_feed(DataConfig(str(tmp_path / "train.npz"), labels="y"), SPECS, "train")
    unlabelled = open_feed(DataConfig(str(tmp_path / "train.npz")), SPECS, "train")
    student, _ = prune(teacher, PruneSettings(amount=0.75), (torch.from_numpy(x[:4]),))
    return teacher, student, labelled, unlabelled


def test_distill_pulls_a_pruned_student_toward_the_teacher_and_reports_each_epoch(setup):
    teacher, student, train, _ = setup
    t_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    s_state = {k: v.clone() for k, v in student.state_dict().items()}
    epochs = []

    trained, report = distill(student, teacher, DistillSettings(epochs=4, lr=0.01, batch_size=32), train, ("x",),
                              on_epoch=lambda e, n, loss: epochs.append((e, n, loss)))

    assert [(e, n) for e, n, _ in epochs] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [loss for *_, loss in epochs] == report["epoch_loss"]
    assert report["labels"] == "used"
    assert report["epoch_kd"][-1] < 0.5 * report["epoch_kd"][0]
    assert report["top1_agreement_after"] >= report["top1_agreement_before"] + 0.25
    assert not trained.training
    assert all(torch.equal(v, t_state[k]) for k, v in teacher.state_dict().items()), "teacher untouched"
    assert all(torch.equal(v, s_state[k]) for k, v in student.state_dict().items()), "input student untouched"
    again, _ = distill(student, teacher, DistillSettings(epochs=4, lr=0.01, batch_size=32), train, ("x",))
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in trained.state_dict().items()), "seeded: same result twice"


def test_alpha_mixes_kd_with_the_hard_label_loss_only_when_labels_exist(setup):
    teacher, student, labelled, unlabelled = setup
    _, kd_only = distill(student, teacher, DistillSettings(epochs=1, alpha=1.0), labelled, ("x",))
    assert kd_only["epoch_loss"] == kd_only["epoch_kd"]  # alpha = 1: the CE term has weight 0
    _, mixed = distill(student, teacher, DistillSettings(epochs=1, alpha=0.5), labelled, ("x",))
    assert mixed["epoch_loss"] != mixed["epoch_kd"] and mixed["labels"] == "used"
    _, unlabelled_report = distill(student, teacher, DistillSettings(epochs=1, alpha=0.5), unlabelled, ("x",))
    assert unlabelled_report["labels"] == "none (KD only)"
    assert unlabelled_report["epoch_loss"] == unlabelled_report["epoch_kd"]  # no labels: alpha is 1 in effect


def test_feature_distillation_adapts_a_narrowed_hidden_state(setup):
    teacher, student, _, train = setup  # unlabelled: the loss is KD plus the feature term only
    assert student.fc1.out_features == 16 and teacher.fc1.out_features == 64
    trained, report = distill(student, teacher, DistillSettings(epochs=3, features=("fc1",)), train, ("x",))
    assert report["adapters"] == ["fc1"]  # a learnable 16 -> 64 map, trained with the student, then dropped
    feature = [loss - kd for loss, kd in zip(report["epoch_loss"], report["epoch_kd"])]
    assert all(f > 0 for f in feature) and feature[-1] < feature[0]  # the hidden-state MSE is in the loss, and falls
    assert trained.fc1.out_features == 16 and not hasattr(trained, "adapters")
    with pytest.raises(ConfigError, match="did you mean 'fc1'"):
        distill(student, teacher, DistillSettings(features=("fc_1",)), train, ("x",))
