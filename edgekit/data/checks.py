"""Checks every data reader applies: names, shapes, dtypes against the model; NaN/Inf; emptiness."""

from __future__ import annotations

import numpy as np

from edgekit.errors import DataError
from edgekit.types import TensorSpec


def conform(array: np.ndarray, spec: TensorSpec, origin: str) -> np.ndarray:
    """Return ``array`` as a batch for ``spec`` (adding the batch axis to a single sample) or raise DataError."""
    where = f"{origin}: input '{spec.name}'"
    if array.dtype == object or array.dtype.kind not in "biuf":
        raise DataError(f"{where} has dtype {array.dtype}; expected numeric data of dtype {spec.dtype}")
    if array.ndim == len(spec.shape) - 1:
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
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise DataError(f"{where} contains {bad} NaN/Inf value(s); clean the data or drop those samples")
    return array.astype(spec.dtype, copy=False)


def conform_labels(labels: np.ndarray, count: int, origin: str, key: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != count:
        raise DataError(f"{origin}: labels '{key}' have shape {tuple(labels.shape)}; expected ({count},), one label per sample")
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
            return labels.astype(np.int64)
        raise DataError(f"{origin}: labels '{key}' must be integer class ids, got dtype {labels.dtype}")
    return labels.astype(np.int64)
