"""Faults during a build: SIGINT/SIGTERM become exceptions the build cleans up after (and are held back while the
output folder is swapped or the staging folder removed); a full disk or read-only folder becomes an OutputDirError.

    install()          SIGINT -> KeyboardInterrupt, SIGTERM -> Terminated (exit 143); the CLI calls it
    deferred()         a block no signal cuts short (the signal is raised when the block ends)
    raise_if_signalled()  for code after a library that may swallow KeyboardInterrupt (torch.onnx.export)
    write_fault(exc, where)  the OutputDirError an OSError of writing ``where`` means, or None
"""

from __future__ import annotations

import contextlib
import errno
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

from edgekit.errors import OutputDirError


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (the build cleans up) but ending with exit 143."""

    exit_code = 143


_received: list[int] = []  # signals seen since install(): a library that swallowed one cannot hide it


_pending: list[int] = []  # signals held back by ``deferred``
_deferring = 0


def _handler(signum: int, frame: Any) -> None:
    _received.append(signum)
    if _deferring:
        _pending.append(signum)
        return
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _unraisable(hook: Any) -> Any:
    """A ``sys.unraisablehook`` for a signal that arrived while Python ran a weakref callback or ``__del__``: the
    KeyboardInterrupt the handler raised there cannot propagate, and Python would print it as a traceback and go
    on. Instead it is delivered again, to the main thread's next line, and nothing is printed."""

    def unraisable(info: Any) -> None:
        if isinstance(info.exc_value, KeyboardInterrupt) and _received:
            signum = _received[-1]
            main = threading.main_thread().ident  # a real signal, so a sleep or a wait in the main thread wakes up
            threading.Timer(0.001, signal.pthread_kill, (main, signum)).start()  # after this callback has returned
            return
        hook(info)

    return unraisable


def install() -> Any:
    """SIGINT and SIGTERM raise in the main thread; returns the previous handlers for ``restore``."""
    if threading.current_thread() is not threading.main_thread():
        return None
    _received.clear()
    hook, sys.unraisablehook = sys.unraisablehook, _unraisable(sys.unraisablehook)
    return signal.signal(signal.SIGINT, _handler), signal.signal(signal.SIGTERM, _handler), hook


def restore(previous: Any, exiting: bool = False) -> None:
    """The handlers ``install`` replaced. ``exiting`` (the process ends next, its work done): ignore SIGINT/SIGTERM
    instead, so a signal still pending or sent now cannot turn the exit code into a death by signal."""
    if previous is None or threading.current_thread() is not threading.main_thread():
        return
    _received.clear()  # what this command saw is handled; a later library call must not raise it again
    _pending.clear()
    sys.unraisablehook = previous[2]
    if exiting:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return
    signal.signal(signal.SIGINT, previous[0])
    signal.signal(signal.SIGTERM, previous[1])


def exit_now(code: int) -> None:
    """End the process with ``code`` after a handled signal, output flushed. CPython remembers a KeyboardInterrupt
    that went through a C extension's PyRun_* call even when edgekit caught it, and would end the process by
    SIGINT at exit (status -2 instead of 130); the cleanup that matters has run by now."""
    import os
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def raise_if_signalled() -> None:
    """Raise the signal seen since ``install`` (a library caught the KeyboardInterrupt and went on)."""
    if _received:
        raise Terminated() if _received[-1] == signal.SIGTERM else KeyboardInterrupt()


def interrupted_by(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt that ``exc`` wraps (a library re-raising Ctrl-C as its own error), if any."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    if _received:
        return Terminated() if _received[-1] == signal.SIGTERM else KeyboardInterrupt()
    return None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """SIGINT/SIGTERM held back for the block: the handler records them and the block ends by raising the last one.
    (Not pthread_sigmask: another thread of torch or ONNX Runtime would take the signal and Python would still run
    the handler in the main thread, inside the block.)"""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _pending:
            signum = _pending[-1]
            _pending.clear()
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


WRITE_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                errno.EROFS: "it is on a read-only filesystem", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied", errno.EFBIG: "a file grew beyond the filesystem's limit"}
_TEXTS = {"No space left on device": errno.ENOSPC, "Read-only file system": errno.EROFS,
          "Disk quota exceeded": errno.EDQUOT}


def write_fault(exc: BaseException, where: Path, staging: Path | None = None) -> OutputDirError | None:
    """The OutputDirError for an exception (or one it wraps) that says writing failed for lack of space or a
    read-only filesystem (or permission, on a file in ``where`` or ``staging``); None for anything else. ``where``
    is the output folder named in the message."""
    seen: set[int] = set()
    e: BaseException | None = exc
    ours = tuple(str(p) for p in (where, staging) if p is not None)
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        code = e.errno if isinstance(e, OSError) else None
        if code is None:
            code = next((c for text, c in _TEXTS.items() if text in str(e)), None)
        if code in (errno.EACCES, errno.EPERM):
            name = str(getattr(e, "filename", "") or "")
            code = code if name and name.startswith(ours) else None
        if code in WRITE_ERRNOS:
            return OutputDirError(f"cannot write into {where}: {WRITE_ERRNOS[code]}; free space there or write "
                                  "elsewhere (-o) (nothing half-written was kept)")
        e = e.__cause__ or e.__context__
    return None
