"""The Python-callable reader: ``data = "path/to/file.py:function"`` or ``"package.module:function"``.

The function takes no arguments and returns an iterable (a generator, a list, a DataLoader) of ``{input_name:
array}`` dicts, each one sample (no batch axis) or a batch, optionally with labels: as ``(dict, labels)`` or under
the ``labels`` key the section names. It is called again for every pass, so a generator streams and nothing holds
all samples. Whatever the user's code raises names the sample it was producing.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from edgekit.data.checks import conform, conform_labels
from edgekit.data.stream import Piece, StreamSource
from edgekit.errors import DataError
from edgekit.types import TensorSpec

# Without [section] samples, a generator that never ends would keep the check pass reading forever.
MAX_UNBOUNDED = 1_000_000
CALLABLE = re.compile(r"^(?P<target>.+\.py|[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*):(?P<function>[A-Za-z_]\w*)$")


def is_callable_ref(data: str) -> bool:
    """``data`` has the form of a Python function ('file.py:function' or 'package.module:function'); the caller
    prefers an existing path of that name."""
    return CALLABLE.match(data) is not None


def resolve_callable(data: str, role: str) -> Callable[[], Any]:
    m = CALLABLE.match(data)
    assert m is not None
    target, name = m.group("target"), m.group("function")
    where = f"[{role}] data {data}"
    if target.endswith(".py"):
        path = Path(target)
        if not os.path.isfile(path):
            raise DataError(f"{where}: the file {path} does not exist")
        modname = f"_edgekit_user_data_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
        spec = importlib.util.spec_from_file_location(modname, path)
        if spec is None or spec.loader is None:
            raise DataError(f"{where}: cannot import {path} as Python")
        module = importlib.util.module_from_spec(spec)
        sys.modules[modname] = module
        try:
            spec.loader.exec_module(module)
        except BaseException as exc:  # the user's code: SystemExit included, its failure is theirs, in one line
            sys.modules.pop(modname, None)
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise DataError(f"{where}: importing {path} failed: {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            raise DataError(f"{where}: cannot import module '{target}' ({exc}); is it installed or on PYTHONPATH?") from None
        except Exception as exc:
            raise DataError(f"{where}: importing module '{target}' failed: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, name, None)
    if fn is None or not callable(fn):
        public = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
        raise DataError(f"{where} names no function '{name}' in that {'file' if target.endswith('.py') else 'module'}; callables there: {', '.join(public[:12]) or 'none'}")
    return fn


class CallableSource(StreamSource):
    """A FeedSource over what a user's function yields; the function is called once per pass."""

    def __init__(self, data: str, specs: tuple[TensorSpec, ...], labels: str | None, samples: int | None,
                 description: str, role: str):
        super().__init__(specs, labels, samples, description)
        self.data = data
        self.fn = resolve_callable(data, role)

    def _iterator(self) -> Iterator[Any]:
        try:
            produced = self.fn()
        except Exception as exc:
            raise DataError(f"{self.data} raised {type(exc).__name__}: {exc} (when called, before sample 0)") from None
        if isinstance(produced, dict) or not hasattr(produced, "__iter__"):
            raise DataError(f"{self.data} returned a {type(produced).__name__}; return (or yield) an iterable of "
                            "{input_name: array} dicts")
        return iter(produced)

    def pieces(self) -> Iterator[Piece]:
        it = self._iterator()
        index = 0
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            except Exception as exc:
                raise DataError(f"{self.data} raised {type(exc).__name__}: {exc} while producing sample {index}") from None
            piece = self._piece(item, index)
            index += piece.size
            if self.limit is None and index > MAX_UNBOUNDED:
                raise DataError(f"{self.data} yields more than {MAX_UNBOUNDED} samples; set samples = N in the section "
                                "to use the first N (an endless generator needs it)")
            yield piece

    def _piece(self, item: Any, index: int) -> Piece:
        names = [s.name for s in self.specs]
        origin = f"{self.data} sample {index}"
        labels = None
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], dict):
            item, labels = item
        if not isinstance(item, dict):
            raise DataError(f"{origin} is a {type(item).__name__}; yield {{input_name: array}} dicts "
                            f"(inputs: {', '.join(names)})")
        item = dict(item)
        if self.label_key is not None and labels is None:
            if self.label_key not in item:
                raise DataError(f"{origin} has no labels key '{self.label_key}'; yield it in the dict or as (dict, labels)")
            labels = item.pop(self.label_key)
        missing = [n for n in names if n not in item]
        if missing:
            raise DataError(f"{origin} lacks model input(s) {missing}; it holds {sorted(map(str, item))}")
        feed = {s.name: conform(_array(item[s.name], origin, s.name), s, origin, offset=index) for s in self.specs}
        counts = {k: v.shape[0] for k, v in feed.items()}
        if len(set(counts.values())) != 1:
            raise DataError(f"{origin}: inputs hold different numbers of samples {counts}")
        if self.label_key is None:
            return Piece(feed)
        return Piece(feed, conform_labels(_array(labels, origin, "labels"), next(iter(counts.values())), origin, self.label_key))


def _array(value: Any, origin: str, name: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as exc:
        raise DataError(f"{origin}: '{name}' is not an array ({type(exc).__name__}: {exc})") from None
