"""Data files for the reader tests and the sandbox's bad-input cases: images, a generator module, a tiny offline
WordPiece tokenizer, and every malformed .npy/.npz the hardening cases feed."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "ran", "far", "away", "quick", "brown", "fox", "##s", "##ed"]

GENERATORS = '''
import numpy as np

def samples():
    rng = np.random.default_rng(0)
    for i in range(10):
        yield {"x": rng.standard_normal((1, 8, 8)).astype(np.float32)}, i % 4

def batches():
    rng = np.random.default_rng(0)
    for i in range(3):
        yield {"x": rng.standard_normal((4, 1, 8, 8)).astype(np.float32), "y": np.arange(4)}

def boom():
    rng = np.random.default_rng(0)
    for i in range(10):
        if i == 6:
            raise RuntimeError("sensor unplugged")
        yield {"x": rng.standard_normal((1, 8, 8)).astype(np.float32)}

def nan_at_3():
    for i in range(5):
        x = np.zeros((1, 8, 8), np.float32) + i
        if i == 3:
            x[0, 0, 0] = np.nan
        yield {"x": x}

def not_iterable():
    return 42
'''


def make_tokenizer(folder: Path) -> Path:
    """A WordPiece tokenizer (BERT-style [CLS] ... [SEP]) saved as ``folder/tokenizer.json``, built offline."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(str(folder / "tokenizer.json"))
    return folder


def image_folder(root: Path, classes: int = 4, per_class: int = 3, size: tuple[int, int] = (12, 10), mode: str = "L",
                 suffix: str = ".png", seed: int = 0) -> Path:
    """``root/<class>/<i>.png``: smooth random pictures (a gradient plus noise), ``per_class`` in each class folder."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    for c in range(classes):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.linspace(0, 200, h * w).reshape(h, w) * (c + 1) / classes
            pix = np.clip(base + rng.integers(0, 55, (h, w)), 0, 255).astype(np.uint8)
            arr = pix if mode == "L" else np.stack([pix, 255 - pix, pix // 2], axis=-1)
            Image.fromarray(arr, mode).save(root / str(c) / f"{i}{suffix}")
    return root


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def make_bad_data(root: Path) -> None:
    """The malformed data files of the data_* bad-input cases, written into the sandbox ``root``."""
    x = np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32)
    np.savez(root / "good8.npz", x=x)
    whole = (root / "good8.npz").read_bytes()
    (root / "truncated.npz").write_bytes(whole[: len(whole) // 2])
    (root / "zip_garbage.npz").write_bytes(b"PK\x03\x04" + b"\x17garbage after a zip header" * 20)
    with zipfile.ZipFile(root / "member_not_npy.npz", "w") as zf:
        zf.writestr("x.npy", npy_bytes(x))
        zf.writestr("notes.txt", "not an array")
    with zipfile.ZipFile(root / "zero_member.npz", "w") as zf:
        zf.writestr("x.npy", b"")
    (root / "zero_folder").mkdir(exist_ok=True)
    np.save(root / "zero_folder" / "a.npy", x[0])
    (root / "zero_folder" / "b.npy").write_bytes(b"")
    (root / "text.npy").write_text("1.0, 2.0, 3.0\n")
    header = bytearray(npy_bytes(x))
    header[9] ^= 1  # the header length off by 256: numpy's header parser raises tokenize.TokenError (found by fuzzing)
    (root / "flipped_header.npy").write_bytes(bytes(header))
    big = x.astype(np.float64)
    big[5, 0, 3, 3] = 1e39  # finite in float64, inf in float32
    np.savez(root / "overflow.npz", x=big)
    np.savez(root / "no_batch.npz", x=x[0])  # (1, 8, 8) for a (batch, 1, 8, 8) input
    np.savez(root / "val_label_11.npz", x=x, y=np.array([0, 1, 2, 3, 11, 0, 1, 2]))
    (root / "gens.py").write_text(GENERATORS)
    (root / "sentences.txt").write_text("the cat sat on the mat\n")
    try:
        image_folder(root / "images")
        image_folder(root / "bad_images", classes=2, per_class=2)
    except ImportError:  # Pillow missing: the image cases fail with that reason
        return
    (root / "bad_images" / "1" / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"truncated")
