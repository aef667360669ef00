"""Checks every data reader applies: names, shapes, dtypes against the model; NaN/Inf; emptiness; the file's kind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np

from edgekit.errors import DataError
from edgekit.types import TensorSpec

SYSTEM_ROOTS = ("/proc", "/sys", "/dev")


def conform(array: np.ndarray, spec: TensorSpec, origin: str, one_sample_ok: bool = True, offset: int = 0) -> np.ndarray:
    """Return ``array`` as a batch for ``spec`` or raise DataError.

    An array one rank short is a single sample (the batch axis is added) when ``one_sample_ok``: a file in a folder
    of samples, or one item a generator yields. A single data file must hold the batch axis itself; ``offset`` is the
    index of the array's first sample, for messages."""
    where = f"{origin}: input '{spec.name}'"
    if not isinstance(array, np.ndarray):
        raise DataError(f"{where} is a {type(array).__name__}, not an array; give numeric arrays of dtype {spec.dtype}")
    if array.dtype == object or array.dtype.kind not in "biuf":
        raise DataError(f"{where} has dtype {array.dtype}; expected numeric data of dtype {spec.dtype}")
    if array.ndim == len(spec.shape) - 1:
        if not one_sample_ok:
            raise DataError(
                f"{where} has shape {tuple(array.shape)}, one axis short: the model expects {list(spec.shape)} with the "
                f"batch axis first; store it as shape {(1, *array.shape)} (x[None]) for one sample"
            )
        array = array[None]
    if array.ndim != len(spec.shape):
        raise DataError(
            f"{where} has shape {tuple(array.shape)} (rank {array.ndim}); the model expects rank {len(spec.shape)} "
            f"shaped like {list(spec.shape)}"
        )
    if array.shape[0] == 0:
        raise DataError(f"{where} is empty (0 samples); give at least one sample")
    for axis, (got, want) in enumerate(zip(array.shape, spec.shape)):
        if axis > 0 and isinstance(want, int) and got != want:
            raise DataError(f"{where} has shape {tuple(array.shape)}; the model expects {list(spec.shape)} (axis {axis}: {got} != {want})")
    want_kind = np.dtype(spec.dtype).kind
    if want_kind == "f" and array.dtype.kind not in "fiu":
        raise DataError(f"{where} has dtype {array.dtype}; the model expects {spec.dtype}")
    if want_kind in "iu" and array.dtype.kind not in "iu":
        raise DataError(f"{where} has dtype {array.dtype}; the model expects integers ({spec.dtype}): store the data as {spec.dtype}")
    if array.dtype.kind == "f":
        _finite(array, where, offset, "")
    with np.errstate(over="ignore", invalid="ignore"):
        cast = array.astype(spec.dtype, copy=False)
    if cast.dtype.kind == "f" and cast is not array:
        _finite(cast, where, offset, f" once cast to {spec.dtype} (values beyond its range)")
    if want_kind in "iu" and cast is not array and not np.array_equal(cast, array):
        raise DataError(f"{where} holds values outside the range of {spec.dtype}; store the data as {spec.dtype}")
    return cast


def _finite(array: np.ndarray, where: str, offset: int, how: str) -> None:
    finite = np.isfinite(array)
    if finite.all():
        return
    bad = int(finite.size - np.count_nonzero(finite))
    first = int(np.argmin(finite.reshape(finite.shape[0], -1).all(axis=1)))
    raise DataError(f"{where} contains {bad} NaN/Inf value(s){how} (first in sample {offset + first}); "
                    "clean the data or drop those samples")


def conform_labels(labels: np.ndarray, count: int, origin: str, key: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 0 and count == 1:
        labels = labels[None]
    if labels.ndim != 1 or labels.shape[0] != count:
        raise DataError(f"{origin}: labels '{key}' have shape {tuple(labels.shape)}; expected ({count},), one label per sample")
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
            return labels.astype(np.int64)
        raise DataError(f"{origin}: labels '{key}' must be integer class ids, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise DataError(f"{origin}: labels '{key}' hold a negative class id ({int(labels.min())}); class ids start at 0")
    return labels.astype(np.int64)


def regular_file(path: Path, what: str) -> Path:
    """``path`` must be a regular, non-empty file (checked before opening: a FIFO would block, a device never end)."""
    if not exists(path, what):
        raise DataError(f"{what} {path} does not exist")
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DataError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"{what} {path} is a folder; a file is expected here")
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{what} {path} is not a regular file (it is {kind(st.st_mode)}); give a data file")
    if system_path(path):
        raise DataError(f"{what} {path} is a system file (under {', '.join(SYSTEM_ROOTS)}); give a data file")
    if st.st_size == 0:
        raise DataError(f"{what} {path} is empty (0 bytes)")
    if not os.access(path, os.R_OK):
        raise DataError(f"{what} {path} is not readable (permission denied)")
    return path


def exists(path: Path, what: str) -> bool:
    """``path.exists()`` that turns a name the filesystem cannot hold (too long, a NUL byte) into a DataError."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise DataError(f"{what} {str(path)[:120]}{'...' if len(str(path)) > 120 else ''} is not a usable path: {reason}") from None
    return True


def system_path(path: Path) -> bool:
    resolved = str(Path(path).resolve())
    return any(resolved == root or resolved.startswith(root + "/") for root in SYSTEM_ROOTS)


def kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"
