"""All terminal output: one-line messages, and progress that shows on a TTY and stays quiet in CI/logs."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from typing import Iterator, Protocol, TextIO


class Progress(Protocol):
    """What the pipeline, the validator and compress report while they work; Console and Silent implement it."""

    def step(self, text: str) -> None:
        """A long step starts."""

    def advance(self, label: str, done: int, total: int) -> None:
        """Progress within a step: ``done`` of ``total``."""

    def warn(self, text: str) -> None:
        """Something the user should know about the result."""

    def note(self, text: str) -> None:
        """A one-line message that is not a warning."""


class Console:
    """Prints results to stdout, messages to stderr, progress only when stderr is a terminal."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None, progress: bool | None = None, quiet: bool = False):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        if progress is None:
            progress = self.err.isatty() and not os.environ.get("CI")
        self.show_progress = progress and not quiet
        self.quiet = quiet
        self._line_open = False
        self._last = 0.0

    def result(self, text: str) -> None:
        self._close_line()
        print(text, file=self.out, flush=True)

    def note(self, text: str) -> None:
        if not self.quiet:
            self._close_line()
            print(text, file=self.err, flush=True)

    def warn(self, text: str) -> None:
        self._close_line()
        print(f"warning: {text}", file=self.err, flush=True)

    def error(self, text: str) -> None:
        self._close_line()
        one_line = " ".join(part.strip() for part in str(text).splitlines() if part.strip())  # an error is one line
        print(f"error: {one_line}", file=self.err, flush=True)

    # Progress ------------------------------------------------------------------------------------
    def step(self, text: str) -> None:
        """A long step starts; shown on a TTY (and in non-quiet logs as one line)."""
        if self.show_progress:
            self._close_line()
            print(f"• {text}", file=self.err, flush=True)

    def advance(self, label: str, done: int, total: int) -> None:
        """Progress within a step: redrawn in place on a TTY, silent otherwise."""
        if not self.show_progress:
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        width = 24
        filled = int(width * done / max(total, 1))
        print(f"\r  {label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="", file=self.err, flush=True)
        self._line_open = done < total
        if done >= total:
            print(file=self.err, flush=True)

    def _close_line(self) -> None:
        if self._line_open:
            print(file=self.err, flush=True)
            self._line_open = False


class Silent:
    """The pipeline's default Progress for library use: shows nothing; warnings go to the ``edgekit`` logger."""

    def step(self, text: str) -> None:
        pass

    def advance(self, label: str, done: int, total: int) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def warn(self, text: str) -> None:
        logging.getLogger("edgekit").warning(text)


class LibraryLog(logging.Handler):
    """Warnings that libraries log (onnxruntime's quantizer on the root logger, numpy/torch ``warnings`` through
    ``logging.captureWarnings``) are counted here instead of printed between edgekit's lines; ``summary()`` is one
    note for the end of the command. edgekit's own loggers pass through to the terminal handler."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()
        self.first: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        name = "warnings" if record.name == "py.warnings" else record.name
        self.counts[name] += 1
        self.first.setdefault(name, " ".join(record.getMessage().split())[:120])

    def summary(self) -> str:
        if not self.counts:
            return ""
        parts = [f"{name} x{n} (first: {self.first[name]})" for name, n in self.counts.most_common(3)]
        return f"{sum(self.counts.values())} library warning(s) hidden: {'; '.join(parts)}; --debug shows them"


def _ours(record: logging.LogRecord) -> bool:
    return record.name == "edgekit" or record.name.startswith("edgekit.")


def route_library_logs(debug: bool) -> LibraryLog | None:
    """Without --debug, library warnings go to a LibraryLog (returned) and never to the terminal; edgekit's own
    log lines and every line in --debug are printed as before."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if debug:
        return None
    logging.captureWarnings(True)
    root = logging.getLogger()
    for handler in root.handlers:
        if not isinstance(handler, LibraryLog) and not getattr(handler, "_edgekit_filtered", False):
            handler.addFilter(_ours)
            handler._edgekit_filtered = True  # type: ignore[attr-defined]
    collector = LibraryLog()
    collector.addFilter(lambda r: not _ours(r))
    root.addHandler(collector)
    return collector


def unroute_library_logs(collector: LibraryLog | None) -> None:
    if collector is not None:
        logging.getLogger().removeHandler(collector)
        logging.captureWarnings(False)


@contextlib.contextmanager
def silenced_fds() -> Iterator[list[str]]:
    """stdout and stderr at the file-descriptor level go to a temp file for the block (C++ libraries such as
    onnxsim and torch print there, past Python's sys.stdout); the captured text is in the yielded list after."""
    captured: list[str] = []
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
    except (OSError, ValueError):  # no real descriptors (an embedding host): nothing to silence
        yield captured
        return
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield captured
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            captured.append(sink.read().decode("utf-8", "replace"))
