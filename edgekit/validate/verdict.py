"""The verdicts: a target's status from what happened to it, and the build's exit code from the statuses."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from edgekit.types import GateVerdict, TargetResult
from edgekit.validate.gates import measured_key


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


def point_to_passing(results: Mapping[str, TargetResult], peers: Mapping[str, str]) -> None:
    """The post-pass of ``target_status`` over a whole build: a target that failed a gate gets, in its reason, the
    targets that passed among its ``peers`` (target -> peer-group key: same precision, same device class), with the
    value of the gate it failed and their speed-up: "...; ort-int8-dynamic passed at cosine 0.9965, 1.6x"."""
    for name, r in results.items():
        if r.status != "failed" or name not in peers:
            continue
        failed = next((g for g in r.gates if g.passed is False), None)
        hints = []
        for other, o in results.items():
            if other == name or o.status != "passed" or peers.get(other) != peers[name]:
                continue
            same = next((g for g in o.gates if failed is not None and g.gate == failed.gate and g.value is not None), None)
            parts = [f"{measured_key(same.gate)} {same.value:.4g}"] if same is not None else []
            if o.latency is not None and o.latency.speedup_vs_ort_fp32 is not None:
                parts.append(f"{o.latency.speedup_vs_ort_fp32:.2g}x")
            hints.append(f"{other} passed" + (f" at {', '.join(parts)}" if parts else ""))
        if hints:
            r.reason = "; ".join([r.reason, *hints])


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
