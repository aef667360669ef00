"""Config and profiles: strict keys, resolution of paths, and a round trip of every built-in profile."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edgekit.config import load_config, parse_config, resolved_dict
from edgekit.errors import ConfigError, ProfileError
from edgekit.profiles import builtin_names, load_profile, parse_profile, profile_to_dict
from conftest import GOOD_CONFIG


@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_profile_round_trips(name):
    profile = load_profile(name)
    d = profile_to_dict(profile)
    raw = {k: d[k] for k in ("description", "backend", "precision", "device", "host_is_device", "recipe", "runtime", "gates")}
    assert parse_profile(name, raw, profile.source) == profile
    assert profile.gates.min_cosine is not None, "every target gates on cosine"


def test_config_round_trips_through_resolved_dict(tmp_path):
    (tmp_path / "cfg.toml").write_text(GOOD_CONFIG + "\n[targets.ort-int8.gates]\nmin_cosine = 0.995\n")
    cfg = load_config(tmp_path / "cfg.toml")
    assert cfg.model.source == f"{tmp_path}/net.py:build"
    assert cfg.calibration.data == str(tmp_path / "calib.npz")
    again = parse_config(resolved_dict(cfg), Path("/"))
    assert resolved_dict(again) == resolved_dict(cfg)
    assert load_profile("ort-int8", cfg.overrides["ort-int8"]).gates.min_cosine == 0.995


def test_input_spec_carries_dynamic_axes(tmp_path):
    (tmp_path / "cfg.toml").write_text(GOOD_CONFIG)
    spec = load_config(tmp_path / "cfg.toml").model.inputs[0].spec
    assert spec.shape == ("batch", 1, 8, 8) and spec.dynamic_axes == {0: "batch"}


@pytest.mark.parametrize(
    "patch, message",
    [
        (("[model]", "[model]\nsourse = 'x'"), "unknown key 'sourse' in [model]; did you mean 'source'?"),
        (("shape = [1, 1, 8, 8]", "shape = [1, -1, 8, 8]"), "shape must be a list of positive integers"),
        (("dynamic = { 0 = \"batch\" }", "dynamic = { 9 = \"batch\" }"), "dynamic axis 9 is outside shape"),
        (('use = ["ort-fp32", "ort-int8"]', "use = []"), "[targets] use is empty"),
        (('use = ["ort-fp32", "ort-int8"]', 'use = ["ort-fp32", "ort-fp32"]'), "names a target twice"),
        (('use = ["ort-fp32", "ort-int8"]', 'use = ["ort-fp32"]\n[targets.ort-int8]\nruntime = {threads = 1}'),
         "configures a target that is not in [targets] use"),
    ],
)
def test_config_errors_name_the_culprit(tmp_path, patch, message):
    (tmp_path / "cfg.toml").write_text(GOOD_CONFIG.replace(*patch, 1))
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "cfg.toml")
    assert message in str(err.value)


def test_user_profile_file(tmp_path):
    (tmp_path / "mine.toml").write_text(
        'backend = "ort"\nprecision = "int8"\ndevice = "my board"\n[recipe]\nmode = "dynamic"\n[gates]\nmin_cosine = 0.9\n'
    )
    config = GOOD_CONFIG.replace('use = ["ort-fp32", "ort-int8"]', 'use = ["board"]\n[targets.board]\nprofile = "mine.toml"')
    (tmp_path / "cfg.toml").write_text(config)
    cfg = load_config(tmp_path / "cfg.toml")
    profile = load_profile("board", cfg.overrides["board"])
    assert profile.device == "my board" and profile.gates.min_cosine == 0.9


def test_profile_with_bad_backend():
    with pytest.raises(ProfileError, match="backend = 'cuda' is not one of"):
        parse_profile("x", {"backend": "cuda", "precision": "fp32", "device": "d"}, "test")


@pytest.mark.parametrize("name", builtin_names())
def test_targets_show_writes_a_profile_that_loads_back_as_the_builtin(name, tmp_path, capsys):
    from edgekit.cli import main
    from edgekit.config import TargetOverride

    written = tmp_path / f"{name}.toml"
    assert main(["targets", "show", name, "--write", str(written)]) == 0
    assert f"wrote {written}" in capsys.readouterr().out
    again = load_profile(name, TargetOverride(profile=written))
    builtin = load_profile(name)
    assert again.source == str(written)
    assert dataclasses.replace(again, source=builtin.source) == builtin


def test_targets_show_json_is_only_json(capsys, tmp_path):
    import json

    from edgekit.cli import main

    assert main(["targets", "show", "torch-qnnpack", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)  # the whole of stdout parses
    assert shown["name"] == "torch-qnnpack" and shown["recipe"]["engine"] == "qnnpack"
    assert set(shown["available_here"]) == {"ok", "reason", "hint"}
    assert main(["targets", "show", "ort-int8", "--json", "-o", str(tmp_path / "p.toml")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["recipe"]["mode"] == "static" and "wrote" in captured.err
    assert main(["targets", "--json"]) == 2


def test_a_user_profile_file_gets_the_same_strict_checks(tmp_path):
    from edgekit.config import TargetOverride

    (tmp_path / "mine.toml").write_text('backend = "ort"\nprecision = "int8"\ndevice = "d"\n[runtime]\nthread = 1\n')
    with pytest.raises(ProfileError, match=r"unknown key 'thread' in target profile 'mine' \(.*mine.toml\) \[runtime\]; did you mean 'threads'"):
        load_profile("mine", TargetOverride(profile=tmp_path / "mine.toml"))
    (tmp_path / "mine.toml").write_text('backend = "onnxruntime"\nprecision = "int8"\ndevice = "d"\n')
    with pytest.raises(ProfileError, match="backend = 'onnxruntime' is not one of ort, tensorrt, torch_ao"):
        load_profile("mine", TargetOverride(profile=tmp_path / "mine.toml"))
