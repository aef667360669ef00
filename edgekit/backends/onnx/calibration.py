"""ONNX Runtime's CalibrationDataReader protocol over edgekit's calibration samples."""

from __future__ import annotations

from typing import Iterator

from edgekit.backends.base import CalibrationSettings
from edgekit.backends.calibration import calibration_batch_size, calibration_feeds
from edgekit.types import Feed, FeedSource, TensorSpec


class FeedCalibrationReader:
    """ONNX Runtime's CalibrationDataReader protocol over a FeedSource, limited to ``settings.samples``.

    Readers make several passes (edgekit's range measurements, then ORT's calibrator unless it was handed the
    ranges); when a pass completes, ``samples_read`` / ``batches_read`` are that pass's counts."""

    def __init__(self, source: FeedSource, specs: tuple[TensorSpec, ...], settings: CalibrationSettings):
        self.source, self.specs, self.settings = source, specs, settings
        self.batch_size = calibration_batch_size(specs, settings)
        self.batches_read = 0
        self.samples_read = 0
        self._it: Iterator[Feed] | None = None

    def _pass(self) -> Iterator[Feed]:
        samples = batches = 0
        for feed in calibration_feeds(self.source, self.specs, self.settings):
            batches += 1
            samples += next(iter(feed.values())).shape[0]
            yield feed
        self.samples_read, self.batches_read = samples, batches

    def get_next(self) -> Feed | None:
        if self._it is None:
            self._it = self._pass()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None

    def passes(self) -> Iterator[Feed]:
        """One whole pass from the start, leaving the reader rewound for the next user."""
        self.rewind()
        while (feed := self.get_next()) is not None:
            yield feed
        self.rewind()
