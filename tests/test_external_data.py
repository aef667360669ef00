"""External data end to end on a small model ([export] external_data_mb = 0 forces the path a model over 2 GB must
take): every ONNX file is written as model.onnx + model.onnx.data, each data file's sha256 is in the manifest and
re-checked by validate, bundles carry it; the helpers and the simplify skip above protobuf's limit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.cli import main

from conftest import GOOD_CONFIG, make_sandbox

TARGETS = ["ort-fp32", "ort-int8", "ort-int8-dynamic", "ort-int4"]


@pytest.fixture(scope="module")
def ext_build(tmp_path_factory) -> Path:
    root = make_sandbox(tmp_path_factory.mktemp("external") / "sb")
    cfg = (GOOD_CONFIG.replace("[calibration]", "[export]\nexternal_data_mb = 0\n\n[calibration]")
           .replace('use = ["ort-fp32", "ort-int8"]', f"use = {json.dumps(TARGETS)}\n\n[bundle]\nsamples = 4\ntargets = [\"ort-int8\"]"))
    for name in TARGETS:
        cfg += f"\n[targets.{name}.runtime]\nwarmup = 1\nruns = 5\n"
    (root / "cfg.toml").write_text(cfg)
    code = main(["-q", "build", str(root / "cfg.toml"), "-o", str(root / "out")])
    assert code == 0
    return root / "out"


@pytest.mark.slow
def test_every_onnx_file_has_its_external_data_recorded_with_sha256(ext_build):
    from edgekit.types import ArtifactFile

    m = json.loads((ext_build / "manifest.json").read_text())
    ref = m["reference"]
    assert [f["path"] for f in ref["data_files"]] == ["reference/model.onnx.data"]
    for name in TARGETS:
        t = m["targets"][name]
        assert t["status"] == "passed", (name, t["reason"])
        assert [f["path"] for f in t["files"]] == [f"{name}/model.onnx", f"{name}/model.onnx.data"]
        assert t["size"]["bytes"] == sum(f["bytes"] for f in t["files"])
        for f in t["files"]:
            assert ArtifactFile.of(ext_build / f["path"], ext_build) == ArtifactFile(**f)
    assert m["targets"]["ort-fp32"]["size"]["fp32_bytes"] == ref["file"]["bytes"] + ref["data_files"][0]["bytes"]


@pytest.mark.slow
def test_validate_rechecks_each_external_file(ext_build, tmp_path, capsys):
    copy = tmp_path / "out"
    shutil.copytree(ext_build, copy)
    assert main(["-q", "validate", str(copy), "--target", "ort-int4"]) == 0
    data = copy / "ort-int8-dynamic" / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    capsys.readouterr()

    assert main(["validate", str(copy)]) == 2

    err = capsys.readouterr().err
    assert "ort-int8-dynamic/model.onnx.data was modified after the build" in err


@pytest.mark.slow
def test_a_tampered_reference_data_file_is_refused(ext_build, tmp_path, capsys):
    copy = tmp_path / "out"
    shutil.copytree(ext_build, copy)
    (copy / "reference" / "model.onnx.data").write_bytes(b"\0" * 16)
    capsys.readouterr()

    assert main(["validate", str(copy), "--target", "ort-fp32"]) == 2
    assert "reference/model.onnx.data was modified" in capsys.readouterr().err


@pytest.mark.slow
def test_the_bundle_carries_the_data_file_and_verifies_on_its_own(ext_build):
    bundle = ext_build / "bundles" / "ort-int8"
    assert (bundle / "model.onnx.data").is_file()
    meta = json.loads((bundle / "bundle.json").read_text())
    assert "model.onnx.data" in meta["files"]
    proc = subprocess.run([sys.executable, "verify.py"], cwd=bundle, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _linear_onnx(path: Path, k: int = 64, n: int = 32) -> np.ndarray:
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path.write_bytes(model.SerializeToString())
    return w


def test_save_and_move_keep_the_model_and_its_data_together(tmp_path):
    import onnxruntime as ort

    from edgekit.onnxio import external_files, has_external_data, load_onnx, model_files, move_model, save_onnx

    src = tmp_path / "plain.onnx"
    w = _linear_onnx(src)
    assert not has_external_data(src)
    staged = tmp_path / "stage" / "model.onnx"
    staged.parent.mkdir()
    assert save_onnx(load_onnx(src), staged, external=True) == [staged, staged.parent / "model.onnx.data"]
    final = tmp_path / "target" / "model.onnx"
    final.parent.mkdir()

    move_model(staged, final)

    assert external_files(final) == [final.parent / "model.onnx.data"]
    assert [f.path for f in model_files(final, tmp_path)] == ["target/model.onnx", "target/model.onnx.data"]
    x = np.ones((1, 64), np.float32)
    y = ort.InferenceSession(str(final), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.allclose(y, x @ w, atol=1e-4)


def test_simplify_is_skipped_with_the_reason_above_protobufs_limit(tmp_path, monkeypatch):
    import onnx

    from edgekit import export
    from edgekit.types import TensorSpec

    _linear_onnx(tmp_path / "m.onnx")
    monkeypatch.setattr(export, "SIMPLIFY_MAX_BYTES", 1000)  # the 8 KB weight stands for a model over 2 GB

    model, simplified, note = export.simplify(onnx.load(str(tmp_path / "m.onnx")), (TensorSpec("x", (1, 64)),), {})

    assert not simplified and "over protobuf's 2 GB limit" in note and "onnxsim" in note


def test_external_data_mb_is_bounded():
    from edgekit.config import load_config
    from edgekit.errors import ConfigError

    with pytest.raises(ConfigError, match="external_data_mb = 4096 is outside 0..2000"):
        load_config({"model": {"source": "m.onnx"}, "export": {"external_data_mb": 4096}})


def test_dynamic_int8_over_the_limit_quantizes_without_calibration_statistics(tmp_path, monkeypatch, calib_x32):
    from edgekit import onnxio
    from edgekit.backends.ort.dynamic import quantize_dynamic_int8
    from edgekit.backends.ort.recipe import OrtRecipe
    from edgekit.profiles import load_profile
    from edgekit.types import TensorSpec

    _linear_onnx(tmp_path / "m.onnx", k=32)
    monkeypatch.setattr(onnxio, "PROTOBUF_LIMIT", (64 << 20) + 1000)  # the 4 KB model stands for one over 2 GB
    recipe = OrtRecipe.parse(load_profile("ort-int8-dynamic"))

    notes = quantize_dynamic_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", recipe, calib_x32, (TensorSpec("x", (1, 32)),))

    assert "over protobuf's 2 GB limit" in notes["calibration"] and "smoothing" not in notes
    assert (tmp_path / "q.onnx").is_file()


def test_a_build_step_past_protobufs_limit_makes_the_target_unavailable_with_the_reason(tmp_path):
    """What `make check-large` met: ort-int8's range measurement and TensorRT's FP16 rewrite hold the model as one
    protobuf and raise protobuf's EncodeError past 2 GB. The target is then unavailable, with a reason a person can
    act on, not "build failed: EncodeError: Failed to serialize proto"."""
    from google.protobuf.message import EncodeError

    from edgekit.jobs import over_protobuf_limit
    from edgekit.onnxio import load_onnx, save_onnx
    from edgekit.types import Reference, TensorSpec

    model = tmp_path / "big" / "model.onnx"
    model.parent.mkdir()
    _linear_onnx(tmp_path / "plain.onnx")
    save_onnx(load_onnx(tmp_path / "plain.onnx"), model, external=True)
    ref = Reference(model, (TensorSpec("x", (1, 64)),), ("y",), "dynamo", 18, False, "")
    failure = EncodeError("Failed to serialize proto")
    assert over_protobuf_limit(failure, ref) == ""  # 8 KB of weights: that EncodeError is a real error

    with open(model.parent / "model.onnx.data", "r+b") as fh:  # sparse: 2.2 GB on paper, no disk used
        fh.truncate(2_200_000_000)
    reason = over_protobuf_limit(failure, ref)
    assert reason.startswith("not available at this size") and "2.20 GB" in reason and "docs/limits.md" in reason
    assert over_protobuf_limit(RuntimeError("a kernel failed"), ref) == ""  # other failures stay errors
