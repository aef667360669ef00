"""The one FeedSource every reader is: checked pieces of samples in, batches of bounded size out.

A reader subclasses ``StreamSource`` and implements ``pieces()``: one pass over its data, yielding ``Piece``s (a few
samples each, already conformed to the model's inputs). Everything else is shared: the sample limit, batching
(a batch ends early where the sample shape changes, so unpadded text of several lengths still batches), the check
pass that reads everything once before any work (counting samples, hashing them, gathering the statistics the
sanity checks read), and the fingerprint.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from edgekit.data.sanity import InputStats
from edgekit.errors import DataError
from edgekit.types import Batch, TensorSpec


@dataclass
class Piece:
    """A few consecutive samples: every input's array with the batch axis first, labels if the data has them."""

    feed: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(next(iter(self.feed.values())).shape[0])

    def head(self, n: int) -> "Piece":
        return Piece({k: v[:n] for k, v in self.feed.items()}, None if self.labels is None else self.labels[:n])

    def tail(self, n: int) -> "Piece":
        return Piece({k: v[n:] for k, v in self.feed.items()}, None if self.labels is None else self.labels[n:])

    def sample_shape(self) -> tuple:
        return tuple((k, v.shape[1:]) for k, v in sorted(self.feed.items()))


class StreamSource:
    """A re-iterable, checked stream of batches over ``pieces()``; memory stays bounded by one piece plus one batch."""

    specs: tuple[TensorSpec, ...]
    description: str
    label_key: str | None
    limit: int | None

    def __init__(self, specs: tuple[TensorSpec, ...], labels: str | None, samples: int | None, description: str):
        self.specs = specs
        self.label_key = labels
        self.limit = samples
        self.description = description
        self.total: int | None = None
        self.stats: dict[str, InputStats] = {}
        self.label_range: tuple[int, int] | None = None
        self.warnings: list[str] = []
        self._hashes: set[str] | None = None
        self._content: str | None = None

    # what a reader implements --------------------------------------------------------------------
    def pieces(self) -> Iterator[Piece]:
        """One pass over the data, as conformed pieces."""
        raise NotImplementedError

    # the shared stream ---------------------------------------------------------------------------
    def samples(self) -> Iterator[Piece]:
        """One pass over the first ``samples`` samples, piece by piece (the streaming API under ``batches``)."""
        left = self.limit
        for piece in self.pieces():
            if left is not None:
                if piece.size > left:
                    piece = piece.head(left)
                left -= piece.size
            if piece.size:
                yield piece
            if left is not None and left <= 0:
                return

    def batches(self, batch_size: int) -> Iterator[Batch]:
        pending: list[Piece] = []
        held = 0
        for piece in self.samples():
            if pending and piece.sample_shape() != pending[0].sample_shape():
                yield _join(pending)
                pending, held = [], 0
            pending.append(piece)
            held += piece.size
            while held >= batch_size:
                batch, pending = _take(pending, batch_size)
                held -= batch_size
                yield batch
        if held:
            yield _join(pending)

    def count(self) -> int:
        if self.total is None:
            self.check()
        return self.total  # type: ignore[return-value]

    def check(self) -> int:
        """Read everything once (bounded memory): every problem surfaces before any work starts; the counts, hashes
        and statistics of this pass are kept for the sanity checks and the overlap and fingerprint questions."""
        stats = {s.name: InputStats(s.name, s.dtype) for s in self.specs}
        hashes: set[str] = set()
        content = hashlib.sha256()
        total, low, high = 0, None, None
        for piece in self.samples():
            for name, arr in piece.feed.items():
                stats[name].update(arr)
            for i in range(piece.size):
                h = hashlib.sha1()
                for name in sorted(piece.feed):
                    h.update(np.ascontiguousarray(piece.feed[name][i]).tobytes())
                hashes.add(h.hexdigest())
                content.update(h.digest())
            if piece.labels is not None and piece.labels.size:
                content.update(np.ascontiguousarray(piece.labels).tobytes())
                low = int(piece.labels.min()) if low is None else min(low, int(piece.labels.min()))
                high = int(piece.labels.max()) if high is None else max(high, int(piece.labels.max()))
            total += piece.size
        if total == 0:
            raise DataError(f"{self.description} holds no samples")
        self.total, self.stats, self._hashes = total, stats, hashes
        self.label_range = None if low is None else (low, high)  # type: ignore[assignment]
        self._content = content.hexdigest()
        return total

    def sample_hashes(self) -> set[str]:
        if self._hashes is None:
            self.check()
        return self._hashes  # type: ignore[return-value]

    def fingerprint(self) -> str:
        """A hash of the samples as the model sees them (after decoding and preprocessing) and their labels."""
        if self._content is None:
            self.check()
        return self._content  # type: ignore[return-value]


def _join(pieces: list[Piece]) -> Batch:
    if len(pieces) == 1:
        return Batch(pieces[0].feed, pieces[0].labels)
    feed = {name: np.concatenate([p.feed[name] for p in pieces]) for name in pieces[0].feed}
    labels = np.concatenate([p.labels for p in pieces]) if pieces[0].labels is not None else None
    return Batch(feed, labels)


def _take(pending: list[Piece], size: int) -> tuple[Batch, list[Piece]]:
    """Cut ``size`` samples off the front of the pending pieces."""
    used, taken, rest = 0, [], []
    for piece in pending:
        if used >= size:
            rest.append(piece)
            continue
        k = min(piece.size, size - used)
        taken.append(piece.head(k) if k < piece.size else piece)
        if k < piece.size:
            rest.append(piece.tail(k))
        used += k
    return _join(taken), rest
