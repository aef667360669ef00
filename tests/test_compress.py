"""The compress registry: parsing [[compress]] tables strictly, and run_step on a copy of the model."""

from __future__ import annotations

import dataclasses
import io
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
    parse_step,
    parse_steps,
    run_step,
    settings_table,
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


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


@torch.no_grad()
def _rel_error(model: nn.Module, reference: nn.Module, x: torch.Tensor) -> float:
    y, y_ref = model(x), reference(x)
    return float((y - y_ref).norm() / y_ref.norm())


def test_run_step_shrinks_a_copy_and_leaves_the_teacher_untouched():
    torch.manual_seed(0)
    teacher = Mlp().eval()
    snapshot = {k: v.clone() for k, v in teacher.state_dict().items()}
    x = torch.randn(8, 32)
    ctx = CompressContext(example_inputs=(x,), teacher=teacher)
    pruned, report = run_step(teacher, parse_step({"method": "prune", "amount": 0.5}, 0), ctx)
    factored, report2 = run_step(pruned, parse_step({"method": "low_rank", "rank_ratio": 0.25}, 1), ctx)

    json.dumps([report, report2])  # the manifest stores the reports as they are
    assert not pruned.training and not factored.training
    assert _params(factored) < _params(pruned) < _params(teacher)
    assert _bytes(factored) < _bytes(pruned) < _bytes(teacher)
    assert 0.0 < _rel_error(pruned, teacher, x) < 1.5
    assert _rel_error(factored, teacher, x) > 0.0
    assert all(torch.equal(v, snapshot[k]) for k, v in teacher.state_dict().items())
    assert factored(torch.randn(3, 32)).shape == (3, 4)


def test_run_step_training_methods_need_training_data():
    ctx = CompressContext(example_inputs=(torch.randn(2, 32),), teacher=Mlp())
    for method in ("distill", "qat"):
        with pytest.raises(ConfigError, match=r"\[train\]"):
            run_step(Mlp(), parse_step({"method": method}, 0), ctx)


def test_parse_steps_checks_what_the_steps_need_from_the_config():
    steps = parse_steps([{"method": "prune"}, {"method": "qat"}], has_train=True)
    assert [s.method for s in steps] == ["prune", "qat"]
    assert [settings_table(s) for s in steps] == [settings_table(PruneSettings()), settings_table(QATSettings())]
    with pytest.raises(ConfigError, match=r"#2 method = 'qat' needs training data"):
        parse_steps([{"method": "prune"}, {"method": "qat"}])
    with pytest.raises(ConfigError, match="works on a torch model"):
        parse_steps([{"method": "prune"}], onnx_source=True)
