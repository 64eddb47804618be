"""Why MACER fails in the Fashion-MNIST reproduction: its loss with and without the hinge.

Trains LeNet on the reproduction's data (first 5,000 Fashion-MNIST training images, batch
64, lr 0.01, momentum 0.9) with MACER at σ = 1.0 for each ``--weights`` λ (λ = 0 leaves
only the cross-entropy of the smoothed soft prediction; λ = 6 is the published MNIST
setting), and prints the training loss per epoch and the base network's accuracy on
clean and on once-noised test images.  See docs/results.md.

    python benchmarks/macer_collapse.py --weights 0,6 --epochs 5,15
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import smoothsk
from smoothsk.datasets import load_fashion_mnist
from smoothsk.models import LeNet


def base_accuracy(clf, X, y, sigma, seed=0) -> tuple[float, float]:
    """Accuracy of the base network ``f`` on ``X`` and on ``X + N(0, σ²I)`` (one draw)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(X)
    with torch.no_grad():
        clean = clf.module_(x).argmax(1).numpy()
        noise = sigma * torch.randn(x.shape, generator=generator)
        noisy = clf.module_(x + noise).argmax(1).numpy()
    return float((clf.classes_[clean] == y).mean()), float((clf.classes_[noisy] == y).mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="Fashion-MNIST IDX directory")
    parser.add_argument("--weights", default="0,6", help="MACER λ values")
    parser.add_argument("--epochs", default="5,15", help="epochs, one per λ")
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--train", type=int, default=5_000)
    parser.add_argument("--test", type=int, default=2_000)
    args = parser.parse_args(argv)
    weights = [float(w) for w in args.weights.split(",")]
    epochs = [int(e) for e in args.epochs.split(",")]
    if len(epochs) != len(weights):
        parser.error("--epochs needs one value per --weights value")
    X, y = load_fashion_mnist(args.root, split="train")
    X_test, y_test = load_fashion_mnist(args.root, split="test")
    X, y = X[: args.train], y[: args.train]
    X_test, y_test = X_test[: args.test], y_test[: args.test]
    for weight, max_epochs in zip(weights, epochs):
        clf = smoothsk.MACERClassifier(
            sigma=args.sigma, num_noise=16, robustness_weight=weight, module=LeNet,
            max_epochs=max_epochs, lr=0.01, batch_size=64,
            optimizer=torch.optim.SGD, optimizer__momentum=0.9,
            optimizer__weight_decay=1e-4, random_state=0)
        start = time.perf_counter()
        clf.fit(X, y)
        clean, noisy = base_accuracy(clf, X_test, y_test, args.sigma)
        losses = np.round(clf.history[:, "train_loss"], 2).tolist()
        print(f"λ = {weight:g}, {max_epochs} epochs ({time.perf_counter() - start:.0f} s): "
              f"train loss per epoch {losses}; base accuracy clean {clean:.3f}, "
              f"noisy {noisy:.3f}", flush=True)


if __name__ == "__main__":
    main()
