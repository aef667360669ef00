"""The Python API: the README's example run for real on the digits model, configs as dicts, overrides in code."""

from __future__ import annotations

import contextlib
import io
import re
import tomllib
from pathlib import Path

import pytest

import edgekit
from edgekit.api import with_overrides
from edgekit.config import load_config, resolved_dict
from edgekit.errors import ConfigError, ProfileError
from edgekit.profiles import load_profile
from conftest import GOOD_CONFIG

ROOT = Path(__file__).resolve().parents[1]


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_builds_digits_and_returns_typed_results(tmp_path, monkeypatch):
    (tmp_path / "calibration").symlink_to(ROOT / "calibration")  # the example's relative data paths
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(compile(_readme_example(), "README.md (Python API)", "exec"), namespace)

    manifest, int8 = namespace["manifest"], namespace["int8"]
    assert isinstance(manifest, edgekit.Manifest) and isinstance(int8, edgekit.TargetResult)
    assert manifest.exit_code == 0 and list(manifest.results) == ["ort-fp32", "ort-int8"]
    assert all(r.status == "passed" for r in manifest.results.values())
    # the bundled digits CNN keeps its FP32 accuracy (99.56% of 450 images) within two images in INT8
    fp32_accuracy = manifest.results["ort-fp32"].metrics.accuracy
    assert fp32_accuracy == pytest.approx(99.56, abs=0.01)
    assert int8.metrics.accuracy == pytest.approx(fp32_accuracy, abs=0.5)
    assert int8.metrics.vs_onnx["worst"]["cosine"] > 0.999
    assert 25.0 < int8.metrics.vs_onnx["worst"]["sqnr_db"] < 80.0
    assert 0.2 < int8.size.ratio_to_fp32 < 0.35
    assert int8.latency.stats.p50_ms > 0 and int8.latency.stats.runs == 200
    # the gates given in code replaced the profile's min_cosine and added max_size_ratio; the profile's others stay
    bounds = {g.gate: g.bound for g in int8.gates}
    assert bounds == {"min_cosine": 0.995, "max_size_ratio": 0.35, "max_top1_drop": 1.0, "min_speedup": 1.0,
                      "min_int8_fraction": 0.5}
    # the digits CNN is too small to time (ort-fp32 ~0.03 ms): its speed gate is not decided, and says why
    assert all(g.passed for g in int8.gates if g.gate != "min_speedup")
    speed = next(g for g in int8.gates if g.gate == "min_speedup")
    assert speed.passed is None and speed.resolution and speed.resolution.startswith("model too small to time")
    assert manifest.profiles["ort-int8"]["gates"]["min_cosine"] == 0.995
    assert (tmp_path / "dist-api" / "manifest.json").is_file()
    assert printed.getvalue().splitlines()[0] == "0 passed"


def test_load_config_takes_a_dict_like_the_toml_file(sandbox):
    (sandbox / "cfg.toml").write_text(GOOD_CONFIG)
    from_file = load_config(sandbox / "cfg.toml")
    from_dict = load_config(tomllib.loads(GOOD_CONFIG), base=sandbox)
    assert resolved_dict(from_dict) == resolved_dict(from_file)
    assert load_config(from_file) is from_file
    with pytest.raises(ConfigError, match="a TOML file path, a dict of its tables or a BuildConfig, got int"):
        load_config(42)
    with pytest.raises(ConfigError, match="unknown key 'sampels' in \\[calibration\\]; did you mean 'samples'"):
        load_config({"model": {"source": "example:digits"}, "calibration": {"data": "x.npz", "sampels": 3}})


def test_overrides_in_code_merge_over_the_config(sandbox):
    (sandbox / "cfg.toml").write_text(GOOD_CONFIG + "\n[targets.ort-int8.gates]\nmax_top1_drop = 0.5\n")
    cfg = load_config(sandbox / "cfg.toml")

    merged = with_overrides(cfg, gates={"ort-int8": {"min_cosine": 0.995, "max_size_ratio": None}})
    gates = load_profile("ort-int8", merged.overrides["ort-int8"]).gates
    assert (gates.min_cosine, gates.max_top1_drop, gates.max_size_ratio) == (0.995, 0.5, None)
    assert cfg.overrides["ort-int8"].gates == {"max_top1_drop": 0.5}, "the loaded config is not modified"

    only_fp32 = with_overrides(cfg, targets="ort-fp32")
    assert only_fp32.targets == ("ort-fp32",) and only_fp32.overrides == {}
    assert resolved_dict(load_config(resolved_dict(only_fp32)))["targets"] == {"use": ["ort-fp32"]}

    with pytest.raises(ConfigError, match="gates for target 'ort-int9', which this build does not use; did you mean 'ort-int8'"):
        with_overrides(cfg, gates={"ort-int9": {"min_cosine": 0.9}})
    with pytest.raises(ConfigError, match="targets names a target twice"):
        with_overrides(cfg, targets=["ort-fp32", "ort-fp32"])
    with pytest.raises(ConfigError, match="targets is empty"):
        with_overrides(cfg, targets=[])


def test_a_bad_gate_in_code_fails_before_anything_is_written(sandbox):
    (sandbox / "cfg.toml").write_text(GOOD_CONFIG)
    out = sandbox / "out"
    with pytest.raises(ProfileError, match="unknown key 'min_cosin' in \\[targets.ort-int8\\] gates; did you mean 'min_cosine'"):
        edgekit.build(sandbox / "cfg.toml", out=out, gates={"ort-int8": {"min_cosin": 0.99}})
    with pytest.raises(ProfileError, match="min_cosine must be a number"):
        edgekit.build(sandbox / "cfg.toml", out=out, gates={"ort-int8": {"min_cosine": "high"}})
    assert not out.exists()


def test_help_is_a_short_guide_and_the_validate_package_is_not_shadowed():
    import pydoc

    text = pydoc.render_doc(edgekit, renderer=pydoc.plaintext)
    assert "edgekit.build(" in text and "revalidate" in text
    assert len(text.splitlines()) < 400
    assert set(edgekit.__all__) == {"BuildConfig", "EdgekitError", "Manifest", "TargetResult", "build", "load_config", "revalidate"}
    import edgekit.validate as validate_package

    assert validate_package.__name__ == "edgekit.validate" and hasattr(validate_package, "__path__")
