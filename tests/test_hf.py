"""`source = "hf:FOLDER"`: a tiny BERT saved offline (transformers save_pretrained + a WordPiece tokenizer made with
the tokenizers library), plain and as a sentence-transformers folder, built end to end; bad folders exit 2.

The tiny model is loaded with transformers' default attention (SDPA): ort-int8-dynamic must still fuse each attention
block into QAttention (edgekit exports the eager form, checked equal), and a model exported with SDPA gets a warning.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

transformers = pytest.importorskip("transformers", reason="hf: sources need transformers (pip install 'edgekit[hf]')")
pytest.importorskip("tokenizers", reason="the tiny tokenizer is made with the tokenizers library")

import onnx  # noqa: E402
import torch  # noqa: E402

from edgekit.cli import main  # noqa: E402
from edgekit.config import ModelConfig  # noqa: E402
from edgekit.model import load_model  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ("the a one two red blue green small large fast slow cat dog bird fish tree house road river city model "
         "data test build runs makes sees finds likes under over near from with and but not very quite often "
         "today night water light stone paper music train plane boat").split()
LAYERS = 2


def _sentences(seed: int, count: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, int(rng.integers(3, 24)))) for _ in range(count)]


def _tokenizer(folder: Path) -> None:
    """A lower-casing WordPiece tokenizer over WORDS, saved as tokenizer.json + tokenizer_config.json."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS))])}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = transformers.BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                          cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(str(folder))


def _st_files(folder: Path) -> None:
    """modules.json + 1_Pooling/config.json (mean) + Normalize: a sentence-transformers folder."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """plain/ (BertModel), st/ (the same as a sentence-transformers folder), cls/ (BertForSequenceClassification),
    and calib.txt / val.txt (disjoint sentences)."""
    root = tmp_path_factory.mktemp("hf")
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=160)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(str(root / "plain"))
    _tokenizer(root / "plain")
    shutil.copytree(root / "plain", root / "st")
    _st_files(root / "st")
    torch.manual_seed(1)
    labels = {k: v for k, v in config.to_dict().items() if k not in ("id2label", "label2id")}
    transformers.BertForSequenceClassification(transformers.BertConfig(**labels, num_labels=3)).save_pretrained(str(root / "cls"))
    _tokenizer(root / "cls")
    (root / "calib.txt").write_text("\n".join(_sentences(1, 24)) + "\n")
    (root / "val.txt").write_text("\n".join(_sentences(2, 16)) + "\n")
    return {"root": root, "plain": root / "plain", "st": root / "st", "cls": root / "cls"}


def _config(root: Path, source: str, targets: list[str], extra: str = "") -> Path:
    runtime = "".join(f"[targets.{t}.runtime]\nruns = 5\nwarmup = 1\n" for t in targets)
    path = root / f"build-{abs(hash((source, tuple(targets), extra)))}.toml"
    path.write_text(f'[model]\nsource = "{source}"\n{extra}\n[calibration]\ndata = "calib.txt"\nsamples = 16\n'
                    f'[validation]\ndata = "val.txt"\n[targets]\nuse = {json.dumps(targets)}\n{runtime}')
    return path


def _ops(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in onnx.load(str(path)).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def _encode(folder: Path, texts: list[str]) -> dict[str, np.ndarray]:
    tok = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    enc = tok(texts, padding=True, return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}


@pytest.fixture(scope="module")
def st_build(folders):
    """The sentence-transformers folder built to ort-fp32 + ort-int8-dynamic (references timed briefly)."""
    from edgekit import load_config, pipeline
    from edgekit.validate.measure import ReferenceTiming

    out = folders["root"] / "out-st"
    cfg = load_config(_config(folders["root"], f"hf:{folders['st']}", ["ort-fp32", "ort-int8-dynamic"]))
    cwd = folders["root"] / "cwd"  # ONNX Runtime's shape inference may save temporary files into the cwd: none here
    cwd.mkdir()
    before = Path.cwd()
    os.chdir(cwd)
    try:
        manifest = pipeline.build(cfg, pipeline.BuildOptions(out, reference_timing=ReferenceTiming(warmup=1, runs=5)))
    finally:
        os.chdir(before)
    return manifest.exit_code, out


def test_plain_folder_inputs_outputs_and_task(folders):
    source = load_model(ModelConfig(f"hf:{folders['plain']}"))
    assert [s.name for s in source.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(s.dtype == "int64" and s.shape == ("batch", "sequence") for s in source.inputs)
    assert source.outputs == ("last_hidden_state",) and source.task == "embedding"
    assert "loaded as sdpa" in source.notes["attention"]  # transformers' default, switched to eager for export
    ids = torch.randint(5, 60, (2, 9))
    out = source.module(ids, torch.ones_like(ids), torch.zeros_like(ids))
    assert tuple(out.shape) == (2, 9, 32)


def test_classification_folder_gives_logits(folders):
    source = load_model(ModelConfig(f"hf:{folders['cls']}"))
    assert source.outputs == ("logits",) and source.task == "classification"
    ids = torch.randint(5, 60, (2, 7))
    assert tuple(source.module(ids, torch.ones_like(ids), torch.zeros_like(ids)).shape) == (2, 3)
    as_features = load_model(ModelConfig(f"hf:{folders['cls']}", task="feature-extraction"))  # [model] task overrides
    assert as_features.outputs == ("last_hidden_state",)


@pytest.mark.slow
def test_sentence_transformers_folder_builds_with_fused_attention(st_build, folders):
    code, out = st_build
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["model"]["outputs"] == ["sentence_embedding"]
    assert manifest["config"]["calibration"]["text"]["tokenizer"] == str(folders["st"])  # the folder's tokenizer
    assert "sdpa" in manifest["reference"]["model_notes"]["attention"]
    targets = manifest["targets"]
    assert targets["ort-fp32"]["metrics"]["vs_torch"]["worst"]["cosine"] > 0.9999
    assert targets["ort-int8-dynamic"]["metrics"]["vs_torch"]["worst"]["cosine"] > 0.98
    ops = _ops(out / "ort-int8-dynamic" / "model.onnx")
    assert ops.get("QAttention") == LAYERS, ops  # default (SDPA) loading, attention still fused
    assert "warning" not in targets["ort-int8-dynamic"]["notes"]
    assert not list((folders["root"] / "cwd").iterdir())  # nothing left in the working directory


@pytest.mark.slow
def test_pooled_output_is_mean_pooling_of_the_folder_model(st_build, folders):
    """The FP32 artifact's sentence_embedding equals mean pooling + L2 normalization done by hand in torch."""
    import onnxruntime as ort

    code, out = st_build
    texts = ["the red cat sees a small bird near the river", "one dog"]
    feed = _encode(folders["st"], texts)
    got = ort.InferenceSession(str(out / "ort-fp32" / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    model = transformers.AutoModel.from_pretrained(str(folders["st"]), local_files_only=True).eval()
    with torch.no_grad():
        hidden = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).last_hidden_state
    mask = torch.from_numpy(feed["attention_mask"]).unsqueeze(-1).float()
    want = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()
    assert got.shape == (2, 32)
    np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.slow
def test_sdpa_export_gets_an_unfused_attention_warning(folders, capsys):
    """A factory that returns the folder's model as loaded (SDPA) exports the pattern no fusion matches: the build
    says so on the terminal and in the manifest."""
    root = folders["root"]
    (root / "sdpa_net.py").write_text(
        "import torch, transformers\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        f"        self.bert = transformers.AutoModel.from_pretrained({str(folders['plain'])!r}, local_files_only=True)\n"
        "    def forward(self, input_ids, attention_mask):\n"
        "        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state\n"
        "def build():\n"
        "    return Net().eval()\n")
    inputs = ('inputs = [{ name = "input_ids", shape = [1, 16], dtype = "int64", dynamic = { 0 = "batch" } },'
              ' { name = "attention_mask", shape = [1, 16], dtype = "int64", dynamic = { 0 = "batch" } }]')
    cfg = _config(root, "sdpa_net.py:build", ["ort-int8-dynamic"], inputs)
    cfg.write_text(cfg.read_text() + f'[calibration.text]\ntokenizer = "{folders["plain"]}"\nmax_length = 16\n'
                   f'[validation.text]\ntokenizer = "{folders["plain"]}"\nmax_length = 16\n')
    out = root / "out-sdpa"
    code = main(["build", str(cfg), "-o", str(out), "--no-validate"])
    err = capsys.readouterr().err
    assert code == 0, err
    note = json.loads((out / "manifest.json").read_text())["targets"]["ort-int8-dynamic"]["notes"]
    assert "scaled_dot_product_attention" in note["warning"] and f"{LAYERS} of {LAYERS} attention" in note["warning"]
    assert "were not fused into Attention" in err
    assert "QAttention" not in _ops(out / "ort-int8-dynamic" / "model.onnx")


def _bad(tmp_path: Path, source: str, capsys, extra: str = "") -> str:
    (tmp_path / "calib.txt").write_text("one two\n")
    (tmp_path / "val.txt").write_text("red cat\n")
    cfg = _config(tmp_path, source, ["ort-fp32"], extra)
    code = main(["build", str(cfg), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()
    return lines[0]


def _copy(folders, name: str, dst: Path) -> Path:
    shutil.copytree(folders[name], dst)
    return dst


def test_missing_folder(tmp_path, capsys):
    assert "does not exist" in _bad(tmp_path, f"hf:{tmp_path / 'nowhere'}", capsys)


def test_folder_without_config(tmp_path, folders, capsys):
    folder = _copy(folders, "plain", tmp_path / "m")
    (folder / "config.json").unlink()
    assert "has no config.json" in _bad(tmp_path, f"hf:{folder}", capsys)


def test_unknown_architecture(tmp_path, folders, capsys):
    folder = _copy(folders, "plain", tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["BertForMaskedLM"]}))
    assert "has no task edgekit knows" in _bad(tmp_path, f"hf:{folder}", capsys)


def test_unknown_model_type(tmp_path, folders, capsys):
    folder = _copy(folders, "plain", tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "no-such-model"}))
    assert "cannot be loaded offline" in _bad(tmp_path, f"hf:{folder}", capsys)


def test_remote_code_is_refused(tmp_path, folders, capsys):
    folder = _copy(folders, "plain", tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "modeling_x.XModel"}}))
    assert "runs no code from a model folder" in _bad(tmp_path, f"hf:{folder}", capsys)


def test_missing_weights(tmp_path, folders, capsys):
    folder = _copy(folders, "plain", tmp_path / "m")
    (folder / "model.safetensors").unlink()
    assert "holds no weights" in _bad(tmp_path, f"hf:{folder}", capsys)


def test_head_without_weights(tmp_path, folders, capsys):
    """A BertModel folder as sequence-classification: the classifier would be random."""
    line = _bad(tmp_path, f"hf:{folders['plain']}", capsys, 'task = "sequence-classification"')
    assert "would be random" in line and "classifier" in line


def test_image_classification_folder(tmp_path):
    """A ViT classifier folder: pixel_values from preprocessor_config.json's size, logits out."""
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=64, num_labels=5)
    torch.manual_seed(2)
    transformers.ViTForImageClassification(config).save_pretrained(str(tmp_path / "vit"))
    (tmp_path / "vit" / "preprocessor_config.json").write_text(json.dumps(
        {"do_resize": True, "size": {"height": 32, "width": 32}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    source = load_model(ModelConfig(f"hf:{tmp_path / 'vit'}"))
    assert [(s.name, s.shape, s.dtype) for s in source.inputs] == [("pixel_values", ("batch", 3, 32, 32), "float32")]
    assert source.outputs == ("logits",) and source.task == "classification"
    assert tuple(source.module(torch.randn(2, 3, 32, 32)).shape) == (2, 5)
