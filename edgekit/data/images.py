"""The image-folder reader: PNG/JPEG/BMP/WebP files (recursive, sorted), decoded by Pillow one at a time and
preprocessed as ``[images]`` says (resize, center crop, scale, mean/std, channel order, layout, dtype); labels from
sub-folder names (ImageNet style) or a CSV of ``file,label`` rows."""

from __future__ import annotations

import csv
import hashlib
import os
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

from edgekit.config import ImageSettings
from edgekit.data.checks import conform, regular_file
from edgekit.data.stream import Piece, StreamSource
from edgekit.errors import DataError
from edgekit.fsutil import hash_file
from edgekit.types import TensorSpec

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
FOLDER_LABELS = "folders"


def image_files(folder: Path) -> list[Path]:
    """Every image under ``folder`` (hidden files and folders skipped, symlinked folders not followed), sorted by
    relative path so every run reads them in the same order."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(root) / f for f in files if f.lower().endswith(SUFFIXES) and not f.startswith(".")]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _pair(value: int | tuple[int, ...] | None, what: str) -> tuple[int, int] | int | None:
    if value is None or isinstance(value, int):
        if isinstance(value, int) and value <= 0:
            raise DataError(f"[images] {what} must be positive, got {value}")
        return value
    if len(value) != 2 or min(value) <= 0:
        raise DataError(f"[images] {what} must be a positive integer or [height, width], got {list(value)}")
    return (value[0], value[1])


class ImageSource(StreamSource):
    """A FeedSource over a folder of images feeding one image input of the model."""

    def __init__(self, folder: Path, specs: tuple[TensorSpec, ...], settings: ImageSettings | None, labels: str | None,
                 samples: int | None, description: str):
        try:
            from PIL import Image  # noqa: F401
        except ImportError:
            raise DataError(f"{description} is a folder of images, which needs Pillow: pip install 'edgekit[images]'") from None
        super().__init__(specs, labels, samples, description)
        self.folder = folder
        self.settings = settings or ImageSettings()
        self.files = image_files(folder)
        self.spec = self._input()
        self.layout, self.mode, self.size = self._geometry()
        self.label_of = self._labels(labels) if labels is not None else None

    # the model input, its layout and the picture size --------------------------------------------
    def _input(self) -> TensorSpec:
        if len(self.specs) != 1:
            raise DataError(f"{self.description}: an image folder feeds one input, the model has {len(self.specs)} "
                            f"({', '.join(s.name for s in self.specs)}); use a 'file.py:function' generator")
        return self.specs[0]

    def _geometry(self) -> tuple[str, str, tuple[int, int] | None]:
        s, cfg = self.spec, self.settings
        if len(s.shape) != 4:
            raise DataError(f"{self.description}: input '{s.name}' has shape {list(s.shape)}; images feed a rank-4 "
                            "input (NCHW or NHWC)")
        layout = cfg.layout or ("NHWC" if s.shape[3] in (1, 3) and s.shape[1] not in (1, 3) else "NCHW")
        channels = s.shape[1] if layout == "NCHW" else s.shape[3]
        h, w = (s.shape[2], s.shape[3]) if layout == "NCHW" else (s.shape[1], s.shape[2])
        mode = "L" if (cfg.channels or ("L" if channels == 1 else "RGB")) == "L" else "RGB"
        need = 1 if mode == "L" else 3
        if isinstance(channels, int) and channels != need:
            raise DataError(f"{self.description}: input '{s.name}' has {channels} channels ({layout}); images give 1 (L) "
                            f"or 3 (RGB/BGR); set [images] channels and layout to match")
        for key in ("mean", "std"):
            v = getattr(cfg, key)
            if v is not None and len(v) not in (1, need):
                raise DataError(f"[images] {key} has {len(v)} values; channels {mode} needs {need}")
        if cfg.std is not None and min(cfg.std) <= 0:
            raise DataError(f"[images] std must be positive, got {list(cfg.std)}")
        _pair(cfg.resize, "resize")
        _pair(cfg.crop, "crop")
        fixed = (h, w) if isinstance(h, int) and isinstance(w, int) else None
        return layout, mode, fixed

    def _labels(self, labels: str) -> dict[Path, int]:
        if labels == FOLDER_LABELS:
            names = sorted({p.relative_to(self.folder).parts[0] for p in self.files if len(p.relative_to(self.folder).parts) > 1})
            loose = [p for p in self.files if len(p.relative_to(self.folder).parts) == 1]
            if loose:
                raise DataError(f"{loose[0]} is not in a class sub-folder; with labels = \"folders\" every image sits "
                                f"in <data>/<class>/ (ImageNet style)")
            index = {n: int(n) for n in names} if all(n.isdigit() for n in names) else {n: i for i, n in enumerate(names)}
            return {p: index[p.relative_to(self.folder).parts[0]] for p in self.files}
        if labels.endswith(".csv"):
            return self._csv(Path(labels))
        raise DataError(f"{self.description}: labels = {labels!r}: for an image folder use \"folders\" (class sub-folders) "
                        "or a .csv file of 'file,label' rows")

    def _csv(self, path: Path) -> dict[Path, int]:
        regular_file(path, "labels file")
        out: dict[Path, int] = {}
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                for n, row in enumerate(csv.reader(fh), 1):
                    if not row or not "".join(row).strip():
                        continue
                    if len(row) < 2:
                        raise DataError(f"{path} line {n}: expected 'file,label', got {','.join(row)!r}")
                    name, label = row[0].strip(), row[1].strip()
                    if not label.lstrip("-").isdigit():
                        if n == 1:
                            continue  # a header row
                        raise DataError(f"{path} line {n}: label {label!r} is not an integer class id")
                    if int(label) < 0:
                        raise DataError(f"{path} line {n}: label {label} is negative; class ids start at 0")
                    out[(self.folder / name).resolve()] = int(label)
        except UnicodeDecodeError:
            raise DataError(f"{path} is not a UTF-8 text (CSV) file") from None
        labelled = {}
        for p in self.files:
            if p.resolve() not in out:
                raise DataError(f"{path} has no label for image {p.relative_to(self.folder)}; add a row for it")
            labelled[p] = out[p.resolve()]
        return labelled

    # decoding ------------------------------------------------------------------------------------
    def load(self, path: Path) -> np.ndarray:
        """One image, preprocessed, as one sample (no batch axis) in the input's layout and dtype."""
        from PIL import Image, UnidentifiedImageError

        regular_file(path, "image")
        cfg = self.settings
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    im.load()
                    im = im.convert(self.mode)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning,
                Image.DecompressionBombError) as exc:
            raise DataError(f"{path} is not a readable image ({type(exc).__name__}: {exc}); remove or replace it") from None
        resize, crop = _pair(cfg.resize, "resize"), _pair(cfg.crop, "crop")
        if resize is None and crop is None and self.size is not None:
            resize = self.size
        if isinstance(resize, int):
            w, h = im.size
            scale = resize / min(w, h)
            im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
        elif resize is not None:
            im = im.resize((resize[1], resize[0]), Image.BILINEAR)
        if crop is not None:
            ch, cw = (crop, crop) if isinstance(crop, int) else crop
            w, h = im.size
            if ch > h or cw > w:
                raise DataError(f"{path}: center crop {ch}x{cw} is larger than the image ({h}x{w} after resize); "
                                "resize it larger first ([images] resize)")
            left, top = (w - cw) // 2, (h - ch) // 2
            im = im.crop((left, top, left + cw, top + ch))
        arr = np.asarray(im)
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        if self.mode == "RGB" and cfg.channels == "BGR":
            arr = arr[:, :, ::-1]
        dtype = np.dtype(cfg.dtype or self.spec.dtype)
        if dtype.kind == "f" or cfg.scale is not None or cfg.mean is not None or cfg.std is not None:
            x = arr.astype(np.float32) * np.float32(cfg.scale if cfg.scale is not None else (1 / 255 if dtype.kind == "f" else 1))
            if cfg.mean is not None:
                x = x - np.asarray(cfg.mean, np.float32)
            if cfg.std is not None:
                x = x / np.asarray(cfg.std, np.float32)
            arr = x
        arr = arr.astype(dtype) if dtype.kind == "f" else arr
        return np.ascontiguousarray(arr.transpose(2, 0, 1) if self.layout == "NCHW" else arr)

    def pieces(self) -> Iterator[Piece]:
        for path in self.files:
            x = conform(self.load(path), self.spec, str(path))
            labels = None if self.label_of is None else np.array([self.label_of[path]], np.int64)
            yield Piece({self.spec.name: x}, labels)

    def fingerprint(self) -> str:
        """The image files' bytes and names, the preprocessing and the sample limit."""
        h = hashlib.sha256(repr((self.settings, self.label_key, self.limit)).encode())
        for path in self.files:
            h.update(path.relative_to(self.folder).as_posix().encode())
            hash_file(h, path)
        if self.label_key and self.label_key.endswith(".csv"):
            h.update(Path(self.label_key).read_bytes())
        return h.hexdigest()
