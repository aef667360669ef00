"""[[compress]] + [train] through the CLI: each step measured before/after in the manifest and report, targets built from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from conftest import GOOD_CONFIG
from edgekit.cli import main
from edgekit.compress.run import onnx_params
from edgekit.config import load_config, parse_config, resolved_dict

COMPRESS = """
[[compress]]
method = "prune"
amount = 0.5

[[compress]]
method = "distill"
epochs = 3
lr = 0.005
batch_size = 16

[[compress]]
method = "qat"
epochs = 1

[train]
data = "train.npz"
labels = "y"
"""


def _config() -> str:
    return GOOD_CONFIG.replace("[calibration]", COMPRESS + "\n[calibration]")


def _train_data(sandbox: Path) -> None:
    """Training samples disjoint from the sandbox's calibration/validation data (different seed)."""
    rng = np.random.default_rng(7)
    np.savez(sandbox / "train.npz", x=rng.standard_normal((96, 1, 8, 8)).astype(np.float32), y=rng.integers(0, 4, 96))


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    from conftest import make_sandbox

    sandbox = make_sandbox(tmp_path_factory.mktemp("compressed"))
    _train_data(sandbox)
    (sandbox / "cfg.toml").write_text(_config())
    code = main(["-q", "build", str(sandbox / "cfg.toml"), "-o", str(sandbox / "out")])
    manifest = json.loads((sandbox / "out" / "manifest.json").read_text())
    return sandbox, code, manifest


def test_build_with_compress_and_train_passes_and_records_every_step(compressed):
    sandbox, code, m = compressed
    assert code == m["exit_code"] == 0, {n: t["reason"] for n, t in m["targets"].items()}
    assert [s["method"] for s in m["compress"]] == ["prune", "distill", "qat"]
    assert [s["step"] for s in m["compress"]] == [1, 2, 3]
    assert "train" in m["inputs"] and m["config"]["train"] == {"data": str(sandbox / "train.npz"), "labels": "y"}
    for step in m["compress"]:
        for key in ("params", "nonzero_params", "onnx_params", "onnx_bytes", "p50_ms", "cosine", "top1_agreement", "accuracy"):
            assert key in step["before"] and key in step["after"], (step["method"], key)
        assert step["before"]["p50_ms"] > 0 and step["after"]["p50_ms"] > 0
        assert step["p50_speedup"] == pytest.approx(step["before"]["p50_ms"] / step["after"]["p50_ms"], rel=1e-3)
        assert step["measured_on"]["samples"] == 24 and step["measured_on"]["labelled"] is True
        assert step["seconds"] >= 0
    for earlier, later in zip(m["compress"], m["compress"][1:]):
        assert later["before"] == earlier["after"], "a step's 'before' is the previous step's 'after', measured once"


def test_structured_prune_halves_the_reference_onnx_and_distill_recovers_fidelity(compressed):
    sandbox, _, m = compressed
    prune, distill, qat = m["compress"]
    # Tiny: conv 1->8 (+bn), fc 512->4. Half the conv channels go, and with them half of fc's inputs.
    assert prune["before"]["params"] == 8 * 9 + 8 + 16 + 512 * 4 + 4
    assert prune["after"]["params"] == 4 * 9 + 4 + 8 + 256 * 4 + 4
    assert prune["after"]["onnx_params"] == pytest.approx(0.5 * prune["before"]["onnx_params"], rel=0.02)
    assert prune["after"]["onnx_bytes"] < 0.7 * prune["before"]["onnx_bytes"]
    assert prune["details"]["channels_before"] == 12 and prune["details"]["channels_after"] == 8
    assert prune["details"]["protected"] == ["fc"]
    # the uncompressed stage is the export itself: identical to the torch model up to float noise
    assert prune["before"]["cosine"] > 0.99999 and prune["before"]["top1_agreement"] == 1.0
    assert prune["after"]["cosine"] < 0.9
    # distillation on separate training data pulls the student back toward the teacher on validation data
    assert distill["after"]["cosine"] > prune["after"]["cosine"] + 0.1
    assert distill["details"]["epoch_kd"][-1] < distill["details"]["epoch_kd"][0]
    assert distill["after"]["onnx_params"] == prune["after"]["onnx_params"]
    assert qat["details"]["int8_rel_error_after"] <= qat["details"]["int8_rel_error_before"]  # the best epoch is kept
    # the reference written to the output directory is the last stage
    ref = sandbox / "out" / "reference" / "model.onnx"
    assert onnx_params(ref) == qat["after"]["onnx_params"]
    assert m["reference"]["file"]["bytes"] == qat["after"]["onnx_bytes"]


def test_targets_are_built_from_the_compressed_model_and_measured_against_it(compressed):
    sandbox, _, m = compressed
    fp32 = m["targets"]["ort-fp32"]["metrics"]["vs_torch"]["worst"]
    assert fp32["cosine"] > 0.99999, "ort-fp32 is compared with the compressed torch model it was exported from"
    assert m["targets"]["ort-int8"]["status"] == "passed"
    int8 = sandbox / "out" / "ort-int8" / "model.onnx"
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(str(int8)).graph.node}
    sess = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    x = np.load(sandbox / "val.npz")["x"][:5]
    (y,) = sess.run(None, {"x": x})
    assert y.shape == (5, 4) and np.all(np.isfinite(y))
    # the INT8 graph holds the pruned conv: 4 output channels
    conv_w = [i for i in onnx.load(str(int8)).graph.initializer if len(i.dims) == 4]
    assert [list(w.dims)[:1] for w in conv_w] == [[4]]


def test_report_has_the_compression_section(compressed):
    sandbox, _, m = compressed
    report = (sandbox / "out" / "report.md").read_text()
    assert "## Compression" in report
    section = report.split("## Compression", 1)[1]
    for row in ("| uncompressed |", "| 1. prune |", "| 2. distill |", "| 3. qat |"):
        assert section.count(row) == 1, row
    assert f"{m['compress'][0]['after']['params']:,}" in section
    assert "### 2. distill" in section and "epoch kd:" in section
    assert "against the uncompressed torch model" in section


def test_validate_a_compressed_build_uses_its_reference_onnx(compressed, capsys):
    sandbox, _, m = compressed
    assert main(["-q", "validate", str(sandbox / "out")]) == 0
    again = json.loads((sandbox / "out" / "manifest.json").read_text())
    assert "torch-fp32" not in again["references"], "the compressed torch model is not re-made by validate"
    assert again["targets"]["ort-fp32"]["metrics"]["vs_onnx"]["worst"]["cosine"] > 0.99999
    assert again["compress"] == m["compress"]


def test_config_with_compress_and_train_round_trips(sandbox):
    (sandbox / "cfg.toml").write_text(_config())
    cfg = load_config(sandbox / "cfg.toml")
    assert [s.method for s in cfg.compress] == ["prune", "distill", "qat"]
    assert cfg.compress[1].epochs == 3 and cfg.compress[1].batch_size == 16
    assert cfg.train.data == str(sandbox / "train.npz") and cfg.train.labels == "y"
    resolved = resolved_dict(cfg)
    assert resolved["compress"][0] == {"method": "prune", "amount": 0.5, "criterion": "l1", "structured": True, "scope": "local",
                                       "exclude": [], "steps": 1, "schedule": "geometric", "seed": 0}
    again = parse_config(resolved, Path("/"))
    assert again.compress == cfg.compress and resolved_dict(again) == resolved


def test_train_overlapping_validation_is_warned_and_unused_train_too(sandbox, capsys):
    config = _config().replace('data = "train.npz"', 'data = "val.npz"').replace('epochs = 3', 'epochs = 1')
    config = config.replace('[[compress]]\nmethod = "qat"\nepochs = 1\n', "")
    (sandbox / "cfg.toml").write_text(config)
    assert main(["build", str(sandbox / "cfg.toml"), "-o", str(sandbox / "out"), "--target", "ort-fp32"]) == 0
    assert "24 sample(s) appear in both [train] data and [validation] data" in capsys.readouterr().err

    config = GOOD_CONFIG.replace("[calibration]", '[[compress]]\nmethod = "low_rank"\nrank_ratio = 0.25\n\n'
                                 '[train]\ndata = "calib.npz"\n\n[calibration]')
    (sandbox / "cfg.toml").write_text(config)
    assert main(["build", str(sandbox / "cfg.toml"), "-o", str(sandbox / "out2"), "--target", "ort-fp32"]) == 0
    assert "no [[compress]] step here trains, so it is ignored" in capsys.readouterr().err
    m = json.loads((sandbox / "out2" / "manifest.json").read_text())
    step = m["compress"][0]
    assert step["details"]["layers_factorised"] == 1  # fc 512->4 at rank 1: 516 < 2048 weights
    assert step["after"]["onnx_params"] < step["before"]["onnx_params"]


def test_onnx_params_counts_weights_not_shapes(tmp_path):
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.randn(2, 6),), str(path), dynamo=False, input_names=["x"])
    assert onnx_params(path) == 6 * 5 + 5 + 5 * 3 + 3


def test_same_compressed_config_twice_gives_byte_identical_artifacts(compressed):
    sandbox, _, first = compressed
    assert main(["-q", "build", str(sandbox / "cfg.toml"), "-o", str(sandbox / "again")]) == 0
    second = json.loads((sandbox / "again" / "manifest.json").read_text())
    assert first["reference"]["file"]["sha256"] == second["reference"]["file"]["sha256"], "seeded pruning and training"
    for name in ("ort-fp32", "ort-int8"):
        assert [f["sha256"] for f in first["targets"][name]["files"]] == [f["sha256"] for f in second["targets"][name]["files"]]
    assert [s["details"] for s in first["compress"]] == [s["details"] for s in second["compress"]]


def test_terminal_summary_lists_each_step_before_the_table(compressed, capsys):
    sandbox, _, m = compressed
    capsys.readouterr()
    assert main(["-q", "validate", str(sandbox / "out")]) == 0
    out = capsys.readouterr().out.splitlines()
    steps = [ln for ln in out if ln.startswith("compress ")]
    assert [ln.split()[2].rstrip(":") for ln in steps] == ["prune", "distill", "qat"]
    prune = m["compress"][0]
    assert f"params {prune['before']['params']:,} -> {prune['after']['params']:,}" in steps[0]
    assert out.index(steps[-1]) < next(i for i, ln in enumerate(out) if ln.startswith("target"))
