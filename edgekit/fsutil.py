"""Atomic file writes (a temp file in the same folder, fsync, then rename; readers never see half a file) and file
hashing in bounded memory."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from edgekit import strictjson


CHUNK = 1 << 20


def hash_file(digest: "hashlib._Hash", path: Path) -> "hashlib._Hash":
    """``digest`` updated with the bytes of ``path``, read in 1 MiB chunks (weights files can exceed memory)."""
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest


def file_sha256(path: Path) -> str:
    return hash_file(hashlib.sha256(), path).hexdigest()


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts are ordinary files
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """``obj`` as strict JSON (edgekit.strictjson: no NaN/Infinity) at ``path``."""
    atomic_write_text(path, strictjson.dumps(obj, default=_jsonable, indent=2, sort_keys=True) + "\n")


def atomic_move(src: Path, dst: Path) -> None:
    """Move a finished file (written elsewhere by a library that wants a path) into place atomically."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.moving")
    os.replace(src, tmp) if Path(src).parent == dst.parent else _copy(src, tmp)
    os.replace(tmp, dst)


def _copy(src: Path, dst: Path) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(1 << 20):
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())


def _jsonable(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serializable: {type(obj).__name__}")


# ----------------------------------------------------------------------------------------- input files

_PSEUDO_FS = ("/proc", "/sys", "/dev")  # files there are generated or devices: reading can block or never end


def check_regular_file(path: Path, what: str, max_bytes: int | None = None, error: type[Exception] | None = None) -> Path:
    """``path`` after checking it is an existing, readable regular file (not a FIFO, socket, device, directory or a
    /proc, /sys file), its name fits the filesystem and it is at most ``max_bytes``; else ``error`` (an
    EdgekitError subclass, default EdgekitError: exit 2) naming ``what`` and the path. Never opens the file, so a
    FIFO cannot block."""
    import stat

    from edgekit.errors import EdgekitError

    err = error or EdgekitError
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise err(f"{what} {path} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise err(f"{what} {str(path)[:80]}... has a name longer than the filesystem allows; use a shorter name") from None
        raise err(f"{what} {path} cannot be read: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise err(f"{what} {path} is a directory, not a regular file; pass a file")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a character device" if stat.S_ISCHR(st.st_mode) else "a block device" if stat.S_ISBLK(st.st_mode)
                else "a special file")
        raise err(f"{what} {path} is {kind}, not a regular file; pass a regular file")
    real = os.path.realpath(path)
    if any(real == p or real.startswith(p + "/") for p in _PSEUDO_FS):
        raise err(f"{what} {path} is a {real.split('/')[1]} pseudo-file, not a regular file; pass a regular file")
    if not os.access(path, os.R_OK):
        raise err(f"{what} {path} is not readable (permission denied); check its permissions")
    if max_bytes is not None and st.st_size > max_bytes:
        raise err(f"{what} {path} is {st.st_size:,} bytes, more than the {max_bytes:,} allowed; is it the right file?")
    return path
