"""The command line itself: help texts, target listing, inspect, report, usage errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgekit.cli import main


@pytest.mark.parametrize("command", ["demo", "build", "validate", "targets", "inspect", "compare", "report"])
def test_every_command_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: edgekit {command}" in out
    assert len(out.splitlines()) >= 4


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "edgekit", "targets"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ort-int8" in proc.stdout and "ort-fp32" in proc.stdout


def test_targets_show_prints_the_resolved_profile(capsys):
    assert main(["targets", "show", "ort-int8"]) == 0
    out = capsys.readouterr().out
    assert '"activation_type": "uint8"' in out and "available here: yes" in out


def test_usage_errors_exit_2_with_one_line(capsys):
    assert main(["targets", "show"]) == 2
    assert main(["build"]) == 2
    assert main(["frobnicate"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln]
    assert len(err) == 3 and all(ln.startswith("error: ") for ln in err)


def test_inspect_onnx_and_torch(sandbox, capsys, monkeypatch):
    import torch

    monkeypatch.chdir(sandbox)
    torch.onnx.export(torch.nn.Linear(3, 2), (torch.zeros(1, 3),), "lin.onnx", dynamo=False, input_names=["a"])
    assert main(["inspect", "lin.onnx"]) == 0
    out = capsys.readouterr().out
    assert "a: float32 [1, 3]" in out and "parameters: 8" in out and "Gemm 1" in out
    assert main(["inspect", "net.py:build"]) == 0
    out = capsys.readouterr().out
    assert "parameters: 2,148" in out and "Conv2d 1" in out
    assert main(["inspect", "corrupt.onnx"]) == 2


def test_compare_two_models_on_data_and_on_random_inputs(built_sandbox, capsys, monkeypatch):
    import json

    sandbox = built_sandbox  # GOOD_CONFIG built into out/ (conftest.py good_build, which asserts it exits 0)
    monkeypatch.chdir(sandbox)
    capsys.readouterr()
    assert main(["compare", "out/reference/model.onnx", "out/ort-int8/model.onnx", "--data", "val.npz"]) == 0
    out = capsys.readouterr().out
    row = next(ln for ln in out.splitlines() if ln.startswith("logits"))
    samples, mse, _, cosine = row.split()[1:5]
    manifest = json.loads((sandbox / "out" / "manifest.json").read_text())
    vs_onnx = manifest["targets"]["ort-int8"]["metrics"]["vs_onnx"]["outputs"]["logits"]
    assert int(samples) == 24
    assert float(cosine) == pytest.approx(vs_onnx["cosine"], abs=1e-6)  # the same numbers the validator measured
    assert float(mse) == pytest.approx(vs_onnx["mse"], rel=1e-3)
    assert main(["compare", "out/reference/model.onnx", "out/ort-fp32/model.onnx"]) == 0
    row = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("logits"))
    assert float(row.split()[4]) > 0.99999
    assert main(["compare", "out/reference/model.onnx", "missing.onnx"]) == 2
    assert main(["compare", "out/reference/model.onnx", "net.py"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln]
    assert len(err) == 2 and "missing.onnx does not exist" in err[0] and "two .onnx files" in err[1]


def test_report_html_has_the_table_and_charts(built_sandbox, monkeypatch, capsys):
    sandbox = built_sandbox  # GOOD_CONFIG built into out/ (conftest.py good_build, which asserts it exits 0)
    monkeypatch.chdir(sandbox)
    assert main(["report", "out", "--html"]) == 0
    page = (sandbox / "out" / "report.html").read_text()
    assert page.count("<svg") == 2 and "<td>ort-int8</td>" in page and "p50 latency" in page
    assert "min_cosine" in page


def test_quiet_and_debug_work_after_the_subcommand(capsys):
    from edgekit.cli import main

    assert main(["targets", "-q"]) == 0
    assert "ort-int8" in capsys.readouterr().out
    assert main(["targets", "bogus", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "invalid choice: 'bogus'" in err
