"""The error tree of edgekit; every class knows the exit code it maps to.

    EdgekitError                      (exit 2 unless said otherwise)
    ├── UsageError                    bad command line: unknown target, missing argument
    ├── ConfigError                   malformed/misspelled TOML, bad values
    ├── ProfileError                  a target profile that cannot be loaded
    ├── ModelError                    model file missing/corrupt, factory raises, export fails
    │   └── WeightsError              weights unsafe, missing, or not fitting the model
    ├── DataError                     calibration/validation data missing, mismatched, NaN/Inf, empty
    ├── OutputDirError                output directory unwritable or not ours
    ├── TamperError                   an artifact's bytes differ from its manifest
    └── TargetUnavailableError        exit 3: a target cannot run here and --strict was given

Library code raises these; only ``edgekit.cli`` turns them into a message and an exit code.
"""

from __future__ import annotations

from typing import Iterable


class EdgekitError(Exception):
    """Base of every error a user can cause; ``str(err)`` is the one line shown."""

    exit_code = 2


class UsageError(EdgekitError):
    """The command line asks for something that does not exist."""


class ConfigError(EdgekitError):
    """The build configuration is malformed, misspelled or inconsistent."""


class ProfileError(EdgekitError):
    """A target profile is missing or invalid."""


class ModelError(EdgekitError):
    """The model source cannot be found, imported, built or exported."""


class WeightsError(ModelError):
    """The weights file is unsafe, unreadable, or does not fit the model."""


class DataError(EdgekitError):
    """Calibration, validation or training data is unusable."""


class OutputDirError(EdgekitError):
    """The output directory cannot be written or would clobber foreign files."""


class TamperError(EdgekitError):
    """An artifact on disk no longer matches the sha256 its manifest vouches for."""


class TargetUnavailableError(EdgekitError):
    """A requested target cannot run on this host and ``--strict`` was given."""

    exit_code = 3


def did_you_mean(word: object, choices: Iterable[str], otherwise: str = "") -> str:
    """"; did you mean 'x'?" for the choice nearest ``word``, or ``otherwise`` when none is close: the tail every
    "unknown name" message in edgekit ends with."""
    import difflib

    near = difflib.get_close_matches(str(word), list(choices), n=1)
    return f"; did you mean '{shown(near[0])}'?" if near else otherwise


def shown(word: object, limit: int = 80) -> str:
    """``word`` as a message shows it: control characters escaped (a key holding a newline stays one line), long
    values cut."""
    text = str(word)
    if not text.isprintable():
        text = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[:limit] + "…"
