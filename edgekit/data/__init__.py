"""Calibration / validation / training data: open a source, check it against the model, stream batches.

The public API: ``open_feed(cfg, specs, role)`` picks the reader for ``cfg.data`` (a .npz/.npy file or a folder of
them, a folder of images, a .txt/.jsonl file, a 'file.py:function' / 'module:function' callable), reads everything
once to check it before any work, and returns a ``StreamSource``. Its ``batches(n)`` streams batches of at most
``n`` samples (a batch ends early where the sample shape changes); ``samples()`` streams the underlying pieces;
``count()``, ``fingerprint()``, ``warnings`` and ``stats`` come from the check pass. ``overlap(a, b)`` counts shared
samples; ``feed_warnings`` lists every sanity warning of a build's data; ``check_label_classes`` refuses labels the
model cannot predict.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from edgekit.config import DataConfig
from edgekit.data.arrays import ArraySource, array_files
from edgekit.data.checks import exists, regular_file, system_path
from edgekit.data.images import FOLDER_LABELS, ImageSource, image_files
from edgekit.data.pycall import CallableSource, is_callable_ref
from edgekit.data.sanity import check_label_classes, data_warnings, range_mismatch
from edgekit.data.stream import Piece, StreamSource
from edgekit.data.text import SUFFIXES as TEXT_SUFFIXES
from edgekit.data.text import TextSource
from edgekit.errors import DataError
from edgekit.types import TensorSpec

log = logging.getLogger(__name__)

__all__ = ["ArraySource", "CallableSource", "ImageSource", "Piece", "StreamSource", "TextSource", "check_label_classes",
           "feed_warnings", "open_feed", "open_source", "overlap", "with_data"]


def open_source(cfg: DataConfig, specs: tuple[TensorSpec, ...], role: str) -> StreamSource:
    """The reader for ``cfg.data``, not yet read (``open_feed`` also checks it)."""
    data = cfg.data
    where = f"[{role}] data {data}"
    if is_callable_ref(data) and not exists(Path(data), f"[{role}] data"):
        _unused(cfg, role, "a Python callable", images=True, text=True)
        return CallableSource(data, specs, cfg.labels, cfg.samples, where, role)
    path = Path(data)
    if not exists(path, f"[{role}] data"):
        raise DataError(f"{where} does not exist")
    if path.is_dir():
        if system_path(path):
            raise DataError(f"{where} is a system folder; give a folder of data files")
        arrays = array_files(path)
        if arrays:
            _unused(cfg, role, "a folder of .npy/.npz files", images=True, text=True)
            if any(p.suffix == ".npy" for p in arrays) and len(specs) > 1:
                raise DataError(f"[{role}] data folder {path} holds .npy files, but the model has {len(specs)} inputs; use .npz keyed by input name")
            return ArraySource(arrays, specs, cfg.labels, cfg.samples, f"[{role}] data {path}", folder=True)
        if image_files(path):
            _unused(cfg, role, "a folder of images", text=True)
            return ImageSource(path, specs, cfg.images, cfg.labels, cfg.samples, f"[{role}] data {path}")
        raise DataError(f"[{role}] data folder {path} holds no .npy or .npz files and no images "
                        "(.png/.jpg/.jpeg/.bmp/.webp)")
    regular_file(path, f"[{role}] data")
    if path.suffix in (".npz", ".npy"):
        _unused(cfg, role, f"a {path.suffix} file", images=True, text=True)
        return ArraySource([path], specs, cfg.labels, cfg.samples, where)
    if path.suffix in TEXT_SUFFIXES:
        _unused(cfg, role, "text", images=True)
        return TextSource(path, specs, cfg.text, cfg.labels, cfg.samples, where, role)
    raise DataError(f"{where} is not a .npz/.npy file, a .txt/.jsonl file, a folder of arrays or images, or "
                    "'file.py:function'")


def with_data(cfg: DataConfig, data: str) -> DataConfig:
    """``cfg`` reading ``data`` instead (``edgekit validate --data``): all samples, and only the preprocessing tables
    that apply to the new data's kind (an image build re-validated on an .npz keeps no [images] table)."""
    path = Path(data)
    images = text = False
    if not is_callable_ref(data) and exists(path, "--data"):
        images = path.is_dir() and not array_files(path)
        text = path.suffix in TEXT_SUFFIXES
    labels = cfg.labels if images or cfg.labels != FOLDER_LABELS else None
    return dataclasses.replace(cfg, data=data, samples=None, labels=labels, images=cfg.images if images else None,
                               text=cfg.text if text else None)


def _unused(cfg: DataConfig, role: str, what: str, images: bool = False, text: bool = False) -> None:
    """A preprocessing table the chosen reader would ignore is a mistake worth stopping for."""
    for key, unused in (("images", images), ("text", text)):
        if unused and getattr(cfg, key) is not None:
            raise DataError(f"[{role}.{key}] is set, but [{role}] data {cfg.data} is {what}; remove the table or "
                            f"point data at {'a folder of images' if key == 'images' else 'a .txt/.jsonl file'}")
    if cfg.labels == FOLDER_LABELS and what != "a folder of images":
        raise DataError(f"[{role}] labels = \"folders\" takes labels from image sub-folders, but data {cfg.data} is {what}")


def open_feed(cfg: DataConfig, specs: tuple[TensorSpec, ...], role: str) -> StreamSource:
    """Open and fully check the data a config section names; ``role`` names the section in messages. The source's
    ``warnings`` list what the sanity checks found (the caller shows them)."""
    source = open_source(cfg, specs, role)
    total = source.check()
    calibration = role == "calibration"
    source.warnings = data_warnings(source, role, cfg.method if calibration else None, cfg.samples if calibration else None)
    log.info("%s: %d samples", source.description, total)
    return source


def feed_warnings(calibration: StreamSource | None, validation: StreamSource | None) -> list[str]:
    """Every sanity warning about a build's data: each source's own, then calibration against validation."""
    out = [*(calibration.warnings if calibration else []), *(validation.warnings if validation else [])]
    if calibration is not None and validation is not None:
        out += range_mismatch(calibration, validation)
    return out


def overlap(a: StreamSource, b: StreamSource) -> int:
    """How many samples two sources share (calibration and validation should share none)."""
    return len(a.sample_hashes() & b.sample_hashes())
