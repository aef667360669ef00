"""All terminal output: one-line messages, and progress that shows on a TTY and stays quiet in CI/logs."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Protocol, TextIO


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
