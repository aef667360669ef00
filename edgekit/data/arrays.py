"""The .npy/.npz reader: files (or a folder of them), each one sample or a batch, checked byte-wise before numpy.

Before numpy parses anything, every file and zip member is checked to be what its name says: a regular file, a
.npy header (or a zip of .npy members) whose declared shape fits the bytes present. So a truncated .npz, a text
file named .npy, a zip member that is not an array, a zero-byte member or a header declaring a terabyte are each
an error naming the file, never a numpy exception or an allocation.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from tokenize import TokenError
from typing import IO, Iterator

import numpy as np

from edgekit.data.checks import conform, conform_labels, regular_file
from edgekit.data.stream import Piece, StreamSource
from edgekit.errors import DataError
from edgekit.errors import shown as errors_shown
from edgekit.fsutil import hash_file
from edgekit.types import TensorSpec

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


# numpy parses a .npy header with ast.literal_eval: a damaged header raises what Python's parser raises
# (SyntaxError, tokenize.TokenError, ...), not only ValueError (found by tests/fuzz/test_fuzz_data.py)
HEADER_ERRORS = (ValueError, EOFError, OSError, SyntaxError, TokenError, TypeError, KeyError, RecursionError, MemoryError)


def npy_header(fp: IO[bytes], size: int, origin: str) -> None:
    """Check one .npy stream of ``size`` bytes: magic, a readable header, data bytes matching the declared shape."""
    head = fp.read(6)
    if head != NPY_MAGIC:
        if head[:1] == b"\x80":
            raise DataError(f"{origin} holds pickled objects, which are refused; store plain numeric arrays")
        shown = repr(head[:6]) if head else "nothing (0 bytes)"
        raise DataError(f"{origin} is not a .npy file (it starts with {shown}); save arrays with numpy.save/numpy.savez")
    fp.seek(0)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp, max_header_size=10000)
    except HEADER_ERRORS as exc:
        raise DataError(f"{origin} has a corrupt .npy header ({type(exc).__name__}: {errors_shown(exc)}); save it "
                        "again with numpy.save") from None
    if dtype.hasobject:
        raise DataError(f"{origin} holds pickled objects, which are refused; store plain numeric arrays")
    want = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    have = size - fp.tell()
    if want > have:
        raise DataError(f"{origin} is truncated: its header declares shape {tuple(shape)} {dtype} ({want} bytes) but "
                        f"{have} bytes of data follow; save it again")


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of one .npy (key "") or .npz file, each checked before it is parsed."""
    origin = str(path)
    regular_file(path, "data file")
    with open(path, "rb") as fh:
        head = fh.read(4)
        fh.seek(0)
        if path.suffix == ".npy":
            if head in ZIP_MAGIC:
                raise DataError(f"{origin} is a zip archive (an .npz?), not a .npy file; name it .npz")
            npy_header(fh, path.stat().st_size, origin)
            return {"": _parse(lambda: np.load(path, allow_pickle=False), origin)}
        if head not in ZIP_MAGIC:
            hint = "; it is a .npy file: name it .npy" if head[:4] == NPY_MAGIC[:4] else ""
            raise DataError(f"{origin} is not a .npz file (not a zip archive){hint}; save arrays with numpy.savez")
    try:
        with zipfile.ZipFile(path) as zf:
            members = zf.infolist()
            if not members:
                raise DataError(f"{origin} is an empty .npz (no arrays)")
            for m in members:
                where = f"{origin} member '{m.filename}'"
                if not m.filename.endswith(".npy"):
                    raise DataError(f"{where} is not a .npy array; an .npz holds only arrays (numpy.savez)")
                with zf.open(m) as fp:
                    npy_header(fp, m.file_size, where)
            zf.testzip()
    except zipfile.BadZipFile as exc:
        raise DataError(f"{origin} is not a valid .npz: the zip archive is truncated or corrupt ({exc})") from None
    except (OSError, EOFError, RuntimeError, NotImplementedError) as exc:
        raise DataError(f"{origin} is not a readable .npz: {exc}") from None

    def load() -> dict[str, np.ndarray]:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}

    return _parse(load, origin)


def _parse(load, origin: str):
    try:
        return load()
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataError(f"{origin} holds pickled objects, which are refused; store plain numeric arrays") from None
        raise DataError(f"{origin} is not a readable .npy/.npz file: {exc}") from None
    except (OSError, EOFError, zipfile.BadZipFile, *HEADER_ERRORS) as exc:
        raise DataError(f"{origin} is not a readable .npy/.npz file: {type(exc).__name__}: {errors_shown(exc)}") from None


class ArraySource(StreamSource):
    """A FeedSource over a list of files (.npz / .npy), each holding one sample or a batch of samples.

    Files are read one at a time and sliced into batches, so memory is bounded by one file plus one batch. In a
    folder, a file may hold one sample without the batch axis; a single data file must have the batch axis."""

    def __init__(self, files: list[Path], specs: tuple[TensorSpec, ...], labels: str | None, samples: int | None,
                 description: str, folder: bool = False):
        super().__init__(specs, labels, samples, description)
        self.files = files
        self.folder = folder

    def _read(self, path: Path) -> Piece:
        origin = str(path)
        arrays = read_arrays(path)
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
        feed = {s.name: conform(picked[s.name], s, origin, one_sample_ok=self.folder) for s in self.specs}
        counts = {k: v.shape[0] for k, v in feed.items()}
        if len(set(counts.values())) != 1:
            raise DataError(f"{origin}: inputs hold different numbers of samples {counts}")
        if labels is not None:
            labels = conform_labels(labels, next(iter(counts.values())), origin, self.label_key)  # type: ignore[arg-type]
        return Piece(feed, labels)

    def pieces(self) -> Iterator[Piece]:
        for path in self.files:
            yield self._read(path)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for path in self.files:
            h.update(path.name.encode())
            hash_file(h, path)
        h.update(str(self.limit).encode())
        return h.hexdigest()


def array_files(folder: Path) -> list[Path]:
    """The .npy/.npz files directly in ``folder``, sorted (each checked when it is read)."""
    return sorted(p for p in folder.iterdir() if p.suffix in (".npy", ".npz") and not p.name.startswith("."))
