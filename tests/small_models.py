"""The small models of the recovery tests and benchmarks (tests/test_recover.py,
benchmarks/recover_backends_bench.py): a MobileNetV2-style CNN with planted depthwise channel spread and a ViT-style
transformer, both seeded. Builds load this file as the model source (``net.py:mbv2``, ``net.py:vit``);
``write_sandbox`` lays out the folder they build in (benchmarks/anchors.py's ViT too)."""

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        mid = cin * expand
        self.expand = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU())
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.residual else y


class MobileNetV2Style(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.blocks = nn.Sequential(Block(16, 16, 1, 4), Block(16, 24, 2, 4), Block(24, 24, 1, 4), Block(24, 32, 2, 4),
                                    Block(32, 32, 1, 4))
        self.head = nn.Sequential(nn.Conv2d(32, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU6())
        self.fc = nn.Linear(128, classes)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(x.mean((2, 3)))


def mbv2():
    torch.manual_seed(0)
    m = MobileNetV2Style()
    g = torch.Generator().manual_seed(1)
    for bn in (x for x in m.modules() if isinstance(x, nn.BatchNorm2d)):
        n = bn.num_features
        bn.weight.data = torch.exp(torch.randn(n, generator=g) * 1.5)
        bn.bias.data = torch.randn(n, generator=g) * 0.3
        bn.running_mean.data = torch.randn(n, generator=g) * 0.2
        bn.running_var.data = torch.rand(n, generator=g) * 2 + 0.2
    g = torch.Generator().manual_seed(2)
    for b in m.blocks:  # planted: depthwise channel scales over ~3 decades
        b.dw[1].weight.data = torch.exp(torch.randn(b.dw[1].num_features, generator=g) * 2.0)
    return m.eval()


class ViTStyle(nn.Module):
    def __init__(self, dim=64, depth=2, heads=4, classes=10):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 65, dim) * 0.02)
        self.layers = nn.ModuleList(nn.ModuleDict(dict(
            ln1=nn.LayerNorm(dim), attn=nn.MultiheadAttention(dim, heads, batch_first=True), ln2=nn.LayerNorm(dim),
            mlp=nn.Sequential(nn.Linear(dim, dim * 4), nn.GELU(), nn.Linear(dim * 4, dim)))) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        for layer in self.layers:
            h = layer["ln1"](x)
            x = x + layer["attn"](h, h, h, need_weights=False)[0]
            x = x + layer["mlp"](layer["ln2"](x))
        return self.head(self.norm(x[:, 0]))


def vit():
    torch.manual_seed(0)
    return ViTStyle().eval()


def write_sandbox(root):
    """This file as ``root/net.py``, each model's seeded weights (``mbv2.safetensors``, ``vit.safetensors``) and the
    data: 96 calibration (``calib.npz``) and 64 held-out (``val.npz``) standard-normal images, seed 0."""
    from pathlib import Path

    import numpy as np
    from safetensors.torch import save_file

    root = Path(root)
    (root / "net.py").write_text(Path(__file__).read_text())
    for name, make in (("mbv2", mbv2), ("vit", vit)):
        save_file({k: v.contiguous() for k, v in make().state_dict().items()}, str(root / f"{name}.safetensors"))
    x = np.random.default_rng(0).standard_normal((160, 3, 32, 32)).astype(np.float32)
    np.savez(root / "calib.npz", x=x[:96])
    np.savez(root / "val.npz", x=x[96:])
