"""Shared settings of the fuzz campaigns: a fixed seed and a small example count in ``make test``; ``make fuzz``
raises the count (EDGEKIT_FUZZ_EXAMPLES) and passes its own seed (--hypothesis-seed)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st

from edgekit.errors import EdgekitError

EXAMPLES = int(os.environ.get("EDGEKIT_FUZZ_EXAMPLES", "0")) or None
LONG = EXAMPLES is not None  # make fuzz: many examples, the seed given on the command line

FUZZ = settings(
    max_examples=EXAMPLES or 30,
    derandomize=not LONG,  # make test: the same examples every run
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    print_blob=True,
)


def scaled(fast: int) -> settings:
    """FUZZ with ``fast`` examples in make test (the long run's count is the same for every campaign)."""
    return settings(FUZZ, max_examples=EXAMPLES or fast)


def outcome(fn, *args, **kwargs):
    """Run ``fn``: a success returns its value; an EdgekitError (exit 2) returns the error; anything else fails."""
    try:
        value = fn(*args, **kwargs)
    except EdgekitError as exc:
        event(f"{getattr(fn, '__name__', fn)}: {type(exc).__name__}")
        assert exc.exit_code == 2, f"{type(exc).__name__} with exit {exc.exit_code}: {exc}"
        assert str(exc).strip() and "\n" not in str(exc).strip(), f"not one line: {exc!r}"
        return exc
    event(f"{getattr(fn, '__name__', fn)}: accepted")
    return value


# TOML values of every kind, including the absurd ones users type
toml_scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, -1, 1, 10**6, 10**12, 10**18]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["yes", "no", "auto", "", "int8", "uint8", "minmax", "/dev/zero", "/proc/self/status",
                     "../../etc/passwd", "x" * 300, "example:digits", "net.py:build", "calib.npz"]),
)
toml_values = st.recursive(toml_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                  st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                           max_leaves=6)
