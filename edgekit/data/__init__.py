"""Calibration / validation / training data: open a source, check it against the model, stream batches."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Iterator

import numpy as np

from edgekit.config import DataConfig
from edgekit.data.checks import conform, conform_labels
from edgekit.errors import DataError
from edgekit.types import Batch, TensorSpec

log = logging.getLogger(__name__)

__all__ = ["ArraySource", "open_feed", "overlap"]


class ArraySource:
    """A FeedSource over a list of files (.npz / .npy), each holding one sample or a batch of samples.

    Files are read one at a time and sliced into batches, so memory is bounded by one file plus one batch.
    """

    def __init__(self, files: list[Path], specs: tuple[TensorSpec, ...], labels: str | None, samples: int | None, description: str):
        self.files = files
        self.specs = specs
        self.label_key = labels
        self.limit = samples
        self.description = description

    def _read(self, path: Path) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        origin = str(path)
        try:
            if path.suffix == ".npy":
                arrays = {"": np.load(path, allow_pickle=False)}
            else:
                with np.load(path, allow_pickle=False) as npz:
                    arrays = {k: npz[k] for k in npz.files}
        except ValueError as exc:
            if "pickle" in str(exc).lower():
                raise DataError(f"{origin} holds pickled objects, which are refused; store plain numeric arrays") from None
            raise DataError(f"{origin} is not a readable .npy/.npz file: {exc}") from None
        except (OSError, EOFError) as exc:
            raise DataError(f"{origin} is not a readable .npy/.npz file: {exc}") from None
        labels = None
        if self.label_key is not None:
            if self.label_key not in arrays:
                raise DataError(f"{origin} has no labels key '{self.label_key}'; its keys: {sorted(arrays)}")
            labels = arrays.pop(self.label_key)
        names = [s.name for s in self.specs]
        if set(names) <= set(arrays):
            picked = {s.name: arrays[s.name] for s in self.specs}
        elif len(self.specs) == 1 and len(arrays) == 1:
            picked = {names[0]: next(iter(arrays.values()))}
        else:
            missing = sorted(set(names) - set(arrays))
            raise DataError(
                f"{origin} lacks model input(s) {missing}; it holds {sorted(k for k in arrays if k)}; "
                f"store arrays keyed by input name ({', '.join(names)})"
            )
        feed = {s.name: conform(picked[s.name], s, origin) for s in self.specs}
        counts = {k: v.shape[0] for k, v in feed.items()}
        if len(set(counts.values())) != 1:
            raise DataError(f"{origin}: inputs hold different numbers of samples {counts}")
        if labels is not None:
            labels = conform_labels(labels, next(iter(counts.values())), origin, self.label_key)
        return feed, labels

    def _samples(self) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        left = self.limit
        for path in self.files:
            feed, labels = self._read(path)
            n = next(iter(feed.values())).shape[0]
            if left is not None:
                n = min(n, left)
                left -= n
            yield {k: v[:n] for k, v in feed.items()}, (labels[:n] if labels is not None else None)
            if left is not None and left <= 0:
                return

    def batches(self, batch_size: int) -> Iterator[Batch]:
        pending: list[tuple[dict[str, np.ndarray], np.ndarray | None]] = []
        held = 0
        for feed, labels in self._samples():
            pending.append((feed, labels))
            held += next(iter(feed.values())).shape[0]
            while held >= batch_size:
                batch, pending, held = _take(pending, batch_size)
                yield batch
        if held:
            yield _take(pending, held)[0]

    def count(self) -> int:
        return sum(next(iter(feed.values())).shape[0] for feed, _ in self._samples())

    def check(self) -> int:
        """Read everything once (bounded memory): every problem surfaces before any work starts."""
        total = self.count()
        if total == 0:
            raise DataError(f"{self.description} holds no samples")
        return total

    def sample_hashes(self) -> set[str]:
        hashes = set()
        for feed, _ in self._samples():
            n = next(iter(feed.values())).shape[0]
            for i in range(n):
                h = hashlib.sha1()
                for name in sorted(feed):
                    h.update(np.ascontiguousarray(feed[name][i]).tobytes())
                hashes.add(h.hexdigest())
        return hashes

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for path in self.files:
            h.update(path.name.encode())
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        h.update(str(self.limit).encode())
        return h.hexdigest()


def _take(pending, size):
    """Cut ``size`` samples off the front of the pending pieces."""
    feeds, labels, used, rest = [], [], 0, []
    for i, (feed, lab) in enumerate(pending):
        n = next(iter(feed.values())).shape[0]
        if used >= size:
            rest.append((feed, lab))
            continue
        k = min(n, size - used)
        feeds.append({name: v[:k] for name, v in feed.items()})
        labels.append(lab[:k] if lab is not None else None)
        if k < n:
            rest.append(({name: v[k:] for name, v in feed.items()}, lab[k:] if lab is not None else None))
        used += k
    feed = {name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]}
    lab = np.concatenate(labels) if labels and labels[0] is not None else None
    return Batch(feed, lab), rest, sum(next(iter(f.values())).shape[0] for f, _ in rest)


def open_feed(cfg: DataConfig, specs: tuple[TensorSpec, ...], role: str) -> ArraySource:
    """Open and fully check the data a config section names; ``role`` names the section in messages."""
    path = Path(cfg.data)
    if not path.exists():
        raise DataError(f"[{role}] data {path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz") and p.is_file())
        if not files:
            raise DataError(f"[{role}] data folder {path} holds no .npy or .npz files")
        if any(p.suffix == ".npy" for p in files) and len(specs) > 1:
            raise DataError(f"[{role}] data folder {path} holds .npy files, but the model has {len(specs)} inputs; use .npz keyed by input name")
    elif path.suffix in (".npz", ".npy"):
        files = [path]
    else:
        raise DataError(f"[{role}] data {path} is not a .npz/.npy file or a folder of them")
    source = ArraySource(files, specs, cfg.labels, cfg.samples, f"[{role}] data {path}")
    total = source.check()
    log.info("%s: %d samples", source.description, total)
    return source


def overlap(a: ArraySource, b: ArraySource) -> int:
    """How many samples two sources share (calibration and validation should share none)."""
    return len(a.sample_hashes() & b.sample_hashes())
