"""The verdicts: a target's status from what happened to it, and the build's exit code from the statuses."""

from __future__ import annotations

from typing import Iterable, Sequence

from edgekit.types import GateVerdict


def target_status(error: str = "", gates: Sequence[GateVerdict] = (), unavailable: str = "") -> tuple[str, str]:
    """(status, reason) of one target, the only place a status is decided.

    ``error``: the build, load, run or timing failure; ``gates``: the verdicts (empty when not validated);
    ``unavailable``: why the target cannot run here (for a host proxy: why its numbers are not the target's).
    An error wins over a failed gate, a failed gate over unavailability: a proxy that fails its gates failed.
    """
    if error:
        return "error", error
    failed = [g.message for g in gates if g.passed is False]
    if failed:
        return "failed", "; ".join(failed)
    if unavailable:
        return "unavailable", unavailable
    return "passed", ""


def exit_code(statuses: Iterable[str], strict: bool) -> int:
    """0: every target built and passed its gates.
    1: work done, but a gate failed or a target errored (artifacts written, marked failed/error).
    3: a target is unavailable on this host and --strict was given.
    (2, bad input, never reaches a manifest: it stops the build before anything is written.)
    """
    seen = set(statuses)
    if strict and "unavailable" in seen:
        return 3
    if seen & {"failed", "error"}:
        return 1
    return 0
