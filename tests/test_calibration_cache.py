"""The calibration statistics cache: the INT8 targets of one build collect statistics once, a later build of the
same inputs skips the pass (counted, not timed), a damaged entry is ignored with a warning, artifacts are the same."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest

from edgekit import strictjson
from edgekit.backends.onnx import qdq_ranges, stats_cache
from edgekit.cli import main
from edgekit.cli.commands import demo_config
from edgekit.config import parse_config
from edgekit.console import Console
from edgekit.errors import ConfigError
from edgekit.jobs import calibration_settings
from edgekit.pipeline import BuildOptions, build

TARGETS = ("ort-int8", "tensorrt-int8")  # the same pre-processed graph: one statistics pass serves both


def _build(out: Path, cache: str | bool, jobs: int = 1, targets: tuple[str, ...] = TARGETS) -> tuple[dict, int, str]:
    """The demo's INT8 targets built (not validated) with ``cache``; (notes per target, statistics passes, stderr)."""
    cfg = parse_config({**demo_config(), "calibration": {**demo_config()["calibration"], "cache": cache}}, Path.cwd())
    err = io.StringIO()
    before = qdq_ranges.PASSES["activation_stats"]
    manifest = build(cfg, BuildOptions(out=out, targets=targets, validate=False, jobs=jobs), Console(io.StringIO(), err, progress=False))
    passes = qdq_ranges.PASSES["activation_stats"] - before
    return {n: r.artifact.notes for n, r in manifest.results.items()}, passes, err.getvalue()


def _artifacts(out: Path) -> dict[str, str]:
    return {n: hashlib.sha256((out / n / "model.onnx").read_bytes()).hexdigest() for n in TARGETS}


@pytest.fixture(scope="module")
def uncached(tmp_path_factory) -> tuple[Path, dict, int]:
    """The build without a cache: the bytes every cached build must reproduce."""
    out = tmp_path_factory.mktemp("uncached") / "out"
    notes, passes, _ = _build(out, False)
    return out, notes, passes


@pytest.fixture(scope="module")
def filled(tmp_path_factory) -> tuple[Path, Path, dict, int]:
    """A first build into an empty cache folder: (cache, out, notes, statistics passes)."""
    root = tmp_path_factory.mktemp("filled")
    notes, passes, _ = _build(root / "out", str(root / "cache"))
    return root / "cache", root / "out", notes, passes


@pytest.mark.slow
def test_without_a_cache_each_int8_target_collects(uncached):
    _, notes, passes = uncached
    assert passes == len(TARGETS)
    assert all(n["calibration_statistics"] == "collected (256 samples); no cache" for n in notes.values())


@pytest.mark.slow
def test_int8_targets_of_one_build_collect_once(filled, uncached):
    cache, out, notes, passes = filled
    assert passes == 1
    entries = sorted(cache.glob("*.json"))
    assert len(entries) == 1
    assert notes["ort-int8"]["calibration_statistics"] == "collected (256 samples)"
    assert notes["tensorrt-int8"]["calibration_statistics"] == f"cache hit {entries[0].stem[:12]}"
    assert _artifacts(out) == _artifacts(uncached[0])
    for name in TARGETS:  # the samples and batches the statistics were measured on come back from the entry
        assert notes[name]["calibration"] == uncached[1][name]["calibration"]


@pytest.mark.slow
def test_a_later_build_skips_the_statistics_pass(filled, uncached, tmp_path):
    cache, _, _, _ = filled
    notes, passes, err = _build(tmp_path / "again", str(cache))
    assert passes == 0
    key = next(cache.glob("*.json")).stem[:12]
    assert all(n["calibration_statistics"] == f"cache hit {key}" for n in notes.values())
    assert "warning" not in err.lower()
    assert _artifacts(tmp_path / "again") == _artifacts(uncached[0])


def _damage(entry: Path, how: str) -> None:
    doc = json.loads(entry.read_text())
    if how == "modified":  # still valid JSON, one range widened: its sha256 no longer matches
        row = doc["stats"]["bounds"][0]
        row[2] = (float.fromhex(row[2]) * 2 + 1).hex()
        entry.write_text(json.dumps(doc))
    elif how == "truncated":
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    else:  # stale: a consistent entry made for other data, under this key's name
        doc["key"]["data"] = "0" * 64
        payload = {k: v for k, v in doc.items() if k != "sha256"}
        doc["sha256"] = hashlib.sha256(strictjson.dumps(payload, sort_keys=True).encode()).hexdigest()
        entry.write_text(json.dumps(doc))


@pytest.mark.slow
@pytest.mark.parametrize("how,why", [("modified", "sha256 does not match"), ("truncated", "unreadable"),
                                     ("stale", "stale")])
def test_a_damaged_entry_is_ignored_with_a_warning_and_rebuilt(filled, uncached, tmp_path, how, why):
    cache = tmp_path / "cache"
    shutil.copytree(filled[0], cache)
    entry = next(cache.glob("*.json"))
    _damage(entry, how)
    notes, passes, err = _build(tmp_path / "out", str(cache), targets=("ort-int8",))
    assert passes == 1
    assert "warning" in err and str(entry) in err and why in err
    assert notes["ort-int8"]["calibration_statistics"] == "collected (256 samples)"
    assert why in notes["ort-int8"]["warning"]
    assert (tmp_path / "out" / "ort-int8" / "model.onnx").read_bytes() == (uncached[0] / "ort-int8" / "model.onnx").read_bytes()
    assert entry.read_bytes() == next(filled[0].glob("*.json")).read_bytes()  # rewritten whole


@pytest.mark.slow
def test_two_workers_share_one_collection(uncached, tmp_path):
    notes, _, _ = _build(tmp_path / "out", str(tmp_path / "cache"), jobs=2)
    said = sorted(n["calibration_statistics"].split(" ")[0] for n in notes.values())
    assert said == ["cache", "collected"]  # the second worker waited on the entry's lock, then read it
    assert _artifacts(tmp_path / "out") == _artifacts(uncached[0])


def test_where_the_cache_lives(tmp_path, monkeypatch):
    calib = demo_config()["calibration"]

    def folder(**extra) -> str:
        return calibration_settings(parse_config({**demo_config(), "calibration": {**calib, **extra}}, tmp_path).calibration).cache_dir

    monkeypatch.delenv(stats_cache.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert folder() == str(tmp_path / "xdg" / "edgekit" / "calibration")
    assert folder(cache=True) == folder()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert folder() == str(tmp_path / "home" / ".cache" / "edgekit" / "calibration")
    assert folder(cache="stats") == str(tmp_path / "stats")  # relative to the config's folder
    assert folder(cache=False) == folder(cache="none") == ""
    monkeypatch.setenv(stats_cache.ENV, "none")
    assert folder() == ""
    assert folder(cache="stats") == str(tmp_path / "stats")


@pytest.mark.parametrize("value,message", [("", "cache is empty"), (3, "cache must be")])
def test_a_bad_cache_setting_names_the_key(tmp_path, value, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({**demo_config(), "calibration": {**demo_config()["calibration"], "cache": value}}, tmp_path)


@pytest.mark.slow
def test_cli_option_none_and_empty(tmp_path, capsys):
    cfg = tmp_path / "cfg.toml"
    data = demo_config()["calibration"]["data"]
    cfg.write_text(f'[model]\nsource = "example:digits"\ninputs = [{{ name = "image", shape = [1, 1, 8, 8] }}]\n'
                   f'[calibration]\ndata = "{data}"\ncache = "{tmp_path / "c"}"\n[targets]\nuse = ["ort-int8"]\n')
    assert main(["-q", "build", str(cfg), "-o", str(tmp_path / "out"), "--no-validate", "--calibration-cache", " "]) == 2
    assert "--calibration-cache is empty" in capsys.readouterr().err
    assert main(["-q", "build", str(cfg), "-o", str(tmp_path / "out"), "--no-validate", "--calibration-cache", "none"]) == 0
    assert not (tmp_path / "c").exists()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["targets"]["ort-int8"]["notes"]["calibration_statistics"].endswith("no cache")
    assert main(["-q", "build", str(cfg), "-o", str(tmp_path / "out"), "--no-validate", "--calibration-cache", str(tmp_path / "d")]) == 0
    assert not (tmp_path / "c").exists() and len(list((tmp_path / "d").glob("*.json"))) == 1  # the option over the config


# ------------------------------------------------------------------------ the statistics pass in bounded memory


def test_a_large_batch_is_measured_in_slices_with_the_same_values(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgekit.backends.onnx.graph import tensor_reader

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Relu", ["h"], ["y"], name="relu")],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    reader = tensor_reader(tmp_path / "m.onnx")
    x = np.random.default_rng(1).normal(size=(10, 4)).astype(np.float32)
    whole = reader({"x": x})
    assert [len(r["y"]) for r in reader.runs({"x": x})] == [10]  # within the budget: run whole, as it comes
    reader.budget, reader.rows = sum(v.nbytes for v in reader({"x": x[:1]}).values()) * 3, None
    runs = list(reader.runs({"x": x}))
    assert [len(r["y"]) for r in runs] == [3, 3, 3, 1]
    for t, v in whole.items():
        np.testing.assert_allclose(np.concatenate([r[t] for r in runs]), v, rtol=1e-6, atol=0)
