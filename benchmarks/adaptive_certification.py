"""Adaptive fixed-radius certification against fixed-n CERTIFY, side by side.

Trains a Gaussian-augmentation model, certifies the test images once with CERTIFY
(n0 = 100, n = 100,000, alpha = 0.001), then decides "certified-correct at r" for each
radius with ``certify_radius`` (same seed, same n as its budget) and reports
agreement, the mean number of estimation draws and wall time.

    python benchmarks/adaptive_certification.py [--dataset digits|fashion-mnist]
"""

from __future__ import annotations

import time

import harness  # benchmarks/harness.py: parser, --threads, timing
import numpy as np
import torch

from smoothsk import GaussianAugClassifier
from smoothsk.datasets import load_dataset


def main(argv=None):
    parser = harness.parser(__doc__, threads=2)
    parser.add_argument("--dataset", default="digits", choices=["digits", "fashion-mnist"])
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--radii", default="0.125,0.25,0.5,0.75")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--max-test", type=int, default=540)
    parser.add_argument("--epochs", type=int, default=30)
    args = harness.parse(parser, argv)

    X_train, y_train = load_dataset(args.dataset, split="train", flat=True)
    X_test, y_test = load_dataset(args.dataset, split="test", flat=True)
    hidden = (256, 256)
    if args.dataset == "fashion-mnist":
        X_train, y_train = X_train[:20_000], y_train[:20_000]
        X_test, y_test = X_test[::20], y_test[::20]
        hidden = (256, 256)
    X_test, y_test = X_test[: args.max_test], y_test[: args.max_test]
    clf = GaussianAugClassifier(
        sigma=args.sigma, max_epochs=args.epochs, lr=0.05,
        optimizer=torch.optim.SGD, optimizer__momentum=0.9,
        batch_size=64, module__hidden_units=hidden, random_state=0,
    ).fit(X_train, y_train)

    start = time.perf_counter()
    fixed = clf.certify(X_test, n0=100, n=args.n, alpha=0.001, random_state=1)
    fixed_seconds = time.perf_counter() - start
    print(f"{args.dataset}: {len(X_test)} test inputs, sigma={args.sigma}, n={args.n:,}")
    print(f"fixed-n CERTIFY: {fixed_seconds:.1f} s, {args.n:,} draws per input\n")
    print("| r | CA fixed | CA adaptive | agreement | mean draws | × fewer draws | s | × faster |")
    print("|---|---|---|---|---|---|---|---|")
    for radius in [float(r) for r in args.radii.split(",")]:
        start = time.perf_counter()
        adaptive = clf.certify_radius(X_test, radius, y=y_test, n0=100, n=args.n,
                                      alpha=0.001, random_state=1)
        seconds = time.perf_counter() - start
        fixed_correct = fixed.is_correct(y_test) & (fixed.radius >= radius)
        adaptive_correct = adaptive.is_correct(y_test)
        agreement = np.mean(fixed_correct == adaptive_correct)
        draws = adaptive.samples.mean()
        print(f"| {radius} | {fixed_correct.mean():.3f} | {adaptive_correct.mean():.3f} | "
              f"{100 * agreement:.1f} % | {draws:,.0f} | {args.n / max(draws, 1):.0f} | "
              f"{seconds:.2f} | {fixed_seconds / seconds:.0f} |")


if __name__ == "__main__":
    main()
