"""Train the bundled digits CNN and write its weights and the bundled calibration/validation data.

    .venv/bin/python tools/train_digits.py

Data: scikit-learn's 8x8 digits (1797 images), pixels scaled to [0, 1]. A stratified 25% split is held out as
validation (calibration/digits/val.npz, with labels); the model trains on the rest, and 256 of those training
images are the calibration set (calibration/digits/calib.npz) — so calibration and validation are disjoint.
Writes edgekit/examples/digits.safetensors. Deterministic: fixed seeds, one thread.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from edgekit.examples.digits import WEIGHTS, build

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "calibration" / "digits"
SEED = 0
EPOCHS = 40
CALIB_SAMPLES = 256


def main() -> None:
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)

    model = build()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, EPOCHS)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    gen = torch.Generator().manual_seed(SEED)
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(xt), 64):
            idx = order[i : i + 64]
            # small random shifts: a little augmentation for a 1.3k-image training set
            batch = torch.roll(xt[idx], shifts=(int(torch.randint(-1, 2, (1,), generator=gen)),), dims=(3,))
            loss = torch.nn.functional.cross_entropy(model(batch), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        model.eval()
        with torch.no_grad():
            acc = (model(torch.from_numpy(x_val)).argmax(1).numpy() == y_val).mean() * 100
        print(f"epoch {epoch + 1:2d}  loss {total / len(xt):.4f}  held-out accuracy {acc:.2f}%")

    model.eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(WEIGHTS))
    DATA.mkdir(parents=True, exist_ok=True)
    pick = np.random.default_rng(SEED).permutation(len(x_train))[:CALIB_SAMPLES]
    np.savez_compressed(DATA / "calib.npz", image=x_train[np.sort(pick)])
    np.savez_compressed(DATA / "val.npz", image=x_val, labels=y_val)
    print(f"wrote {WEIGHTS.relative_to(ROOT)}, {DATA.relative_to(ROOT)}/calib.npz ({CALIB_SAMPLES}), val.npz ({len(x_val)})")


if __name__ == "__main__":
    main()
