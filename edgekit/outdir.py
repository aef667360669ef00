"""The output directory: checked before any work, built in a staging folder beside it, moved into place at the end."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from edgekit.errors import OutputDirError
from edgekit.manifest import MANIFEST


STAGING_EXTRA = len(".edgekit-partial-") + 1 + 10  # the staging folder's name: "." + name + this + a pid


def _name_max(path: Path) -> int:
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    try:
        return os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_output_dir(out: Path) -> Path:
    """The absolute output path, after checking it is a writable directory edgekit may overwrite."""
    out = out.expanduser().absolute()
    limit = _name_max(out)
    long = next((part for part in out.parts if len(part.encode()) > limit), None)
    if long is not None or len(out.name.encode()) + STAGING_EXTRA > limit:
        raise OutputDirError(f"output directory name {(long or out.name)[:40]}... is too long for the filesystem "
                             f"(at most {limit - STAGING_EXTRA} bytes for the folder's own name); choose a shorter -o")
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"output path {out} is a file; pass a directory with -o")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise OutputDirError(f"output directory {out} holds files that edgekit did not write; choose another -o or empty it")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK | os.X_OK)):
        readonly = bool(os.statvfs(parent).f_flag & os.ST_RDONLY)
        why = "is on a read-only filesystem" if readonly else "is not writable"
        raise OutputDirError(f"output directory {out} {why}; choose another -o")
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(out: Path) -> None:
    """Folders a killed build (SIGKILL, power loss) left beside ``out``: an earlier build moved aside goes back
    when ``out`` is missing, staging folders are removed. Folders of builds still running are left alone."""
    if not out.parent.is_dir():
        return
    for entry in out.parent.glob(f".{out.name}.edgekit-*-*"):
        kind, _, pid = entry.name[len(out.name) + 10:].partition("-")
        if not pid.isdigit() or _alive(int(pid)) or kind not in ("partial", "old"):
            continue
        if kind == "old" and not out.exists():
            os.replace(entry, out)
        else:
            shutil.rmtree(entry, ignore_errors=True)


def make_staging(out: Path) -> Path:
    """An empty folder next to ``out`` that the build writes into."""
    try:
        recover(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = out.parent / f".{out.name}.edgekit-partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    except OSError as exc:
        raise OutputDirError(f"cannot create the output directory {out}: {exc.strerror}; choose another -o") from None
    return staging


def promote(staging: Path, out: Path) -> None:
    """Replace ``out`` with the finished staging folder; an earlier build there is removed only after. Another
    build finishing into ``out`` at the same moment is replaced too (the last one to finish wins, whole)."""
    old = out.parent / f".{out.name}.edgekit-old-{os.getpid()}"
    for attempt in range(3):
        moved = False
        if out.exists():
            try:
                os.replace(out, old)
                moved = True
            except FileNotFoundError:  # another build moved it aside first
                pass
        try:
            os.replace(staging, out)
            break
        except OSError as exc:
            if moved and not out.exists():
                os.replace(old, out)  # the earlier build back in place, whole
                moved = False
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or attempt == 2:
                raise
        finally:
            if moved:
                shutil.rmtree(old, ignore_errors=True)
