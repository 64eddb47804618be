"""Seconds per epoch of every training method on the same LeNet and data, side by side.

Fashion-MNIST training images (or digits upsampled to 28×28 with ``--dataset digits``),
LeNet, batch 64, σ = 0.5, the published MNIST settings of each method; one run, the
median over ``--epochs`` epochs of skorch's per-epoch duration.  Reported relative to
Gaussian augmentation, next to the count of network passes per example (in units of
one forward-backward of a Gaussian step) and the slow-downs CRT's Table 1 reports
(ResNet-110 on CIFAR-10, one V100, against standard training).

    python benchmarks/training_cost.py [--train 2000] [--epochs 2]
"""

from __future__ import annotations

import statistics

import harness  # benchmarks/harness.py: parser, --threads, timing
import numpy as np
import torch

import smoothsk
from smoothsk.datasets import load_dataset
from smoothsk.models import LeNet

# (name, class, parameters, passes per example in Gaussian-step units, CRT Table 1)
METHODS = [
    ("Gaussian", smoothsk.GaussianAugClassifier, {}, "1", "1 (standard)"),
    ("Stability (λ=2)", smoothsk.StabilityClassifier, {}, "2", "–"),
    ("Consistency (m=2)", smoothsk.ConsistencyClassifier, {"num_noise": 2}, "2", "–"),
    ("MACER (k=16)", smoothsk.MACERClassifier, {"num_noise": 16}, "16", "20.9×"),
    ("SmoothAdv (m=4, T=10)", smoothsk.SmoothAdvClassifier,
     {"num_noise": 4, "num_steps": 10, "epsilon": 1.0}, "4·(10+1) = 44", "46.2×"),
    ("SmoothMix (m=4, T=4, η=5)", smoothsk.SmoothMixClassifier,
     {"num_noise": 4, "num_steps": 4, "eta": 5.0, "step_size": 1.0}, "4·(4+2) = 24",
     "5.0× (m=2, T=4)"),
    ("CRT student (a=1)", smoothsk.CRTStudent, None, "1 + teacher forward ≈ 1.3", "≈ 1"),
]


def main(argv=None):
    parser = harness.parser(__doc__, threads=None)
    parser.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "digits"])
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    args = harness.parse(parser, argv)
    X, y = load_dataset(args.dataset, split="train")
    if args.dataset == "digits":  # 8×8 → 28×28 so that LeNet applies
        X = torch.nn.functional.interpolate(torch.from_numpy(X), size=28).numpy()
    X, y = X[: args.train], y[: args.train]
    common = dict(module=LeNet, sigma=0.5, max_epochs=args.epochs, lr=0.01, batch_size=64,
                  optimizer=torch.optim.SGD, optimizer__momentum=0.9, random_state=0)
    seconds = {}
    teacher = None
    for name, cls, params, _, _ in METHODS:
        if cls is smoothsk.CRTStudent:
            params = {"teacher": teacher, "sigma": None}
        clf = cls(**{**common, **params}).fit(X, y)
        if cls is smoothsk.SmoothMixClassifier:
            teacher = clf
        seconds[name] = statistics.median(clf.history[:, "dur"])
    print(f"{args.dataset}, {len(X)} training images, LeNet, batch 64, σ=0.5, "
          f"{torch.get_num_threads()} threads; median of {args.epochs} epochs\n")
    print("| method | s / epoch | × Gaussian | passes per example | CRT Table 1 |")
    print("|---|---|---|---|---|")
    base = seconds["Gaussian"]
    for name, _, _, passes, published in METHODS:
        print(f"| {name} | {seconds[name]:.2f} | {seconds[name] / base:.1f} | {passes} | "
              f"{published} |")
    assert np.isfinite(list(seconds.values())).all()


if __name__ == "__main__":
    main()
