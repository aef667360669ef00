"""The compress registry: parsing [[compress]] tables strictly, and apply_step's measured record."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from edgekit.compress import (
    STEPS,
    CompressContext,
    DistillSettings,
    LowRankSettings,
    PruneSettings,
    QATSettings,
    apply_step,
    parse_step,
)
from edgekit.errors import ConfigError

MINIMAL = {
    "prune": {"method": "prune"},
    "low_rank": {"method": "low_rank", "rank_ratio": 0.25},
    "distill": {"method": "distill"},
    "qat": {"method": "qat"},
}


def test_registry_names_every_method():
    assert set(STEPS) == {"prune", "low_rank", "distill", "qat"}
    assert {s.settings for s in STEPS.values()} == {PruneSettings, LowRankSettings, DistillSettings, QATSettings}
    assert [n for n, s in STEPS.items() if s.needs_train] == ["distill", "qat"]


@pytest.mark.parametrize("method", sorted(MINIMAL))
def test_settings_round_trip_through_a_toml_table(method):
    settings = parse_step(MINIMAL[method], 0)
    assert settings.method == method
    table = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(settings).items() if v is not None}
    assert parse_step(table, 0) == settings
    hash(settings)  # frozen and hashable: lists became tuples


def test_parse_step_reads_values_and_converts_lists():
    s = parse_step({"method": "prune", "amount": 0.5, "exclude": ["fc*", "Linear"], "round_to": 8, "scope": "global"}, 0)
    assert s == PruneSettings(amount=0.5, exclude=("fc*", "Linear"), round_to=8, scope="global")
    d = parse_step({"method": "distill", "lr": 1, "features": ["layer1"]}, 0)
    assert d.lr == 1.0 and isinstance(d.lr, float) and d.features == ("layer1",)


def test_parse_step_rejects_unknown_key_naming_the_nearest():
    with pytest.raises(ConfigError) as err:
        parse_step({"method": "prune", "amout": 0.3}, 2)
    msg = str(err.value)
    assert "'amout'" in msg and "did you mean 'amount'" in msg and "#3" in msg


def test_parse_step_rejects_unknown_method_naming_the_nearest():
    with pytest.raises(ConfigError, match="did you mean 'low_rank'"):
        parse_step({"method": "lowrank"}, 0)
    with pytest.raises(ConfigError, match="needs 'method'"):
        parse_step({"amount": 0.3}, 0)


@pytest.mark.parametrize(
    "table, words",
    [
        ({"method": "prune", "amount": 1.5}, ["amount", "[0, 1)"]),
        ({"method": "prune", "amount": "lots"}, ["amount", "a number"]),
        ({"method": "prune", "structured": "yes"}, ["structured", "true or false"]),
        ({"method": "prune", "steps": True}, ["steps", "an integer"]),
        ({"method": "prune", "criterion": "randm"}, ["criterion", "did you mean 'random'"]),
        ({"method": "prune", "structured": False, "round_to": 8}, ["round_to", "structured"]),
        ({"method": "prune", "exclude": "fc"}, ["exclude", "list"]),
        ({"method": "low_rank"}, ["rank_ratio", "energy"]),
        ({"method": "low_rank", "rank_ratio": 0.5, "energy": 0.9}, ["exactly one"]),
        ({"method": "low_rank", "energy": 0.9, "layer_types": ["Conv1d"]}, ["layer_types", "Conv2d"]),
        ({"method": "distill", "alpha": 2.0}, ["alpha"]),
        ({"method": "distill", "optimizer": "adamm"}, ["optimizer", "did you mean 'adam'"]),
        ({"method": "qat", "epochs": 0}, ["epochs"]),
    ],
)
def test_parse_step_rejects_bad_values_naming_the_field(table, words):
    with pytest.raises(ConfigError) as err:
        parse_step(table, 0)
    for word in words:
        assert word in str(err.value)
    assert str(err.value).startswith("[[compress]] #1") or "unknown" in str(err.value)


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 64)
        self.out = nn.Linear(64, 4)

    def forward(self, x):
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def test_apply_step_measures_and_leaves_the_teacher_untouched():
    torch.manual_seed(0)
    teacher = Mlp().eval()
    snapshot = {k: v.clone() for k, v in teacher.state_dict().items()}
    ctx = CompressContext(example_inputs=(torch.randn(8, 32),), teacher=teacher)
    model, record = apply_step(teacher, parse_step({"method": "prune", "amount": 0.5}, 0), ctx)
    model, record2 = apply_step(model, parse_step({"method": "low_rank", "rank_ratio": 0.25}, 1), ctx)

    json.dumps([record, record2])  # the manifest stores it as is
    assert record["method"] == "prune" and record2["method"] == "low_rank"
    assert record["params_after"] < record["params_before"] == sum(p.numel() for p in teacher.parameters())
    assert record["bytes_after"] < record["bytes_before"]
    assert record["rel_error_before"] == 0.0 and 0.0 < record["rel_error_after"] < 1.5
    assert record2["params_before"] == record["params_after"] and record2["params_after"] < record2["params_before"]
    assert record2["rel_error_before"] == record["rel_error_after"]
    assert all(torch.equal(v, snapshot[k]) for k, v in teacher.state_dict().items())
    assert model(torch.randn(3, 32)).shape == (3, 4)


def test_apply_step_training_methods_need_training_data():
    ctx = CompressContext(example_inputs=(torch.randn(2, 32),), teacher=Mlp())
    for method in ("distill", "qat"):
        with pytest.raises(ConfigError, match=r"\[train\]"):
            apply_step(Mlp(), parse_step({"method": method}, 0), ctx)
