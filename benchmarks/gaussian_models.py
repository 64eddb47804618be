"""The Gaussian-augmentation models several benchmarks certify, trained once and cached.

The default MLP on digits (SGD at lr 0.05, batch 64) or LeNet on Fashion-MNIST (bf16,
lr 0.01, batch 256), 0.9 momentum, seed 0; cached as ``<dataset>-gaussian-sigma<σ>-e<epochs>
.smoothsk`` in the benchmark's ``models/`` folder (not committed).
"""

from __future__ import annotations

from pathlib import Path

import torch

from smoothsk import GaussianAugClassifier
from smoothsk.io.model_file import load_model, save_model
from smoothsk.models import LeNet


def gaussian_model(dataset: str, sigma: float, epochs: int, folder: Path, X, y):
    """The cached model for ``(dataset, sigma, epochs)``, trained on ``(X, y)`` if absent."""
    path = Path(folder) / f"{dataset}-gaussian-sigma{sigma:g}-e{epochs}.smoothsk"
    if path.exists():
        return load_model(path)
    digits = dataset == "digits"
    network = {} if digits else dict(module=LeNet, module__num_classes=10, precision="bf16")
    clf = GaussianAugClassifier(
        sigma=sigma, max_epochs=epochs, lr=0.05 if digits else 0.01,
        optimizer=torch.optim.SGD, optimizer__momentum=0.9,
        batch_size=64 if digits else 256, random_state=0, **network,
    ).fit(X, y)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(clf, path)
    return clf
