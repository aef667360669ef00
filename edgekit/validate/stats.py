"""Confidence intervals for the accuracy gates (pure stdlib): Wilson's score interval for one proportion, Newcombe's
hybrid score interval (1998, method 10) for the difference of two paired proportions, and the sample count a gate
would need to be decided."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: two-sided 95% intervals
MAX_SAMPLES = 10_000_000  # "samples needed" searches stop here (the answer is then "more than this")


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval of a proportion (no continuity correction); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denom = 1 + z * z / n
    return max(0.0, (centre - half) / denom), min(1.0, (centre + half) / denom)


@dataclass(frozen=True)
class Paired:
    """The paired 2x2 table of a reference and a candidate classifying the same samples against labels:
    ``both`` right, ``ref_only`` right (the candidate flipped a right answer), ``new_only`` right, ``neither``."""

    both: int
    ref_only: int
    new_only: int
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.ref_only + self.new_only + self.neither

    @property
    def drop(self) -> float:
        """Reference accuracy minus the candidate's, as a fraction."""
        return (self.ref_only - self.new_only) / self.n if self.n else 0.0

    def scaled(self, factor: float) -> "Paired":
        """The same proportions on ``factor`` times as many samples (rounded): what more data would likely show."""
        return Paired(*(round(c * factor) for c in (self.both, self.ref_only, self.new_only, self.neither)))


def paired_difference(t: Paired, z: float = Z95) -> tuple[float, float]:
    """Newcombe's interval (1998, method 10) of p_ref - p_new for paired proportions: the Wilson intervals of both
    accuracies, combined with their correlation (phi, continuity-corrected as in the paper)."""
    n = t.n
    if n == 0:
        return -1.0, 1.0
    r, s, u, v = t.both, t.ref_only, t.new_only, t.neither  # rows: reference right/wrong; columns: candidate
    p1, p2 = (r + s) / n, (r + u) / n
    l1, u1 = wilson(r + s, n, z)
    l2, u2 = wilson(r + u, n, z)
    phi = 0.0
    margins = (r + s) * (u + v) * (r + u) * (s + v)
    if margins > 0:
        cross = r * v - s * u
        corrected = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)
        phi = corrected / math.sqrt(margins)
    d = p1 - p2
    lower = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    upper = d + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return max(-1.0, lower), min(1.0, upper)


def straddles(interval: tuple[float, float], bound: float) -> bool:
    """Whether ``bound`` lies strictly inside the interval: the data cannot tell on which side the truth is."""
    return interval[0] < bound < interval[1]


def samples_to_decide(interval_at: Callable[[int], tuple[float, float]], n: int, bound: float) -> int | None:
    """About how many samples would put ``bound`` outside the interval, if more data showed the proportions seen on
    ``n`` (``interval_at(m)``: the interval on m samples); None when even MAX_SAMPLES would not."""
    def decided(m: int) -> bool:
        return not straddles(interval_at(m), bound)

    if n <= 0:
        return None
    if decided(n):
        return n
    hi = n
    while not decided(hi):
        hi *= 2
        if hi > MAX_SAMPLES:
            return None
    lo = hi // 2
    while hi - lo > max(1, lo // 100):  # 1% is precise enough for "about N samples"
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if decided(mid) else (mid, hi)
    return hi


@dataclass(frozen=True)
class DropInterval:
    """The accuracy drop's interval, in points, on ``m`` samples shaped like ``table``."""

    table: Paired

    def __call__(self, m: int) -> tuple[float, float]:
        low, high = paired_difference(self.table.scaled(m / self.table.n) if m != self.table.n else self.table)
        return 100.0 * low, 100.0 * high


@dataclass(frozen=True)
class RateInterval:
    """A rate's Wilson interval on ``m`` samples with ``successes / n`` observed."""

    successes: int
    n: int

    def __call__(self, m: int) -> tuple[float, float]:
        return wilson(round(self.successes * m / self.n), m)
