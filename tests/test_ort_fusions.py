"""edgekit's own transformer rewrites for ONNX Runtime (edgekit/backends/ort_fusions.py): attention into one
Attention / MultiHeadAttention node, residual LayerNorms on 2-D rows. Real exports, real ORT runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgekit.backends.onnx.session import session
from edgekit.backends.ort.passes.attention import fuse_attention
from edgekit.backends.ort.passes.layernorm_rows import layernorm_rows
from edgekit.cli import main

ENCODER = '''
import torch
import torch.nn as nn
import torch.nn.functional as F

LENGTH = 16


class Block(nn.Module):
    def __init__(self, d=32, heads=4, scale=1.0):
        super().__init__()
        self.heads, self.scale = heads, scale * (d // heads) ** -0.5
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x, bias):
        n, t, d = x.shape

        def split(z):
            return z.view(n, t, self.heads, -1).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        a = torch.softmax(q @ k.transpose(-1, -2) * self.scale + bias, dim=-1) @ v
        x = self.ln1(x + self.o(a.transpose(1, 2).reshape(n, t, d)))
        return self.ln2(x + self.down(F.gelu(self.up(x))))


class Encoder(nn.Module):
    """Token ids + attention mask -> mean-pooled embedding, the mask made into an additive bias four ways."""

    def __init__(self, style, vocab=50, d=32, layers=2, scale=1.0):
        super().__init__()
        self.style = style
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, LENGTH, d) * 0.1)
        self.norm = nn.LayerNorm(d)
        self.blocks = nn.ModuleList(Block(d, scale=scale) for _ in range(layers))
        self.register_buffer("causal", torch.tril(torch.ones(LENGTH, LENGTH, dtype=torch.bool))[None, None])

    def forward(self, input_ids, attention_mask):
        n, t = input_ids.shape
        x = self.norm(self.embed(input_ids) + self.pos)
        keep = attention_mask[:, None, None, :].bool()
        if self.style == "where_keys":      # [batch, 1, 1, keys]
            bias = torch.where(keep, 0.0, float("-inf"))
        elif self.style == "where_square":  # [batch, 1, queries, keys], as Hugging Face's SDPA mask
            bias = torch.where(keep.expand(n, 1, t, t), 0.0, float("-inf"))
        elif self.style == "causal":        # one [1, 1, queries, keys] mask for every row, folded to a constant
            bias = torch.where(self.causal, 0.0, float("-inf"))
        else:                               # (1 - mask) * -10000: arithmetic, not a Where
            bias = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        for block in self.blocks:
            x = block(x, bias)
        m = attention_mask.unsqueeze(-1).float()
        return (x * m).sum(1) / m.sum(1)


def where_keys():
    torch.manual_seed(0)
    return Encoder("where_keys").eval()


def where_square():  # and a score scale other than 1/sqrt(head size)
    torch.manual_seed(0)
    return Encoder("where_square", scale=0.5).eval()


def arithmetic():
    torch.manual_seed(0)
    return Encoder("arithmetic").eval()


def causal():
    torch.manual_seed(0)
    return Encoder("causal").eval()
'''

CONFIG = """
[model]
source = "encoder.py:{factory}"
inputs = [ {{ name = "input_ids", shape = [1, 16], dtype = "int64", dynamic = {{ 0 = "batch" }} }},
           {{ name = "attention_mask", shape = [1, 16], dtype = "int64", dynamic = {{ 0 = "batch" }} }} ]
outputs = ["embedding"]
task = "embedding"

[calibration]
data = "calib.npz"

[validation]
data = "val.npz"
batch_size = 1

[targets]
use = ["ort-int8-dynamic"]

[targets.ort-int8-dynamic.runtime]
warmup = 2
runs = 10
"""

STYLES = ("where_keys", "where_square", "arithmetic", "causal")
TORCHSCRIPT = "where_square_torchscript"  # the same model through the other exporter: computed reshape shapes


def _tokens(n: int, seed: int) -> dict[str, np.ndarray]:
    """Token ids with 4-16 real tokens per row, the rest padding (mask 0)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 50, size=(n, 16))
    lengths = rng.integers(4, 17, size=n)
    mask = (np.arange(16)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": ids * mask, "attention_mask": mask}


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, Path]:
    """One real `edgekit build` per mask style: {style: output folder}."""
    root = tmp_path_factory.mktemp("fusions")
    (root / "encoder.py").write_text(ENCODER)
    np.savez(root / "calib.npz", **_tokens(32, 1))
    np.savez(root / "val.npz", **_tokens(16, 2))
    out = {}
    configs = {style: CONFIG.format(factory=style) for style in STYLES}
    configs[TORCHSCRIPT] = '[export]\nexporter = "torchscript"\n' + CONFIG.format(factory="where_square")
    for name, text in configs.items():
        (root / f"{name}.toml").write_text(text)
        assert main(["-q", "build", str(root / f"{name}.toml"), "-o", str(root / name)]) == 0
        out[name] = root / name
    return out


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def _run(model: str | bytes, feed: dict[str, np.ndarray]) -> np.ndarray:
    return session(model, 2).run(None, feed)[0]


@pytest.mark.parametrize("style, made", [("where_keys", "Attention"), ("where_square", "Attention"),
                                         ("arithmetic", "MultiHeadAttention"), ("causal", "MultiHeadAttention"),
                                         (TORCHSCRIPT, "Attention")])
def test_fused_graph_matches_the_export_in_fp32(builds, style, made):
    """Each attention becomes one node (Attention when the mask is a 0/-inf Where, else MultiHeadAttention with the
    bias as is); the residual LayerNorms run on rows. Same outputs as the export, batch 3 with padding."""
    reference = builds[style] / "reference" / "model.onnx"
    model = onnx.load(str(reference))
    counts = fuse_attention(model)
    assert counts[made] == 2 and sum(counts.values()) == 2
    assert layernorm_rows(model) == 4
    ops = [n.op_type for n in model.graph.node]
    assert "Softmax" not in ops and "Transpose" not in ops and ops.count(made) == 2
    feed = _tokens(3, 7)
    want, got = _run(str(reference), feed), _run(model.SerializeToString(), feed)
    assert got.shape == want.shape == (3, 32)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))


def test_rows_layernorm_is_not_refused_into_skiplayernorm(builds, tmp_path):
    """The premise of layernorm_rows: ONNX Runtime fuses the export's 3-D Add + LayerNormalization into
    SkipLayerNormalization, and leaves the 2-D rows form alone."""
    reference = builds["where_keys"] / "reference" / "model.onnx"
    model = onnx.load(str(reference))
    layernorm_rows(model)
    for name, graph in (("export", onnx.load(str(reference))), ("rows", model)):
        optimized = tmp_path / f"{name}.onnx"
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(optimized)
        ort.InferenceSession(graph.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        ops = _ops(optimized)
        if name == "export":
            assert ops.count("SkipLayerNormalization") == 4
        else:
            assert "SkipLayerNormalization" not in ops and ops.count("LayerNormalization") == 5


def test_int8_artifact_runs_qattention_and_stays_close(builds):
    """Through the user's build: the where-mask encoder's ort-int8-dynamic artifact holds two INT8 QAttention
    nodes (projection weights int8) and its embeddings stay within the profile's gate."""
    for style in ("where_keys", "where_square", TORCHSCRIPT):
        manifest = json.loads((builds[style] / "manifest.json").read_text())
        target = manifest["targets"]["ort-int8-dynamic"]
        assert target["status"] == "passed"
        assert target["notes"]["transformer_fusion"]["fused"]["Attention"] == 2
        ops = _ops(builds[style] / "ort-int8-dynamic" / "model.onnx")
        assert ops.count("QAttention") == 2 and "Attention" not in ops and "Softmax" not in ops
        assert target["metrics"]["vs_torch"]["worst"]["cosine"] >= 0.99
        feed = _tokens(4, 9)
        want = _run(str(builds[style] / "reference" / "model.onnx"), feed)
        got = _run(str(builds[style] / "ort-int8-dynamic" / "model.onnx"), feed)
        cosine = np.sum(want * got, axis=1) / np.linalg.norm(want, axis=1) / np.linalg.norm(got, axis=1)
        assert cosine.min() >= 0.99


def test_a_graph_without_attention_is_left_as_is():
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Softmax", ["h"], ["y"], axis=-1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    before = model.SerializeToString()
    assert fuse_attention(model) == {"Attention": 0, "MultiHeadAttention": 0}
    assert layernorm_rows(model) == 0
    assert model.SerializeToString() == before
