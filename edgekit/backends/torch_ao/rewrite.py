"""nn.TransformerEncoder(Layer) rewritten with its attention projections as nn.Linear modules, so that dynamic
quantization reaches them; the rewrite is kept only if the outputs still match."""

from __future__ import annotations

import copy
import logging
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgekit.backends.torch_ao.common import as_outputs, first_line, set_module

log = logging.getLogger(__name__)


class EncoderLayer(nn.Module):
    """nn.TransformerEncoderLayer (inference) with the attention projections as nn.Linear modules, so dynamic
    quantization reaches them: the original computes them functionally and reads Linear weights as tensors."""

    def __init__(self, layer: nn.TransformerEncoderLayer) -> None:
        super().__init__()
        attn = layer.self_attn
        d, self.heads, self.batch_first = attn.embed_dim, attn.num_heads, attn.batch_first
        bias = attn.in_proj_bias is not None
        self.q, self.k, self.v = nn.Linear(d, d, bias=bias), nn.Linear(d, d, bias=bias), nn.Linear(d, d, bias=bias)
        with torch.no_grad():
            for i, proj in enumerate((self.q, self.k, self.v)):
                proj.weight.copy_(attn.in_proj_weight[i * d:(i + 1) * d])
                if bias:
                    proj.bias.copy_(attn.in_proj_bias[i * d:(i + 1) * d])
        self.out = nn.Linear(d, d, bias=attn.out_proj.bias is not None)
        self.out.load_state_dict(attn.out_proj.state_dict())
        self.linear1, self.linear2, self.norm1, self.norm2 = layer.linear1, layer.linear2, layer.norm1, layer.norm2
        self.act = nn.GELU() if layer.activation is F.gelu or isinstance(layer.activation, nn.GELU) else nn.ReLU()
        self.norm_first = layer.norm_first

    def _heads(self, y: Tensor, n: int, length: int) -> Tensor:
        return y.reshape(n, length, self.heads, -1).transpose(1, 2)

    def _attention(self, x: Tensor, mask: Optional[Tensor], padding: Optional[Tensor], is_causal: bool) -> Tensor:
        if not self.batch_first:
            x = x.transpose(0, 1)
        n, length = x.shape[0], x.shape[1]
        bias = torch.zeros(n, 1, length, length, dtype=x.dtype)
        if mask is not None:
            m = torch.zeros_like(mask, dtype=x.dtype).masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else mask
            bias = bias + (m.reshape(n, self.heads, length, length) if m.dim() == 3 else m)
        elif is_causal:
            bias = bias.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf"))
        if padding is not None:
            p = torch.zeros_like(padding, dtype=x.dtype).masked_fill(padding, float("-inf")) if padding.dtype == torch.bool else padding
            bias = bias + p.reshape(n, 1, 1, length)
        q, k, v = self._heads(self.q(x), n, length), self._heads(self.k(x), n, length), self._heads(self.v(x), n, length)
        y = self.out(F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(n, length, -1))
        return y if self.batch_first else y.transpose(0, 1)

    def forward(self, src: Tensor, src_mask: Optional[Tensor] = None, src_key_padding_mask: Optional[Tensor] = None,
                is_causal: bool = False) -> Tensor:
        x = src
        if self.norm_first:
            x = x + self._attention(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            return x + self.linear2(self.act(self.linear1(self.norm2(x))))
        x = self.norm1(x + self._attention(x, src_mask, src_key_padding_mask, is_causal))
        return self.norm2(x + self.linear2(self.act(self.linear1(x))))


class Encoder(nn.Module):
    """nn.TransformerEncoder over EncoderLayers (without the fast path that reads the original layers' weights)."""

    def __init__(self, encoder: nn.TransformerEncoder) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(layer) for layer in encoder.layers)
        self.norm = encoder.norm if encoder.norm is not None else nn.Identity()

    def forward(self, src: Tensor, mask: Optional[Tensor] = None, src_key_padding_mask: Optional[Tensor] = None,
                is_causal: Optional[bool] = None) -> Tensor:
        causal = bool(is_causal) if is_causal is not None else False
        for layer in self.layers:
            src = layer(src, mask, src_key_padding_mask, causal)
        return self.norm(src)


def _rewritable(layer: Any) -> bool:
    attn = layer.self_attn
    return (attn._qkv_same_embed_dim and attn.bias_k is None and not attn.add_zero_attn
            and (layer.activation in (F.relu, F.gelu) or isinstance(layer.activation, (nn.ReLU, nn.GELU))))


def rewrite_transformers(model: Any, example: tuple) -> tuple[Any, str]:
    """Swap nn.TransformerEncoder(Layer)s for the quantizable equivalent; keep the swap only if outputs still match."""
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.TransformerEncoder, nn.TransformerEncoderLayer))]
    targets = [(n, m) for n, m in targets if not any(n.startswith(o + ".") for o, _ in targets if o != n)]  # outermost only
    layers = [m for _, m in targets for m in (m.layers if isinstance(m, nn.TransformerEncoder) else [m])]
    if not targets:
        return model, ""
    if not all(_rewritable(layer) for layer in layers):
        return model, "nn.TransformerEncoderLayer with add_bias_kv, add_zero_attn, kdim/vdim or a custom activation: not rewritten"
    rewritten = copy.deepcopy(model)
    for name, module in targets:
        new = Encoder(module) if isinstance(module, nn.TransformerEncoder) else EncoderLayer(module)
        rewritten = set_module(rewritten, name, new.eval())
    try:
        with torch.no_grad():
            want, got = as_outputs(model(*example)), as_outputs(rewritten(*example))
        same = len(want) == len(got) and all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(want, got))
    except Exception as exc:  # e.g. a forward that hands the layers arguments the rewrite does not take
        log.debug("transformer rewrite failed", exc_info=True)
        return model, f"nn.TransformerEncoderLayer rewrite failed ({first_line(exc)}): kept as is, in float"
    if same:
        return rewritten, f"{len(layers)} nn.TransformerEncoderLayer(s) rewritten with attention projections as nn.Linear (outputs verified equal)"
    return model, "nn.TransformerEncoderLayer rewrite did not reproduce the outputs: kept as is, in float"
