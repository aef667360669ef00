"""Faults during a build: Ctrl-C in the ONNX export is exit 130 (never an export error), a model that calls
sys.exit is an error naming it, SIGINT/SIGTERM at random phases leave the earlier build intact or replaced whole
and no staging/old/temp folder, a full disk and a read-only output folder are exit 2 naming the folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import GOOD_CONFIG, ROOT
from edgekit.cli import main
from test_keep_builds import assert_vouched

INTERRUPTING_NET = '''
import os, signal
from net import Tiny

class Interrupting(Tiny):
    calls = 0

    def forward(self, x):
        type(self).calls += 1
        if type(self).calls == 2:  # the first call names the outputs; the second is the exporter's trace
            os.kill(os.getpid(), signal.SIGINT)
        return super().forward(x)

def build():
    return Interrupting()
'''


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_ctrl_c_during_the_export_is_exit_130_not_an_export_error(sandbox, capsys, monkeypatch, exporter):
    monkeypatch.syspath_prepend(str(sandbox))
    (sandbox / "interrupting.py").write_text(INTERRUPTING_NET)
    config = GOOD_CONFIG.replace("net.py:build", "interrupting.py:build") + f'\n[export]\nexporter = "{exporter}"\n'
    (sandbox / "cfg.toml").write_text(config)

    code = main(["build", str(sandbox / "cfg.toml"), "-o", str(sandbox / "out")])

    err = capsys.readouterr().err
    assert code == 130, err
    assert "interrupted" in err and "export" not in err.lower(), err
    assert not (sandbox / "out").exists() and not list(sandbox.glob(".out.edgekit-*"))


def test_sys_exit_in_forward_is_an_error_naming_the_model(sandbox, capsys):
    (sandbox / "exiting.py").write_text("import sys\nfrom net import Tiny\nclass E(Tiny):\n    def forward(self, x):\n"
                                        "        sys.exit(0)\ndef build():\n    return E()\n")
    sys.path.insert(0, str(sandbox))
    try:
        (sandbox / "cfg.toml").write_text(GOOD_CONFIG.replace("net.py:build", "exiting.py:build"))
        code = main(["build", str(sandbox / "cfg.toml"), "-o", str(sandbox / "out")])
    finally:
        sys.path.remove(str(sandbox))
    err = capsys.readouterr().err
    assert code == 2 and "forward() called sys.exit(0)" in err, err
    assert not (sandbox / "out").exists()


def _mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount permission): {done.stderr.strip()}")


@pytest.mark.parametrize("options,expect", [("size=32k", "the disk is full"), ("ro,size=32k", "read-only filesystem")])
def test_a_full_disk_or_read_only_folder_is_exit_2_naming_it(sandbox, capsys, options, expect):
    """A 32 KB tmpfs: the sandbox build writes about 40 KB (reference, two artifacts, manifest)."""
    mnt = sandbox / "mnt"
    _mount_tmpfs(mnt, options)
    try:
        (sandbox / "cfg.toml").write_text(GOOD_CONFIG)
        code = main(["build", str(sandbox / "cfg.toml"), "-o", str(mnt / "out")])
        err = capsys.readouterr().err
        assert code == 2, err
        assert expect in err and str(mnt / "out") in err and "internal error" not in err, err
        assert list(mnt.iterdir()) == [], "something half-written was left on the full disk"
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


DELAYS = (1.0, 2.0, 3.0, 4.5, 6.0)  # seconds after the start: plan, export, target builds, validation, the end


@pytest.mark.slow
def test_signals_at_random_phases_leave_the_earlier_build_intact_or_replaced_whole(tmp_path):
    """The digits demo (3 targets, ~8 s alone) rebuilt over an earlier build, with SIGINT or SIGTERM after each
    delay: exit 130/143 (or 0 when it ended first), the folder's files always match its manifest, nothing left."""
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp)}
    argv = [sys.executable, "-m", "edgekit", "-q", "demo", "--target", "ort-fp32", "--target", "ort-int8",
            "--target", "torch-fbgemm", "-o", str(out)]
    assert subprocess.run(argv, env=env, capture_output=True, timeout=300).returncode == 0
    first = assert_vouched(out)
    caches = {p.name for p in tmp.iterdir()}  # what the libraries keep after a whole build (onnxsim's .ses, inductor)
    assert not [c for c in caches if "edgekit" in c]
    outcomes = []
    for i, delay in enumerate(DELAYS):
        sig = signal.SIGINT if i % 2 == 0 else signal.SIGTERM
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        code = proc.returncode
        outcomes.append((delay, sig.name, code))
        assert code in (0, 130 if sig == signal.SIGINT else 143), (delay, sig, code, err)  # 0: it had ended
        assert "Traceback" not in err and "internal error" not in err, err
        m = assert_vouched(out)  # intact or replaced whole; no staging/old folder beside it
        assert set(m["targets"]) == set(first["targets"])
        left = {p.name for p in tmp.iterdir()} - caches
        assert not left, f"temporary files left after {sig.name} at {delay}s: {left}"
    print("signal outcomes (delay s, signal, exit):", outcomes)
    assert any(code != 0 for _, _, code in outcomes), f"no run was interrupted: {outcomes}"


def test_a_signal_inside_deferred_is_raised_when_the_block_ends():
    from edgekit import faults

    previous = faults.install()
    try:
        reached_end = False
        with pytest.raises(faults.Terminated):
            with faults.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                reached_end = True
        assert reached_end, "the signal cut the deferred block short"
    finally:
        faults.restore(previous)


SIGNAL_IN_A_WEAKREF_CALLBACK = """
import os, signal, sys, time, weakref
from edgekit import faults

class Model: pass

def callback(_):  # Python code run by the garbage collector: an exception raised here cannot propagate
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)

faults.install()
model = Model()
ref = weakref.ref(model, callback)
start = time.monotonic()
try:
    del model
    time.sleep(5)  # the build going on
    print("not interrupted")
except faults.Terminated:
    print(f"terminated after {time.monotonic() - start:.2f} s")
"""


def test_a_signal_inside_a_weakref_callback_is_delivered_again_without_a_traceback():
    """CPython cannot raise from a weakref callback: it would print 'Exception ignored in ...' with a traceback
    and carry on. The signal reaches the main thread's next line instead, silently."""
    run = subprocess.run([sys.executable, "-c", SIGNAL_IN_A_WEAKREF_CALLBACK], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert run.stdout.startswith("terminated after "), run.stdout
    assert float(run.stdout.split()[2]) < 2.0, run.stdout


def test_ctrl_c_that_a_library_turns_into_its_own_error_stops_the_report_without_a_warning(caplog):
    """CI saw it: SIGINT while matplotlib drew report.html's histogram, and pybind11 turned the KeyboardInterrupt
    into a TypeError, which the plot's error handling logged with a traceback. The handler now re-raises the signal."""
    from edgekit import faults
    from edgekit.report.html import _figure

    def draw() -> str:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        except KeyboardInterrupt:
            raise TypeError("affine_transform(): incompatible function arguments") from None  # as pybind11 did
        return "<svg/>"

    previous = faults.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            _figure(draw, "a caption")
    finally:
        faults.restore(previous)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_ctrl_c_wrapped_into_a_model_error_still_ends_as_an_interrupt(sandbox):
    """The user's model factory catches Ctrl-C and raises its own error, which edgekit reports as a bad model
    (exit 2): after a signal the build ends as interrupted instead (130), with that message and no traceback."""
    net = (sandbox / "net.py").read_text()
    (sandbox / "net.py").write_text(net + """

def build_interrupted():
    import os, signal, time
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
    except KeyboardInterrupt:
        raise RuntimeError("weights server: request cancelled") from None
    return build()
""")
    from conftest import GOOD_CONFIG

    (sandbox / "cfg.toml").write_text(GOOD_CONFIG.replace('"net.py:build"', '"net.py:build_interrupted"'))
    run = subprocess.run([sys.executable, "-m", "edgekit", "-q", "build", str(sandbox / "cfg.toml"), "-o", str(sandbox / "out")],
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 130, run.stderr
    assert "interrupted; nothing half-written was kept" in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert not (sandbox / "out").exists()


@pytest.mark.slow
def test_two_builds_into_one_folder_at_once_end_in_one_whole_build(built_sandbox):
    """Two `edgekit build` processes into the same -o over an earlier build: both end cleanly (0), and the folder
    holds one whole, verified build with nothing left beside it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "edgekit", "-q", "build", str(built_sandbox / "cfg.toml"), "-o", str(built_sandbox / "out")]
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for code, err in results:
        assert code == 0, err
        assert "Traceback" not in err and "internal error" not in err, err
    assert set(assert_vouched(built_sandbox / "out")["targets"]) == {"ort-fp32", "ort-int8"}
