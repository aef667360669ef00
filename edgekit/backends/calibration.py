"""The calibration samples every INT8 backend reads: the first ``settings.samples`` of the source, batched by one rule."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from edgekit.backends.base import CalibrationSettings
from edgekit.types import Feed, FeedSource, TensorSpec, batch_rows


def calibration_batch_size(specs: tuple[TensorSpec, ...], settings: CalibrationSettings) -> int:
    """``settings.batch_size`` when every input's axis 0 is dynamic, else 1 (``types.batch_rows``)."""
    return batch_rows(specs, settings.batch_size)


def calibration_feeds(source: FeedSource, specs: tuple[TensorSpec, ...], settings: CalibrationSettings) -> Iterator[Feed]:
    """One pass over the first ``settings.samples`` samples of ``source`` as contiguous feeds in each input's dtype."""
    left = settings.samples
    for batch in source.batches(calibration_batch_size(specs, settings)):
        if left <= 0:
            return
        feed = {s.name: np.ascontiguousarray(batch.feed[s.name][:left], dtype=s.dtype) for s in specs}
        left -= next(iter(feed.values())).shape[0]
        yield feed
