"""End to end through the CLI on the sandbox model: build, outputs on disk, manifest, validate, tamper, reproducibility."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from conftest import GOOD_CONFIG
from edgekit.cli import main


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _build(sandbox: Path, config: str = GOOD_CONFIG, out: str = "out", extra: tuple[str, ...] = ()) -> tuple[int, dict]:
    (sandbox / "cfg.toml").write_text(config)
    code = main(["-q", "build", str(sandbox / "cfg.toml"), "-o", str(sandbox / out), *extra])
    manifest = json.loads((sandbox / out / "manifest.json").read_text()) if (sandbox / out / "manifest.json").exists() else {}
    return code, manifest


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from conftest import make_sandbox

    sandbox = make_sandbox(tmp_path_factory.mktemp("built"))
    code, manifest = _build(sandbox)
    return sandbox, code, manifest


def test_build_writes_every_promised_file(built):
    sandbox, code, manifest = built
    out = sandbox / "out"
    assert code == manifest["exit_code"] == 0
    assert (out / "reference" / "model.onnx").is_file()
    assert (out / "report.md").read_text().count("| ort-int8 |") == 1
    for name in ("ort-fp32", "ort-int8"):
        t = manifest["targets"][name]
        assert t["status"] == "passed"
        for f in t["files"]:
            assert _sha(out / f["path"]) == f["sha256"]
            assert (out / f["path"]).stat().st_size == f["bytes"]
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert metrics["target"] == name and metrics["metrics"] == json.loads(json.dumps(t["metrics"]))
    assert not list(sandbox.glob(".out.edgekit-*")), "staging folder left behind"


def test_manifest_records_versions_config_hashes_and_gates(built):
    _, _, m = built
    assert m["versions"]["torch"].startswith("2.13.0")
    assert m["versions"]["onnxruntime"]
    assert m["config"]["model"]["source"].endswith("net.py:build")
    assert set(m["inputs"]) >= {"model", "weights", "calibration", "validation", "profiles"}
    assert m["reference"]["simplified"] is True and "verified" in m["reference"]["simplify_note"]
    gates = {g["gate"]: g for g in m["targets"]["ort-int8"]["gates"]}
    assert gates["min_cosine"]["passed"] is True and gates["min_cosine"]["bound"] == 0.99
    assert "ort-int8" in gates["min_cosine"]["message"]


def test_fp32_matches_torch_and_int8_is_close(built):
    _, _, m = built
    fp32 = m["targets"]["ort-fp32"]["metrics"]["vs_torch"]["worst"]
    int8 = m["targets"]["ort-int8"]["metrics"]["vs_torch"]["worst"]
    assert fp32["cosine"] >= 0.99999
    assert fp32["sqnr_db"] > 80
    assert 0.99 <= int8["cosine"] < 1.0
    assert 15 < int8["sqnr_db"] < 80
    assert m["validation"]["samples"] == 24
    lat = m["targets"]["ort-int8"]["latency"]
    assert lat["p50_ms"] > 0 and lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
    assert lat["threads"] == 2 and lat["batch"] == 1 and lat["runs"] == 200
    assert m["targets"]["ort-fp32"]["latency"]["speedup_vs_ort_fp32"] == pytest.approx(1.0)
    assert m["targets"]["ort-int8"]["size"]["ratio_to_fp32"] < 1.0


def test_int8_artifact_is_qdq_and_runs_on_onnxruntime(built):
    sandbox, _, _ = built
    sess = ort.InferenceSession(str(sandbox / "out" / "ort-int8" / "model.onnx"), providers=["CPUExecutionProvider"])
    import onnx

    ops = {n.op_type for n in onnx.load(str(sandbox / "out" / "ort-int8" / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    x = np.load(sandbox / "val.npz")["x"][:4]
    (y,) = sess.run(None, {"x": x})
    assert y.shape == (4, 4) and np.all(np.isfinite(y))


def test_same_config_twice_gives_byte_identical_artifacts(built, tmp_path):
    sandbox, _, first = built
    code, second = _build(sandbox, out="again")
    assert code == 0
    for name in ("ort-fp32", "ort-int8"):
        assert [f["sha256"] for f in first["targets"][name]["files"]] == [f["sha256"] for f in second["targets"][name]["files"]]
    assert first["reference"]["file"]["sha256"] == second["reference"]["file"]["sha256"]


def test_validate_rechecks_and_tamper_is_caught(built, capsys):
    sandbox, _, _ = built
    code, _ = _build(sandbox, out="tamper")
    out = sandbox / "tamper"
    assert main(["-q", "validate", str(out)]) == 0
    capsys.readouterr()
    artifact = out / "ort-int8" / "model.onnx"
    data = bytearray(artifact.read_bytes())
    data[-10] ^= 0xFF
    artifact.write_bytes(bytes(data))
    before = (out / "manifest.json").read_bytes()

    code = main(["validate", str(out)])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "ort-int8/model.onnx was modified after the build" in err[0]
    assert (out / "manifest.json").read_bytes() == before


def test_validate_with_other_data_and_target(built, capsys):
    sandbox, _, _ = built
    _build(sandbox, out="other")
    code = main(["-q", "validate", str(sandbox / "other"), "--target", "ort-int8", "--data", str(sandbox / "inf.npz")])
    assert code == 2 and "NaN/Inf" in capsys.readouterr().err
    np.savez(sandbox / "val2.npz", x=np.load(sandbox / "val.npz")["x"][:10], y=np.zeros(10, np.int64))
    before = (sandbox / "other" / "manifest.json").read_bytes()
    assert main(["-q", "validate", str(sandbox / "other"), "--target", "ort-int8", "--data", str(sandbox / "val2.npz")]) == 0
    assert (sandbox / "other" / "manifest.json").read_bytes() == before  # the build's own record is not overwritten
    [record] = (sandbox / "other" / "validations").iterdir()
    assert record.name.startswith("val2-")
    m = json.loads((record / "validation.json").read_text())
    assert m["validation"]["samples"] == 10 and list(m["targets"]) == ["ort-int8"]
    assert m["validated_on"] == str(sandbox / "val2.npz") and (record / "report.md").is_file()
    assert main(["-q", "validate", str(sandbox / "other"), "--target", "nope"]) == 2


def test_failed_gate_exits_1_and_keeps_artifacts(sandbox):
    config = GOOD_CONFIG + "\n[targets.ort-int8.gates]\nmin_cosine = 0.9999999\n"
    code, m = _build(sandbox, config)
    assert code == 1
    assert m["targets"]["ort-int8"]["status"] == "failed"
    assert "fails min_cosine" in m["targets"]["ort-int8"]["reason"]
    assert m["targets"]["ort-fp32"]["status"] == "passed"
    assert (sandbox / "out" / "ort-int8" / "model.onnx").is_file()


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_calibration_methods(sandbox, method):
    config = GOOD_CONFIG.replace('data = "calib.npz"', f'data = "calib.npz"\nmethod = "{method}"')
    code, m = _build(sandbox, config, extra=("--target", "ort-int8"))
    assert code == 0, m["targets"]["ort-int8"]
    assert m["targets"]["ort-int8"]["notes"]["calibration"]["method"] == method
    assert m["targets"]["ort-int8"]["metrics"]["vs_torch"]["worst"]["cosine"] >= 0.99
    assert list(m["targets"]) == ["ort-int8"]


def test_torchscript_exporter_and_dynamic_target(sandbox):
    config = GOOD_CONFIG.replace("[calibration]", '[export]\nexporter = "torchscript"\nopset = 17\n\n[calibration]')
    config = config.replace('use = ["ort-fp32", "ort-int8"]', 'use = ["ort-fp32", "ort-int8-dynamic"]')
    code, m = _build(sandbox, config)
    assert code == 0
    assert m["reference"]["exporter"] == "torchscript" and m["reference"]["opset"] == 17
    assert m["targets"]["ort-int8-dynamic"]["metrics"]["vs_torch"]["worst"]["cosine"] >= 0.99


def test_onnx_source_has_only_the_onnx_reference(built, sandbox):
    src, _, _ = built
    (sandbox / "m.onnx").write_bytes((src / "out" / "reference" / "model.onnx").read_bytes())
    config = GOOD_CONFIG.replace('source = "net.py:build"\nweights = "w.safetensors"', 'source = "m.onnx"')
    code, m = _build(sandbox, config)
    assert code == 0, m
    assert "vs_torch" not in m["targets"]["ort-fp32"]["metrics"]
    assert m["targets"]["ort-int8"]["metrics"]["vs_onnx"]["worst"]["cosine"] >= 0.99
    assert "torch-fp32" not in m["references"]


def test_no_validation_data_uses_synthetic_inputs_and_says_so(sandbox):
    config = GOOD_CONFIG.replace('[validation]\ndata = "val.npz"\nlabels = "y"\n', "")
    code, m = _build(sandbox, config)
    assert code == 0
    assert "synthetic" in m["validation"]["description"]
    assert "accuracy" not in m["targets"]["ort-int8"]["metrics"]


def test_rebuild_replaces_an_earlier_build(sandbox):
    """A whole build (no --target) replaces the earlier one whole; a --target rebuild keeps the rest
    (tests/test_keep_builds.py)."""
    assert _build(sandbox)[0] == 0
    (sandbox / "out" / "ort-int8" / "stale.txt").write_text("old")
    code, m = _build(sandbox, GOOD_CONFIG.replace('use = ["ort-fp32", "ort-int8"]', 'use = ["ort-fp32"]'))
    assert code == 0 and list(m["targets"]) == ["ort-fp32"]
    assert not (sandbox / "out" / "ort-int8").exists()


def test_overlap_between_calibration_and_validation_is_warned(sandbox, capsys):
    config = GOOD_CONFIG.replace('data = "val.npz"', 'data = "calib.npz"').replace('labels = "y"\n', "")
    (sandbox / "cfg.toml").write_text(config)
    assert main(["build", str(sandbox / "cfg.toml"), "-o", str(sandbox / "out")]) == 0
    assert "24 sample(s) appear in both [calibration] data and [validation] data" in capsys.readouterr().err
