"""edgekit fleet on a real local Ray (one Ray session for this module): two small models x two ONNX Runtime targets,
built once; then cache hits, a corrupt cache entry, changed weights, --workers 1 vs 2, a failing task, bad fleet files."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest

from conftest import make_sandbox
from edgekit.cli import main
from edgekit.fleet import FleetOptions, load_fleet, run_fleet

ray = pytest.importorskip("ray", reason="edgekit fleet needs Ray (pip install 'edgekit[fleet]')")

MLP = '''
import torch.nn as nn

def build():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))

def unexportable():
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("forward exploded on purpose")
    return Broken()
'''

TINY_CONFIG = '''
[model]
source = "net.py:build"
weights = "w.safetensors"
inputs = [ { name = "x", shape = [1, 1, 8, 8], dynamic = { 0 = "batch" } } ]
outputs = ["logits"]
task = "classification"
[validation]
data = "val.npz"
labels = "y"
'''

FLEET = '''
[defaults]
calibration = { data = "calib.npz", samples = 16 }
targets = { use = ["ort-fp32", "ort-int8"] }

[[build]]
config = "tiny.toml"

[[build]]
name = "mlp"
[build.model]
source = "mlp.py:build"
weights = "mlp.safetensors"
inputs = [ { name = "x", shape = [1, 1, 8, 8] } ]
task = "classification"
[build.validation]
data = "val.npz"
labels = "y"
'''

PAIRS = {("tiny", "ort-fp32"), ("tiny", "ort-int8"), ("mlp", "ort-fp32"), ("mlp", "ort-int8")}


def _mlp_weights(path: Path, seed: int) -> None:
    import importlib.util

    import torch
    from safetensors.torch import save_file

    spec = importlib.util.spec_from_file_location("_fleet_mlp", path.parent / "mlp.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(seed)
    save_file({k: v.contiguous() for k, v in mod.build().state_dict().items()}, str(path))


def make_fleet(root: Path) -> Path:
    make_sandbox(root)
    (root / "tiny.toml").write_text(TINY_CONFIG)
    (root / "mlp.py").write_text(MLP)
    _mlp_weights(root / "mlp.safetensors", seed=0)
    (root / "fleet.toml").write_text(FLEET)
    return root


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module (its start is the slowest fixed cost); run_fleet uses it and leaves it running."""
    import os

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def first(ray_session, tmp_path_factory):
    root = make_fleet(tmp_path_factory.mktemp("fleet"))
    done = run_fleet(load_fleet(root / "fleet.toml"), FleetOptions(out=root / "out", workers=2))
    return root, done


def _artifacts(out: Path) -> dict[str, str]:
    """sha256 of every artifact and reference file of every model folder (not the manifests: they hold timings)."""
    files = [p for p in sorted(out.rglob("*")) if p.is_file() and ".cache" not in p.parts
             and p.parent.name in ("ort-fp32", "ort-int8", "reference") and p.name != "metrics.json"]
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _strict_json(path: Path) -> dict:
    def refuse(name):
        raise ValueError(f"{path} holds {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def _copy(first, tmp_path: Path) -> Path:
    """The fleet's sources, its output and cache, copied for a test that changes them."""
    root, _ = first
    dst = tmp_path / "fleet"
    shutil.copytree(root, dst)
    return dst


def test_first_run_builds_every_pair_with_one_export_per_model(first):
    root, done = first
    assert {(p.model, p.target) for p in done.pairs} == PAIRS
    assert all(p.result.status == "passed" for p in done.pairs), [(p.model, p.target, p.result.reason) for p in done.pairs]
    assert all(p.steps == {"reference": "built", "artifact": "built", "measure": "measured"} for p in done.pairs)
    assert done.tasks == 2 + 4 and done.exit_code == 0  # one prepare (export + simplify) per model, one task per pair
    fleet = _strict_json(root / "out" / "fleet.json")
    assert fleet["rebuilt"] == 4 and fleet["cached"] == 0 and fleet["exit_code"] == 0
    for pair in fleet["pairs"]:
        assert pair["cosine"] > 0.99 and pair["p50_ms"] > 0 and pair["bytes"] > 1000
    for name in ("tiny", "mlp"):
        manifest = json.loads((root / "out" / name / "manifest.json").read_text())  # edgekit build's own writer
        assert set(manifest["targets"]) == {"ort-fp32", "ort-int8"}
        assert manifest["targets"]["ort-int8"]["size"]["ratio_to_fp32"] < 0.9  # INT8 weights, on models this small
    md, page = (root / "out" / "report.md").read_text(), (root / "out" / "report.html").read_text()
    assert all(f"| {m} | {t} | passed |" in md for m, t in PAIRS)
    assert page.startswith("<!doctype html>") and "<script" not in page and page.count("<tr") == 5


def test_second_run_is_all_cache_hits_and_its_folder_validates(first, tmp_path):
    root = _copy(first, tmp_path)
    before = _artifacts(root / "out")
    again = run_fleet(load_fleet(root / "fleet.toml"), FleetOptions(out=root / "out", workers=2))
    assert again.tasks == 0  # no Ray task at all: no export, no calibration, no quantization
    assert all(p.action == "cached" for p in again.pairs)
    assert all(p.steps == {"reference": "cached", "artifact": "cached", "measure": "cached"} for p in again.pairs)
    assert _artifacts(root / "out") == before
    assert main(["-q", "validate", str(root / "out" / "tiny")]) == 0


def test_corrupt_cache_entry_is_rebuilt_byte_identical(first, tmp_path):
    root = _copy(first, tmp_path)
    before = _artifacts(root / "out")
    fleet = _strict_json(root / "out" / "fleet.json")
    key = next(p["keys"]["artifact"] for p in fleet["pairs"] if (p["model"], p["target"]) == ("mlp", "ort-int8"))
    cached = next((root / "out" / ".cache" / "objects" / key[:2] / key / "files").rglob("*.onnx"))
    cached.write_bytes(cached.read_bytes()[:-7] + b"garbage")
    dry = run_fleet(load_fleet(root / "fleet.toml"), FleetOptions(out=root / "out", dry_run=True))
    assert "mlp x ort-int8: rebuild (its cached ort-int8/" in "\n".join(dry.lines)
    assert sum(line.endswith(": cached") for line in dry.lines) == 3
    done = run_fleet(load_fleet(root / "fleet.toml"), FleetOptions(out=root / "out", workers=2))
    built = {(p.model, p.target) for p in done.pairs if p.steps["artifact"] == "built"}
    assert built == {("mlp", "ort-int8")} and done.tasks == 1
    assert _artifacts(root / "out") == before
    # the rebuild read the activation statistics the first run left in the fleet's cache (OUT/.cache/calibration)
    entry = _strict_json(root / "out" / ".cache" / "objects" / key[:2] / key / "entry.json")
    assert entry["meta"]["artifact"]["notes"]["calibration_statistics"].startswith("cache hit ")
    assert len(list((root / "out" / ".cache" / "calibration").glob("*.json"))) == 2  # one per model


def test_changed_weights_rebuild_exactly_that_models_pairs(first, tmp_path):
    root = _copy(first, tmp_path)
    _mlp_weights(root / "mlp.safetensors", seed=1)
    dry = run_fleet(load_fleet(root / "fleet.toml"), FleetOptions(out=root / "out", dry_run=True))
    text = "\n".join(dry.lines)
    assert "mlp x ort-fp32: rebuild (weights changed, model changed)" in text
    assert "mlp x ort-int8: rebuild (weights changed, model changed)" in text
    assert "tiny x ort-fp32: cached" in text and "tiny x ort-int8: cached" in text
    done = run_fleet(load_fleet(root / "fleet.toml"), FleetOptions(out=root / "out", workers=2))
    rebuilt = {(p.model, p.target) for p in done.pairs if p.steps["artifact"] == "built"}
    assert rebuilt == {("mlp", "ort-fp32"), ("mlp", "ort-int8")} and done.tasks == 1 + 2
    assert all(p.result.status == "passed" for p in done.pairs)


@pytest.mark.slow
def test_one_worker_builds_the_same_bytes_as_two(first, tmp_path):
    root, _ = first
    done = run_fleet(load_fleet(root / "fleet.toml"), FleetOptions(out=tmp_path / "one", workers=1))
    assert done.tasks == 6 and all(p.steps["artifact"] == "built" for p in done.pairs)
    one, two = _artifacts(tmp_path / "one"), _artifacts(root / "out")
    assert len(one) >= 6 and one == two


def test_a_failing_task_does_not_stop_the_others(first, tmp_path):
    root = _copy(first, tmp_path)
    (root / "fleet.toml").write_text(FLEET + '''
[[build]]
name = "broken"
[build.model]
source = "mlp.py:unexportable"
inputs = [ { name = "x", shape = [1, 1, 8, 8] } ]
''')
    done = run_fleet(load_fleet(root / "fleet.toml"), FleetOptions(out=root / "out", workers=2))
    status = {(p.model, p.target): p.result.status for p in done.pairs}
    assert status.pop(("broken", "ort-fp32")) == status.pop(("broken", "ort-int8")) == "error"
    assert set(status.values()) == {"passed"} and done.exit_code == 1
    reason = next(p.result.reason for p in done.pairs if p.model == "broken")
    assert reason.startswith("export failed: ")
    assert not (root / "out" / "broken").exists()  # nothing vouches for a model that never exported


@pytest.mark.parametrize("text, message", [
    ('[[build]]\nconfg = "tiny.toml"\n', "unknown key 'confg' in [[build]] #1; did you mean 'config'?"),
    ('[[biuld]]\nconfig = "tiny.toml"\n', "unknown key 'biuld' in the fleet file; did you mean 'build'?"),
    ('[defaults]\ncalibraton = {}\n[[build]]\nconfig = "tiny.toml"\n', "did you mean 'calibration'?"),
    ('[[build]]\nconfig = "tiny.toml"\n[[build]]\nconfig = "tiny.toml"\n', "name 'tiny' is used twice"),
    ('[[build]]\nconfig = "nope.toml"\n', "config = 'nope.toml'"),
    ('[[build]]\nconfig = "tiny.toml"\n[build.model]\nsource = "net.py:build"\n', "both 'config' and inline"),
    ('[[build]]\nname = "x"\n[build.model]\nsorce = "net.py:build"\n', "fleet build 'x': unknown key 'sorce' in [model]"),
    ('[[build]]\nconfig = "tiny.toml"\n[publish]\nurl = "http://x"\n', "is not an S3 URL"),
])
def test_bad_fleet_file_is_exit_2_naming_the_key(tmp_path, capsys, text, message):
    root = make_sandbox(tmp_path / "s")
    (root / "tiny.toml").write_text(TINY_CONFIG)
    (root / "fleet.toml").write_text(text)
    assert main(["fleet", str(root / "fleet.toml"), "-o", str(root / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert not (root / "out").exists()


def test_cli_dry_run_then_a_cached_run(first, tmp_path, capsys):
    root = _copy(first, tmp_path)
    capsys.readouterr()
    assert main(["fleet", str(root / "fleet.toml"), "-o", str(root / "out"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(lines) == sorted(f"{m} x {t}: cached" for m, t in PAIRS)
    assert main(["fleet", str(root / "fleet.toml"), "-o", str(root / "out")]) == 0
    out = capsys.readouterr().out
    assert out.count(" cached") >= 4 and "0 pair(s) rebuilt, 4 from the cache, 0 Ray task(s)" in out


def test_workers_below_one_and_a_foreign_output_dir_are_exit_2(first, tmp_path, capsys):
    root, _ = first
    assert main(["fleet", str(root / "fleet.toml"), "-o", str(tmp_path / "o"), "--workers", "0"]) == 2
    assert "--workers must be >= 1" in capsys.readouterr().err
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "precious.txt").write_text("not edgekit's")
    assert main(["fleet", str(root / "fleet.toml"), "-o", str(tmp_path / "foreign")]) == 2
    assert "did not write" in capsys.readouterr().err


def test_publish_takes_a_fleet_folder_without_its_cache(first):
    from edgekit.publish import local_files

    root, _ = first
    files = {f.path for f in local_files(root / "out")}
    assert {"fleet.json", "report.html", "tiny/manifest.json", "mlp/ort-int8/model.onnx"} <= files
    assert not any(part.startswith(".") for f in files for part in f.split("/"))


def test_an_unreachable_ray_address_is_exit_2_at_once(first, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    root = _copy(first, tmp_path)
    _mlp_weights(root / "mlp.safetensors", seed=2)  # one pair to build, so Ray is needed
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "edgekit", "fleet", str(root / "fleet.toml"), "-o", str(root / "out"),
                           "--address", f"127.0.0.1:{port}"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"cannot reach Ray at 127.0.0.1:{port}" in proc.stderr
