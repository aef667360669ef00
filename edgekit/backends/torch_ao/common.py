"""Small helpers the torch_* backend modules share: module paths, outputs as a list, one-line errors, and the
engine, thread-count and warning scopes every build and run happens in."""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Iterator, Mapping

import torch

log = logging.getLogger(__name__)


@contextlib.contextmanager
def quantized_engine(engine: str) -> Iterator[None]:
    """Select torch's quantized engine for the block and restore the previous one: targets never leak into each other."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block on ``n`` intra-op threads and restore the previous count."""
    previous = torch.get_num_threads()
    if previous != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if previous != n:
            torch.set_num_threads(previous)


@contextlib.contextmanager
def torch_warnings_to_log() -> Iterator[None]:
    """torch.ao warns on every call (deprecation, observer settings); keep them in the debug log, off the terminal."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        log.debug("torch warning: %s: %s", w.category.__name__, str(w.message).splitlines()[0] if str(w.message) else "")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"


def join_path(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def under(path: str, roots: Mapping[str, Any] | tuple[str, ...]) -> str | None:
    """The (non-root) entry of ``roots`` that ``path`` is, or is inside of."""
    return next((r for r in roots if r and (path == r or path.startswith(r + "."))), None)


def as_outputs(result: Any) -> list[Any]:
    return list(result) if isinstance(result, (tuple, list)) else [result]


def set_module(root: Any, path: str, new: Any) -> Any:
    """Put ``new`` at ``path`` inside ``root`` (``new`` itself when the path is the root); returns the root."""
    if not path:
        return new
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, new)
    return root
