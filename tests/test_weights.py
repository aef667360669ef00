"""Weights as users have them: a training checkpoint dict, a DDP/torch.compile prefix, an ambiguous checkpoint, a
mismatch message a person can read; every file still loaded with weights_only=True."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgekit.cli import main
from edgekit.config import InputConfig, ModelConfig
from edgekit.errors import ConfigError, WeightsError
from edgekit.model import load_model

from conftest import GOOD_CONFIG


def _load(sandbox: Path, weights: str, key: str | None = None):
    cfg = ModelConfig(f"{sandbox / 'net.py'}:build", sandbox / weights, (InputConfig("x", (1, 1, 8, 8)),), ("logits",),
                      "classification", key)
    return load_model(cfg)


def _expected(sandbox: Path) -> dict[str, torch.Tensor]:
    return torch.load(sandbox / "w.pt", weights_only=True)


def _same_weights(source, state) -> bool:
    own = source.module.state_dict()
    return set(own) == set(state) and all(torch.equal(own[k], state[k]) for k in own)


def test_checkpoint_dict_loads_the_model_key_with_a_note(sandbox):
    source = _load(sandbox, "checkpoint.pt")

    assert _same_weights(source, _expected(sandbox))
    assert "key 'model'" in source.weights_note and "optimizer" in source.weights_note


def test_ddp_prefix_is_stripped_with_a_note(sandbox):
    source = _load(sandbox, "ddp.pt")

    assert _same_weights(source, _expected(sandbox))
    assert source.weights_note == "prefix 'module.' stripped from every key to fit the model"


def test_nested_prefixes_of_ddp_and_torch_compile_inside_a_checkpoint(sandbox):
    state = _expected(sandbox)
    torch.save({"state_dict": {f"module._orig_mod.{k}": v for k, v in state.items()}, "step": 10}, sandbox / "c.pt")

    source = _load(sandbox, "c.pt")

    assert _same_weights(source, state)
    assert "key 'state_dict'" in source.weights_note and "'module._orig_mod.'" in source.weights_note


def test_a_plain_state_dict_gives_no_note(sandbox):
    assert _load(sandbox, "w.safetensors").weights_note == ""


def test_ambiguous_checkpoint_is_refused_listing_both_keys(sandbox):
    with pytest.raises(WeightsError, match=r"holds several state_dicts: 'model', 'ema'; choose one with \[model\] weights_key"):
        _load(sandbox, "ambiguous.pt")


def test_weights_key_chooses_among_several(sandbox):
    state = _expected(sandbox)
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    torch.save({"model": state, "ema": ema}, sandbox / "two.pt")

    source = _load(sandbox, "two.pt", key="ema")

    assert _same_weights(source, ema)
    assert "key 'ema'" in source.weights_note


def test_weights_key_naming_a_missing_key_lists_the_keys_present(sandbox):
    with pytest.raises(WeightsError, match=r"weights_key = 'net' is not a key .*its keys: 'model', 'optimizer', 'epoch'"):
        _load(sandbox, "checkpoint.pt", key="net")


def test_a_pickle_that_would_run_code_is_still_refused_inside_a_checkpoint(sandbox):
    with pytest.raises(WeightsError, match="would execute code"):
        _load(sandbox, "evil_checkpoint.pt")
    assert not (sandbox / "PWNED").exists()


def test_a_mismatch_is_a_short_summary_with_the_prefix_hint(sandbox):
    state = _expected(sandbox)
    many = {f"encoder.block{i}.weight": torch.zeros(2) for i in range(40)} | {f"encoder.{k}": v for k, v in state.items()}
    torch.save(many, sandbox / "wrapped.pt")

    with pytest.raises(WeightsError) as err:
        _load(sandbox, "wrapped.pt")

    text = str(err.value)
    assert "missing keys: conv.weight" in text and "(+" in text
    assert f"unexpected keys: encoder.block0.weight" in text and f"({len(many) - 5} more)" in text.replace("+", "")
    assert "every key in the file starts with 'encoder.'" in text
    assert len(text) < 900 and "\n" not in text


def test_weights_key_without_weights_is_a_config_error(sandbox):
    from edgekit.config import load_config

    with pytest.raises(ConfigError, match="weights_key"):
        load_config({"model": {"source": "net.py:build", "weights_key": "model"}}, base=sandbox)


@pytest.mark.slow
def test_build_records_the_note_and_the_key_in_the_manifest(sandbox, monkeypatch, capsys):
    monkeypatch.chdir(sandbox)
    (sandbox / "cfg.toml").write_text(GOOD_CONFIG.replace('"w.safetensors"', '"ambiguous.pt"')
                                      .replace('use = ["ort-fp32", "ort-int8"]', 'use = ["ort-fp32"]'))

    code = main(["build", "cfg.toml", "-o", "out", "--weights-key", "ema"])

    err = capsys.readouterr().err
    assert code == 0, err
    assert "key 'ema'" in err
    manifest = json.loads((sandbox / "out" / "manifest.json").read_text())
    assert manifest["config"]["model"]["weights_key"] == "ema"
    assert "key 'ema'" in manifest["inputs"]["weights_note"]
    assert main(["validate", "out"]) == 0
