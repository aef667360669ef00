"""The bundled example: a small CNN for scikit-learn's 8x8 digits (inputs are pixel values / 16, NCHW 1x1x8x8).

Trained by ``tools/train_digits.py``, which also wrote ``calibration/digits/{calib,val}.npz``.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

WEIGHTS = Path(__file__).resolve().parent / "digits.safetensors"


class DigitsNet(nn.Module):
    """conv-bn-relu x2, max-pool, two fully connected layers; ~150k parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, image):
        return self.classifier(self.features(image))


def build() -> DigitsNet:
    return DigitsNet()
