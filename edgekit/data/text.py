"""The text reader for transformer inputs: a .txt (one sample per line) or .jsonl (the text under ``[text] field``),
tokenized offline by a Hugging Face tokenizer folder into input_ids / attention_mask / token_type_ids.

A folder with ``tokenizer.json`` is read by the ``tokenizers`` library; one without it (vocab files only) by
``transformers.AutoTokenizer`` with ``local_files_only`` (and HF_HUB_OFFLINE=1): nothing is downloaded. Lines are
read and tokenized one at a time; blank lines are skipped. ``padding = "none"`` gives samples of their own length,
for a model whose sequence axis is dynamic.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgekit.config import TextSettings
from edgekit.data.checks import conform, conform_labels, exists, regular_file
from edgekit.data.stream import Piece, StreamSource
from edgekit.errors import DataError
from edgekit.types import TensorSpec

FIELDS = ("input_ids", "attention_mask", "token_type_ids")
SUFFIXES = (".txt", ".jsonl")


class _Fast:
    """A ``tokenizers.Tokenizer`` from tokenizer.json, truncating (and padding) to ``max_length``."""

    def __init__(self, path: Path, settings: TextSettings):
        from tokenizers import Tokenizer

        try:
            self.tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # the library raises its own Exception type for a malformed file
            raise DataError(f"tokenizer {path} cannot be read: {exc}") from None
        self.tok.enable_truncation(settings.max_length)
        self.tok.no_padding()
        if settings.padding == "max_length":
            pad = self.tok.padding or {}
            token = pad.get("pad_token") or next((t for t in ("[PAD]", "<pad>", "<|pad|>") if self.tok.token_to_id(t) is not None), None)
            pad_id = self.tok.token_to_id(token) if token is not None else 0
            self.tok.enable_padding(length=settings.max_length, pad_id=pad_id, pad_token=token or "[PAD]")

    def __call__(self, text: str) -> dict[str, list[int]]:
        enc = self.tok.encode(text)
        return {"input_ids": enc.ids, "attention_mask": enc.attention_mask, "token_type_ids": enc.type_ids}


class _Auto:
    """``transformers.AutoTokenizer`` from a local folder only."""

    def __init__(self, folder: Path, settings: TextSettings):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise DataError(f"tokenizer folder {folder} has no tokenizer.json; reading it needs transformers "
                            "(pip install transformers), or save the tokenizer with tokenizer.json") from None
        try:
            self.tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:
            raise DataError(f"tokenizer folder {folder} cannot be read: {type(exc).__name__}: {str(exc)[:200]}") from None
        self.settings = settings

    def __call__(self, text: str) -> dict[str, list[int]]:
        pad = "max_length" if self.settings.padding == "max_length" else False
        enc = self.tok(text, truncation=True, max_length=self.settings.max_length, padding=pad)
        return {k: list(v) for k, v in enc.items() if k in FIELDS}


def load_tokenizer(settings: TextSettings) -> Any:
    folder = Path(settings.tokenizer)
    if not exists(folder, "[text] tokenizer") or not folder.is_dir():
        raise DataError(f"[text] tokenizer {folder} is not a folder; give the folder holding tokenizer.json")
    if settings.max_length <= 0:
        raise DataError(f"[text] max_length must be positive, got {settings.max_length}")
    if (folder / "tokenizer.json").is_file():
        try:
            import tokenizers  # noqa: F401
        except ImportError:
            raise DataError("reading text needs the tokenizers library: pip install 'edgekit[text]'") from None
        return _Fast(regular_file(folder / "tokenizer.json", "tokenizer"), settings)
    return _Auto(folder, settings)


class TextSource(StreamSource):
    """A FeedSource over the lines of a .txt/.jsonl file, tokenized one at a time."""

    def __init__(self, path: Path, specs: tuple[TensorSpec, ...], settings: TextSettings | None, labels: str | None,
                 samples: int | None, description: str, role: str):
        if settings is None:
            raise DataError(f"{description} is text: add [{role}.text] with tokenizer = \"<folder with tokenizer.json>\" "
                            "(and max_length, padding)")
        super().__init__(specs, labels, samples, description)
        self.path = regular_file(path, "data file")
        self.settings = settings
        if labels is not None and path.suffix != ".jsonl":
            raise DataError(f"{description}: labels = {labels!r} needs a .jsonl file (the key of each line's label)")
        self.fills = self._fills()
        self.tokenize = load_tokenizer(settings)

    def _fills(self) -> dict[str, TensorSpec]:
        names = [s.name for s in self.specs]
        wanted = self.settings.inputs
        if wanted is not None:
            for w in wanted:
                if w not in FIELDS:
                    raise DataError(f"[text] inputs names {w!r}; a tokenizer fills {', '.join(FIELDS)}")
                if w not in names:
                    raise DataError(f"[text] inputs names {w!r}, which is not a model input ({', '.join(names)})")
        chosen = list(wanted) if wanted is not None else [n for n in names if n in FIELDS]
        unfed = [n for n in names if n not in chosen]
        if unfed:
            raise DataError(f"{self.description}: model input(s) {unfed} are not filled by the tokenizer (it fills "
                            f"{', '.join(FIELDS)}); name the inputs so, or use a 'file.py:function' generator")
        return {s.name: s for s in self.specs}

    def _lines(self) -> Iterator[tuple[int, str, Any]]:
        jsonl = self.path.suffix == ".jsonl"
        with open(self.path, "rb") as fh:
            for n, raw in enumerate(fh, 1):
                try:
                    line = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError:
                    raise DataError(f"{self.path} line {n} is not UTF-8 text") from None
                if not line.strip():
                    continue
                if not jsonl:
                    yield n, line, None
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{self.path} line {n} is not JSON: {exc.msg} (column {exc.colno})") from None
                key = self.settings.field
                if not isinstance(obj, dict) or not isinstance(obj.get(key), str):
                    raise DataError(f"{self.path} line {n} has no text under '{key}' ([text] field names the key)")
                label = None
                if self.label_key is not None:
                    if self.label_key not in obj:
                        raise DataError(f"{self.path} line {n} has no label '{self.label_key}'")
                    label = obj[self.label_key]
                yield n, obj[key], label

    def pieces(self) -> Iterator[Piece]:
        for n, text, label in self._lines():
            origin = f"{self.path} line {n}"
            enc = self.tokenize(text)
            feed = {}
            for name, spec in self.fills.items():
                if name not in enc:
                    raise DataError(f"tokenizer {self.settings.tokenizer} gives no '{name}'; it gives {sorted(enc)}")
                feed[name] = conform(np.asarray([enc[name]], dtype=np.int64), spec, origin)
            labels = None
            if self.label_key is not None:
                if isinstance(label, bool) or not isinstance(label, int):
                    raise DataError(f"{origin}: label {label!r} is not an integer class id")
                labels = conform_labels(np.asarray([label]), 1, origin, self.label_key)
            yield Piece(feed, labels)
