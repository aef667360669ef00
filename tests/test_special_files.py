"""Special files where a regular file belongs (a FIFO, a character device, a /proc file, a directory) and names
longer than the filesystem allows: exit 2 naming the path, promptly (a FIFO is never opened, so nothing blocks)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from conftest import GOOD_CONFIG
from edgekit.cli import main
from edgekit.errors import EdgekitError
from edgekit.fsutil import check_regular_file


@pytest.fixture()
def alarm():
    """Fail instead of hanging: a test that blocks on a FIFO is stopped after 20 s."""
    def stop(signum, frame):
        raise TimeoutError("blocked on a special file")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _special(tmp_path: Path, kind: str, suffix: str) -> Path:
    path = tmp_path / f"special{suffix}"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "chardev":
        path.symlink_to("/dev/zero")
    elif kind == "proc":
        path.symlink_to("/proc/self/status")
    else:
        path.mkdir()
    return path


KINDS = {"fifo": "FIFO", "chardev": "character device", "proc": "proc pseudo-file", "dir": "is a directory"}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("role", ["config", "model", "weights", "onnx", "profile"])
def test_a_special_file_is_exit_2_not_a_regular_file(sandbox, capsys, alarm, kind, role):
    suffix = {"config": ".toml", "model": ".py", "weights": ".safetensors", "onnx": ".onnx", "profile": ".toml"}[role]
    special = _special(sandbox, kind, suffix)
    config = GOOD_CONFIG
    if role == "model":
        config = config.replace('"net.py:build"', f'"{special}:build"')
    elif role == "weights":
        config = config.replace('"w.safetensors"', f'"{special}"')
    elif role == "onnx":
        config = config.replace('"net.py:build"', f'"{special}"').replace('weights = "w.safetensors"\n', "")
    elif role == "profile":
        config += f'\n[targets.ort-int8]\nprofile = "{special}"\n'
    cfg = special if role == "config" else sandbox / "cfg.toml"
    if role != "config":
        cfg.write_text(config)

    code = main(["build", str(cfg), "-o", str(sandbox / "out")])

    err = capsys.readouterr().err
    assert code == 2, err
    assert str(special) in err and KINDS[kind] in err and "internal error" not in err, err
    assert not (sandbox / "out").exists()


def test_names_longer_than_the_filesystem_allows(sandbox, capsys):
    long = "x" * 300
    assert main(["build", str(sandbox / f"{long}.toml"), "-o", str(sandbox / "out")]) == 2
    assert "longer than the filesystem allows" in capsys.readouterr().err
    (sandbox / "cfg.toml").write_text(GOOD_CONFIG)
    assert main(["build", str(sandbox / "cfg.toml"), "-o", str(sandbox / long)]) == 2
    assert "too long for the filesystem" in capsys.readouterr().err
    assert main(["build", str(sandbox / "cfg.toml"), "-o", str(sandbox / ("y" * 240))]) == 2  # staging name too
    assert "too long for the filesystem" in capsys.readouterr().err


def test_check_regular_file_names_what_and_size(tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 100)
    assert check_regular_file(big, "data file", max_bytes=100) == big
    with pytest.raises(EdgekitError, match="data file .*big.bin is 100 bytes, more than the 99 allowed"):
        check_regular_file(big, "data file", max_bytes=99)
    with pytest.raises(EdgekitError, match="does not exist"):
        check_regular_file(tmp_path / "nope", "data file")
