"""Malformed data files and special paths: a DataError naming the file (exit 2 through the CLI), never a numpy
exception, a RuntimeWarning on the terminal, an allocation of what a header declares, or a wait on a FIFO."""

from __future__ import annotations

import io
import os
import signal
import warnings
import zipfile
from contextlib import contextmanager

import numpy as np
import pytest

from conftest import GOOD_CONFIG
from edgekit.cli import main
from edgekit.config import DataConfig
from edgekit.data import open_feed
from edgekit.errors import DataError
from edgekit.types import TensorSpec

SPEC = (TensorSpec("x", ("batch", 1, 8, 8)),)


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: a blocked open() of a FIFO is interrupted by the alarm."""
    def expired(signum, frame):
        raise TimeoutError(f"blocked for {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_fifo_as_data_file_and_inside_a_folder_is_refused_without_blocking(sandbox, capsys, monkeypatch):
    os.mkfifo(sandbox / "pipe.npz")
    (sandbox / "cfg.toml").write_text(GOOD_CONFIG.replace('data = "calib.npz"', 'data = "pipe.npz"'))
    monkeypatch.chdir(sandbox)
    with deadline(20):
        code = main(["build", "cfg.toml", "-o", "out"])
    err = capsys.readouterr().err
    assert code == 2 and "pipe.npz is not a regular file (it is a FIFO)" in err and not (sandbox / "out").exists()
    folder = sandbox / "fifo_folder"
    folder.mkdir()
    np.save(folder / "a.npy", np.zeros((1, 8, 8), np.float32))
    os.mkfifo(folder / "b.npy")
    with deadline(20), pytest.raises(DataError, match=r"b.npy is not a regular file \(it is a FIFO\)"):
        open_feed(DataConfig(str(folder)), SPEC, "calibration")


def _npy_declaring(shape: tuple[int, ...], data: bytes) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def test_header_declaring_more_than_the_file_holds_is_refused_before_allocating(tmp_path):
    raw = _npy_declaring((10**12, 1, 8, 8), b"\0" * 1024)  # 256 TB declared, 1 KB present
    (tmp_path / "huge.npy").write_bytes(raw)
    with pytest.raises(DataError, match=r"huge.npy is truncated: its header declares shape \(1000000000000, 1, 8, 8\)"):
        open_feed(DataConfig(str(tmp_path / "huge.npy")), SPEC, "calibration")
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as zf:
        zf.writestr("x.npy", raw)
    with pytest.raises(DataError, match=r"huge.npz member 'x.npy' is truncated"):
        open_feed(DataConfig(str(tmp_path / "huge.npz")), SPEC, "calibration")
    (tmp_path / "header.npy").write_bytes(raw[:20])
    with pytest.raises(DataError, match=r"header.npy has a corrupt .npy header"):
        open_feed(DataConfig(str(tmp_path / "header.npy")), SPEC, "calibration")


def test_npz_named_npy_and_npy_named_npz_say_which_they_are(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((2, 1, 8, 8), np.float32))
    os.rename(tmp_path / "a.npz", tmp_path / "zip.npy")
    with pytest.raises(DataError, match=r"zip.npy is a zip archive \(an .npz\?\), not a .npy file"):
        open_feed(DataConfig(str(tmp_path / "zip.npy")), SPEC, "calibration")
    np.save(tmp_path / "b.npy", np.zeros((2, 1, 8, 8), np.float32))
    os.rename(tmp_path / "b.npy", tmp_path / "plain.npz")
    with pytest.raises(DataError, match=r"plain.npz is not a .npz file \(not a zip archive\); it is a .npy file"):
        open_feed(DataConfig(str(tmp_path / "plain.npz")), SPEC, "calibration")


def test_float32_overflow_and_nan_raise_no_numpy_warning(tmp_path):
    x = np.ones((6, 1, 8, 8))
    x[4, 0, 1, 1] = -3e40
    np.savez(tmp_path / "o.npz", x=x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning would become an exception here
        with pytest.raises(DataError, match=r"input 'x' contains 1 NaN/Inf value\(s\) once cast to float32 .*sample 4"):
            open_feed(DataConfig(str(tmp_path / "o.npz")), SPEC, "calibration")
        np.savez(tmp_path / "ok.npz", x=np.full((3, 1, 8, 8), 1e30))
        assert open_feed(DataConfig(str(tmp_path / "ok.npz")), SPEC, "calibration").count() == 3


def test_integer_data_beyond_the_input_dtype_is_refused(tmp_path):
    np.savez(tmp_path / "ids.npz", ids=np.array([[1, 2**40]], np.int64))
    with pytest.raises(DataError, match=r"input 'ids' holds values outside the range of int32"):
        open_feed(DataConfig(str(tmp_path / "ids.npz")), (TensorSpec("ids", ("batch", 2), "int32"),), "calibration")


def test_labels_must_be_non_negative(tmp_path):
    np.savez(tmp_path / "v.npz", x=np.zeros((2, 1, 8, 8), np.float32) + np.arange(2)[:, None, None, None], y=np.array([0, -1]))
    with pytest.raises(DataError, match=r"labels 'y' hold a negative class id \(-1\)"):
        open_feed(DataConfig(str(tmp_path / "v.npz"), labels="y"), SPEC, "validation")
