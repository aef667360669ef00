"""The command line itself: help texts, target listing, inspect, report, usage errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgekit.cli import main


@pytest.mark.parametrize("command", ["demo", "build", "validate", "targets", "inspect", "report"])
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
