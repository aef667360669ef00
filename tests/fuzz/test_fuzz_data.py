"""Fuzz the data readers: .npz and .npy files, and a data folder, with flipped, truncated and spliced bytes, and
well-formed arrays that lie (wrong dtype, NaN/Inf, float64 beyond float32's range, object arrays, missing batch axis).
Every outcome is an exit-2 EdgekitError naming the file, or a source whose every batch is what the model declares
(finite float32 of the declared shape): never another exception, never an accepted bad array."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from edgekit.config import DataConfig
from edgekit.data import open_feed
from edgekit.errors import EdgekitError
from edgekit.types import TensorSpec
from fuzzing import outcome, scaled
from test_fuzz_loaders import mutate, mutations

SPECS = (TensorSpec("x", ("batch", 1, 4, 4), "float32"),)


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


GOOD = np.random.default_rng(0).standard_normal((6, 1, 4, 4)).astype(np.float32)
GOOD_NPZ, GOOD_NPY = _npz(x=GOOD), _npy(GOOD)


def _read_all(path: Path, role: str = "calibration") -> None:
    """Open and check ``path`` as a user's [calibration] data; an accepted source must stream what SPECS declares."""
    source = outcome(open_feed, DataConfig(data=str(path), batch_size=4), SPECS, role)
    if isinstance(source, EdgekitError):
        assert str(path.name) in str(source) or str(path) in str(source) or "calibration" in str(source), str(source)
        return
    seen = 0
    for batch in source.batches(4):
        x = batch.feed["x"]
        assert x.dtype == np.float32 and x.shape[1:] == (1, 4, 4), (x.dtype, x.shape)
        assert np.isfinite(x).all(), "an accepted source streamed NaN/Inf"
        seen += x.shape[0]
    assert seen > 0, "an accepted source streamed nothing"


@scaled(40)
@given(edits=mutations, kind=st.sampled_from(["npz", "npy"]))
def test_damaged_data_files(tmp_path_factory, edits, kind):
    path = tmp_path_factory.mktemp("fuzz_data") / f"calib.{kind}"
    path.write_bytes(mutate(GOOD_NPZ if kind == "npz" else GOOD_NPY, edits))
    _read_all(path)


lying_arrays = st.one_of(
    st.just(GOOD.astype(np.float64) * 1e39),  # finite in float64, infinite once cast to float32
    st.just(np.where(GOOD > 1, np.nan, GOOD)),
    st.just(np.where(GOOD > 1, np.inf, GOOD)),
    st.just(GOOD[0]),  # no batch axis
    st.just(GOOD.reshape(6, 16)),
    st.just(GOOD[:0]),  # empty
    st.just(GOOD.astype(np.int64)),
    st.just(GOOD.astype(np.complex64)),
    st.just(np.array(["a", "b"])),
    st.builds(lambda n: GOOD[:n], st.integers(1, 6)),
)


@scaled(30)
@given(array=lying_arrays, key=st.sampled_from(["x", "y", "arr_0", ""]), folder=st.booleans())
def test_data_that_lies(tmp_path_factory, array, key, folder):
    root = tmp_path_factory.mktemp("fuzz_lies")
    if folder:  # a folder of one .npy per sample, one of them damaged by the lie
        data = root / "calib"
        data.mkdir()
        for i, sample in enumerate(GOOD[:3]):
            (data / f"{i:02d}.npy").write_bytes(_npy(sample[None]))
        (data / "99.npy").write_bytes(_npy(array))
    else:
        data = root / "calib.npz"
        data.write_bytes(_npz(**{key or "x": array}))
    _read_all(data)
