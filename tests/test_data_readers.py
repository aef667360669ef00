"""Readers beyond .npz: image folders (preprocessing numbers, folder and CSV labels), Python callables (streamed,
called per pass), text through a tiny offline tokenizer (padded and unpadded); each checked against the model."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.config import DataConfig, ImageSettings, TextSettings, load_config
from edgekit.data import open_feed, overlap
from edgekit.errors import ConfigError, DataError
from edgekit.types import TensorSpec

from data_files import GENERATORS, WORDS, image_folder, make_tokenizer

PIL = pytest.importorskip("PIL", reason="the image reader needs Pillow (the test extra installs it)")
from PIL import Image  # noqa: E402

GRAY = (TensorSpec("x", ("batch", 1, 8, 8)),)
RGB = (TensorSpec("x", ("batch", 3, 6, 6)),)
TEXT = (TensorSpec("input_ids", ("batch", "seq"), "int64"), TensorSpec("attention_mask", ("batch", "seq"), "int64"))


# ------------------------------------------------------------------------------------------------ images

def test_png_folder_with_class_subfolders_streams_labelled_batches(tmp_path):
    image_folder(tmp_path / "imgs", classes=4, per_class=3)
    src = open_feed(DataConfig(str(tmp_path / "imgs"), labels="folders"), GRAY, "validation")
    batches = list(src.batches(5))
    assert [b.size for b in batches] == [5, 5, 2]
    assert np.concatenate([b.labels for b in batches]).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    x = batches[0].feed["x"]
    assert x.shape == (5, 1, 8, 8) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0  # default scale 1/255 for a float input
    assert src.count() == 12 and src.label_range == (0, 3)


def test_preprocessing_resize_crop_scale_mean_std_bgr_nhwc_numbers(tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[..., 0], arr[..., 1], arr[..., 2] = 200, 100, np.arange(20, dtype=np.uint8)[None, :] * 10
    Image.fromarray(arr, "RGB").save(folder / "a.png")
    settings = ImageSettings(resize=6, crop=(6, 6), scale=1 / 255, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0),
                             channels="BGR", layout="NHWC")
    spec = (TensorSpec("img", (1, 6, 6, 3)),)
    (batch,) = open_feed(DataConfig(str(folder), images=settings), spec, "calibration").batches(1)
    x = batch.feed["img"][0]
    assert x.shape == (6, 6, 3)
    # shorter side 10 -> 6: 20x10 becomes 12x6, the center crop keeps columns 3..8; BGR puts blue first, and
    # mean/std are in the model's channel order (B, G, R)
    assert np.allclose(x[..., 2], 200 / 255, atol=1e-6)  # red, last
    assert np.allclose(x[..., 1], (100 / 255 - 0.25) / 0.25, atol=1e-5)
    blue = np.asarray(Image.fromarray(arr, "RGB").resize((12, 6), Image.BILINEAR))[:, 3:9, 2] / 255
    assert np.allclose(x[..., 0], (blue - 0.5) / 0.5, atol=1e-5) and np.ptp(blue) > 0.1


def test_exact_resize_to_the_model_shape_rgb_nchw_and_other_formats(tmp_path):
    for suffix in (".jpg", ".bmp", ".webp"):
        image_folder(tmp_path / suffix[1:], classes=2, per_class=2, size=(9, 13), mode="RGB", suffix=suffix)
    for sub in ("jpg", "bmp", "webp"):
        src = open_feed(DataConfig(str(tmp_path / sub)), RGB, "calibration")
        (batch,) = src.batches(8)
        assert batch.feed["x"].shape == (4, 3, 6, 6)


def test_csv_labels_and_uint8_input(tmp_path):
    folder = image_folder(tmp_path / "imgs", classes=2, per_class=2)
    rows = ["file,label", "0/0.png,7", "0/1.png,3", "1/0.png,1", "1/1.png,0"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    spec = (TensorSpec("x", (1, 1, 12, 10), "uint8"),)
    src = open_feed(DataConfig(str(folder), labels=str(tmp_path / "labels.csv")), spec, "validation")
    batches = list(src.batches(1))
    assert [int(b.labels[0]) for b in batches] == [7, 3, 1, 0]
    x = batches[0].feed["x"]
    assert x.dtype == np.uint8 and np.array_equal(x[0, 0], np.asarray(Image.open(folder / "0" / "0.png")))
    (tmp_path / "labels.csv").write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(DataError, match=r"labels.csv has no label for image 1/1.png"):
        open_feed(DataConfig(str(folder), labels=str(tmp_path / "labels.csv")), spec, "validation")


def test_image_folder_mismatches_name_the_culprit(tmp_path):
    folder = image_folder(tmp_path / "imgs", classes=1, per_class=2)
    with pytest.raises(DataError, match=r"input 'x' has 3 channels \(NCHW\); images give 1 \(L\) or 3 \(RGB/BGR\)|images give"):
        open_feed(DataConfig(str(folder), images=ImageSettings(channels="L")), RGB, "calibration")
    with pytest.raises(DataError, match=r"center crop 20x20 is larger than the image"):
        open_feed(DataConfig(str(folder), images=ImageSettings(crop=20)), (TensorSpec("x", ("batch", 1, 20, 20)),), "calibration")
    (folder / "0" / "loose.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"loose.png is empty \(0 bytes\)"):
        open_feed(DataConfig(str(folder)), GRAY, "calibration")


def test_images_table_typo_names_the_nearest_key():
    with pytest.raises(ConfigError, match=r"unknown key 'resise' in \[validation.images\]; did you mean 'resize'"):
        load_config({"model": {"source": "m.onnx"}, "validation": {"data": "imgs", "images": {"resise": 8}}})
    with pytest.raises(ConfigError, match=r"\[calibration.images\] layout must be \"NCHW\" or \"NHWC\", got \"NCWH\""):
        load_config({"model": {"source": "m.onnx"}, "calibration": {"data": "imgs", "images": {"layout": "NCWH"}}})


# ---------------------------------------------------------------------------------------------- callables

def test_generator_file_is_called_per_pass_and_streams_with_labels(tmp_path, monkeypatch):
    (tmp_path / "gens.py").write_text(GENERATORS + "\nCALLS = []\ndef counted():\n    CALLS.append(1)\n    yield from samples()\n")
    src = open_feed(DataConfig(f"{tmp_path}/gens.py:counted", labels="y"), GRAY, "validation")
    module = src.fn.__globals__
    assert len(module["CALLS"]) == 1  # the check pass
    batches = list(src.batches(4))
    assert [b.size for b in batches] == [4, 4, 2] and len(module["CALLS"]) == 2
    assert np.concatenate([b.labels for b in batches]).tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    rng = np.random.default_rng(0)
    assert np.array_equal(batches[0].feed["x"][0, 0], rng.standard_normal((1, 8, 8)).astype(np.float32)[0])


def test_module_function_yielding_batches_with_a_labels_key(tmp_path, monkeypatch):
    (tmp_path / "mydata_gens.py").write_text(GENERATORS)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_config({"model": {"source": "m.onnx"}, "validation": {"data": "mydata_gens:batches", "labels": "y"}}, tmp_path)
    assert cfg.validation.data == "mydata_gens:batches"
    src = open_feed(cfg.validation, GRAY, "validation")
    assert src.count() == 12 and [b.size for b in src.batches(5)] == [5, 5, 2]


def test_generator_errors_name_the_sample(tmp_path):
    (tmp_path / "gens.py").write_text(GENERATORS)
    with pytest.raises(DataError, match=r"gens.py:boom raised RuntimeError: sensor unplugged while producing sample 6"):
        open_feed(DataConfig(f"{tmp_path}/gens.py:boom"), GRAY, "calibration")
    with pytest.raises(DataError, match=r"has no labels key 'label'"):
        open_feed(DataConfig(f"{tmp_path}/gens.py:boom", labels="label"), GRAY, "validation")


def test_relative_generator_file_resolves_against_the_config(tmp_path):
    cfg = load_config({"model": {"source": "m.onnx"}, "calibration": {"data": "sub/gens.py:samples"}}, tmp_path)
    assert cfg.calibration.data == f"{tmp_path}/sub/gens.py:samples"


# --------------------------------------------------------------------------------------------------- text

@pytest.fixture()
def tokenizer(tmp_path):
    pytest.importorskip("tokenizers", reason="the text reader needs the tokenizers library (the test extra installs it)")
    return make_tokenizer(tmp_path / "tok")


def test_text_lines_padded_to_max_length(tmp_path, tokenizer):
    (tmp_path / "s.txt").write_text("the cat sat\n\nthe quick brown fox ran far away on the mat\n")
    spec = (TensorSpec("input_ids", ("batch", 8), "int64"), TensorSpec("attention_mask", ("batch", 8), "int64"),
            TensorSpec("token_type_ids", ("batch", 8), "int64"))
    src = open_feed(DataConfig(str(tmp_path / "s.txt"), text=TextSettings(str(tokenizer), max_length=8)), spec, "calibration")
    (batch,) = src.batches(4)
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "a", "cat", "dog", "sat"])}
    assert batch.feed["input_ids"][0].tolist() == [2, vocab["the"], vocab["cat"], vocab["sat"], 3, 0, 0, 0]
    assert batch.feed["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0, 0, 0], [1] * 8]
    assert batch.feed["input_ids"][1, -1] == 3  # truncated to 8, still ends with [SEP]
    assert batch.feed["token_type_ids"].sum() == 0 and batch.feed["input_ids"].dtype == np.int64


def test_unpadded_jsonl_gives_samples_of_their_own_length_with_labels(tmp_path, tokenizer):
    lines = ['{"text": "the cat", "label": 1}', '{"text": "a dog", "label": 0}', '{"text": "the dog sat on the mat", "label": 2}']
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    cfg = DataConfig(str(tmp_path / "d.jsonl"), labels="label", text=TextSettings(str(tokenizer), padding="none"))
    src = open_feed(cfg, TEXT, "validation")
    batches = list(src.batches(8))
    assert [b.feed["input_ids"].shape for b in batches] == [(2, 4), (1, 8)]  # a batch ends where the length changes
    assert np.concatenate([b.labels for b in batches]).tolist() == [1, 0, 2]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok", "label": 1}\n{"txt": "typo"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl line 2 has no text under 'text'"):
        open_feed(DataConfig(str(tmp_path / "bad.jsonl"), text=TextSettings(str(tokenizer), padding="none")), TEXT, "calibration")


def test_text_checked_against_the_model(tmp_path, tokenizer):
    (tmp_path / "s.txt").write_text("the cat sat\n")
    fixed = (TensorSpec("input_ids", ("batch", 16), "int64"),)
    with pytest.raises(DataError, match=r"line 1: input 'input_ids' has shape \(1, 5\); the model expects \['batch', 16\]"):
        open_feed(DataConfig(str(tmp_path / "s.txt"), text=TextSettings(str(tokenizer), padding="none")), fixed, "calibration")
    extra = (*TEXT, TensorSpec("pixel_values", ("batch", 3), "float32"))
    with pytest.raises(DataError, match=r"model input\(s\) \['pixel_values'\] are not filled by the tokenizer"):
        open_feed(DataConfig(str(tmp_path / "s.txt"), text=TextSettings(str(tokenizer))), extra, "calibration")


def test_overlap_between_readers_is_counted_on_what_the_model_sees(tmp_path):
    image_folder(tmp_path / "a", classes=2, per_class=3)
    a = open_feed(DataConfig(str(tmp_path / "a")), GRAY, "calibration")
    b = open_feed(DataConfig(str(tmp_path / "a"), samples=4), GRAY, "validation")
    assert overlap(a, b) == 4 and a.fingerprint() != b.fingerprint()


def test_an_endless_generator_needs_a_sample_limit(tmp_path, monkeypatch):
    import edgekit.data.pycall as pycall

    (tmp_path / "endless.py").write_text("import numpy as np\ndef forever():\n    i = 0\n    while True:\n"
                                         "        i += 1\n        yield {'x': np.full((1, 8, 8), i, np.float32)}\n")
    monkeypatch.setattr(pycall, "MAX_UNBOUNDED", 50)
    with pytest.raises(DataError, match=r"endless.py:forever yields more than 50 samples; set samples = N"):
        open_feed(DataConfig(f"{tmp_path}/endless.py:forever"), GRAY, "calibration")
    src = open_feed(DataConfig(f"{tmp_path}/endless.py:forever", samples=20), GRAY, "calibration")
    assert src.count() == 20 and [b.size for b in src.batches(8)] == [8, 8, 4]


def test_with_data_keeps_only_the_tables_that_apply(tmp_path):
    from edgekit.data import with_data

    image_folder(tmp_path / "imgs", classes=2, per_class=1)
    np.savez(tmp_path / "v.npz", x=np.zeros((2, 1, 8, 8), np.float32))
    cfg = DataConfig(str(tmp_path / "imgs"), samples=5, labels="folders", images=ImageSettings(resize=8))
    again = with_data(cfg, str(tmp_path / "imgs"))
    assert again.images == ImageSettings(resize=8) and again.labels == "folders" and again.samples is None
    npz = with_data(cfg, str(tmp_path / "v.npz"))
    assert npz.images is None and npz.labels is None and npz.data == str(tmp_path / "v.npz")
    assert open_feed(npz, GRAY, "validation").count() == 2


TEXT_NET = '''
import torch, torch.nn as nn

class Bag(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.lin, self.out = nn.Embedding(32, 16), nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, input_ids, attention_mask):
        m = attention_mask.unsqueeze(-1).float()
        return self.out((torch.relu(self.lin(self.emb(input_ids))) * m).sum(1) / m.sum(1).clamp(min=1))

def build():
    return Bag()
'''

TEXT_CONFIG = '''
[model]
source = "bag.py:build"
inputs = [ { name = "input_ids", shape = [1, 8], dtype = "int64", dynamic = { 0 = "batch", 1 = "seq" } },
           { name = "attention_mask", shape = [1, 8], dtype = "int64", dynamic = { 0 = "batch", 1 = "seq" } } ]
outputs = ["logits"]

[export]
exporter = "torchscript"

[calibration]
data = "cal.txt"
text = { tokenizer = "tok", padding = "none", max_length = 16 }

[validation]
data = "val.txt"
text = { tokenizer = "tok", padding = "none", max_length = 16 }

[targets]
use = ["ort-fp32", "ort-int8"]
'''


@pytest.mark.slow
def test_unpadded_text_calibrates_and_validates_ort_int8_over_several_lengths(tmp_path, tokenizer, monkeypatch):
    import json

    from edgekit.cli import main

    rng = np.random.default_rng(0)
    for name, n in (("cal.txt", 40), ("val.txt", 20)):
        lines = [" ".join(rng.choice(WORDS[:13], rng.integers(2, 13))) for _ in range(n)]
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    (tmp_path / "bag.py").write_text(TEXT_NET)
    (tmp_path / "cfg.toml").write_text(TEXT_CONFIG)
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "build", "cfg.toml", "-o", "out"]) == 0
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["validation"]["samples"] == 20
    lengths = {b.feed["input_ids"].shape[1] for b in open_feed(
        DataConfig(str(tmp_path / "val.txt"), text=TextSettings(str(tokenizer), padding="none")), TEXT, "validation").batches(32)}
    assert len(lengths) > 3  # the validation really fed several sequence lengths
    logits = m["targets"]["ort-int8"]["metrics"]["vs_torch"]["outputs"]["logits"]
    assert logits["samples"] == 20 and logits["cosine"] > 0.99
