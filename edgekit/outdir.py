"""The output directory: checked before any work, built in a staging folder beside it, moved into place at the end."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from edgekit.errors import OutputDirError
from edgekit.manifest import MANIFEST


def check_output_dir(out: Path) -> Path:
    """The absolute output path, after checking it is a writable directory edgekit may overwrite."""
    out = out.expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"output path {out} is a file; pass a directory with -o")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise OutputDirError(f"output directory {out} holds files that edgekit did not write; choose another -o or empty it")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK | os.X_OK)):
        raise OutputDirError(f"output directory {out} is not writable; choose another -o")
    return out


def make_staging(out: Path) -> Path:
    """An empty folder next to ``out`` that the build writes into."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = out.parent / f".{out.name}.edgekit-partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    except OSError as exc:
        raise OutputDirError(f"cannot create the output directory {out}: {exc.strerror}; choose another -o") from None
    return staging


def promote(staging: Path, out: Path) -> None:
    """Replace ``out`` with the finished staging folder; an earlier build there is removed only after."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.edgekit-old-{os.getpid()}"
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
