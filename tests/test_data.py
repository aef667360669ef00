"""Data readers: npz by name or single array, folders of .npy/.npz, streaming in batches, sample limits, overlap."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.config import DataConfig
from edgekit.data import open_feed, overlap
from edgekit.errors import DataError
from edgekit.types import TensorSpec

SPEC = (TensorSpec("x", ("batch", 1, 8, 8), "float32"),)
TWO = (TensorSpec("ids", ("batch", 4), "int64"), TensorSpec("mask", ("batch", 4), "int64"))


def _x(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 1, 8, 8)).astype(np.float32)


def test_npz_streams_in_batches_with_labels_and_limit(tmp_path):
    np.savez(tmp_path / "d.npz", x=_x(10), y=np.arange(10))
    src = open_feed(DataConfig(str(tmp_path / "d.npz"), samples=7, labels="y"), SPEC, "validation")
    batches = list(src.batches(3))
    assert [b.size for b in batches] == [3, 3, 1]
    assert np.concatenate([b.labels for b in batches]).tolist() == list(range(7))
    assert np.array_equal(np.concatenate([b.feed["x"] for b in batches]), _x(10)[:7])


def test_single_unnamed_array_feeds_a_single_input_model(tmp_path):
    np.savez(tmp_path / "d.npz", _x(4).astype(np.float64))
    src = open_feed(DataConfig(str(tmp_path / "d.npz")), SPEC, "calibration")
    (batch,) = list(src.batches(8))
    assert batch.feed["x"].dtype == np.float32 and batch.size == 4


def test_folder_of_npy_single_samples_and_npz_batches(tmp_path):
    for i in range(5):
        np.save(tmp_path / f"s{i}.npy", _x(1, i)[0])  # one sample, no batch axis
    src = open_feed(DataConfig(str(tmp_path)), SPEC, "calibration")
    assert [b.size for b in src.batches(2)] == [2, 2, 1]
    folder = tmp_path / "multi"
    folder.mkdir()
    for i in range(3):
        np.savez(folder / f"part{i}.npz", ids=np.ones((4, 4), np.int64) * i, mask=np.ones((4, 4), np.int32))
    src = open_feed(DataConfig(str(folder)), TWO, "validation")
    batches = list(src.batches(5))
    assert [b.size for b in batches] == [5, 5, 2]
    assert batches[0].feed["mask"].dtype == np.int64
    assert batches[1].feed["ids"][:, 0].tolist() == [1, 1, 1, 2, 2]


def test_float_data_for_an_integer_input_is_refused(tmp_path):
    np.savez(tmp_path / "d.npz", ids=np.ones((2, 4)), mask=np.ones((2, 4), np.int64))
    with pytest.raises(DataError, match="input 'ids' has dtype float64; the model expects integers"):
        open_feed(DataConfig(str(tmp_path / "d.npz")), TWO, "validation")


def test_overlap_counts_shared_samples(tmp_path):
    x = _x(10)
    np.savez(tmp_path / "a.npz", x=x[:6])
    np.savez(tmp_path / "b.npz", x=x[4:])
    a = open_feed(DataConfig(str(tmp_path / "a.npz")), SPEC, "calibration")
    b = open_feed(DataConfig(str(tmp_path / "b.npz")), SPEC, "validation")
    assert overlap(a, b) == 2
