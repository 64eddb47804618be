"""The two-class bound and the randomized interval against CERTIFY's binary bound, on the
same counts.

For each σ, trains a Gaussian-augmentation model (LeNet on Fashion-MNIST, the default
MLP on digits; or loads it from ``results/two-class/models/``, which is not committed),
runs CERTIFY once on every ``--skip``-th test image, and turns the *same* estimation
counts into radii four ways: binary / two-class bound × Clopper–Pearson / randomized
interval.  Reports ACR, certified
accuracy at each radius, and how many inputs are certified with p̲_A < 1/2.

    python benchmarks/two_class_bound.py [--dataset digits|fashion-mnist] [--epochs 5]
        [--skip 20] [--n 10000]
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import harness  # benchmarks/harness.py: parser, --threads, timing
import numpy as np
from gaussian_models import gaussian_model  # benchmarks/ (these run as scripts)

from smoothsk.certification.radius import certified_radius, uniform_variates
from smoothsk.datasets import load_dataset
from smoothsk.io.files import atomic_write_text

OUT = Path(__file__).parent / "results" / "two-class"
RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


def main(argv=None):
    parser = harness.parser(__doc__, threads=2)
    parser.add_argument("--dataset", default="fashion-mnist",
                        choices=["digits", "fashion-mnist"])
    parser.add_argument("--sigmas", default="0.25,0.5,1.0")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--skip", type=int, default=20)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--alpha", type=float, default=0.001)
    args = harness.parse(parser, argv)
    (OUT / "models").mkdir(parents=True, exist_ok=True)
    digits = args.dataset == "digits"
    X_train, y_train = load_dataset(args.dataset, split="train", flat=digits)
    X_test, y_test = load_dataset(args.dataset, split="test", flat=digits)
    X_test, y_test = X_test[:: args.skip], y_test[:: args.skip]
    rows = []
    for sigma in [float(s) for s in args.sigmas.split(",")]:
        clf = gaussian_model(args.dataset, sigma, args.epochs, OUT / "models", X_train, y_train)
        start = time.perf_counter()
        cert = clf.certify(X_test, n0=100, n=args.n, alpha=args.alpha, random_state=1)
        seconds = time.perf_counter() - start
        top = cert.selection_counts.argmax(axis=1)
        truth = np.searchsorted(clf.classes_, y_test)
        for interval in ("clopper-pearson", "randomized"):
            # the variates certify(interval="randomized") draws for these inputs at seed 1
            uniforms = uniform_variates(1, np.arange(len(top))) \
                if interval == "randomized" else None
            for bound in ("binary", "two-class"):
                certified, radius, pa_lower, _ = certified_radius(
                    top, cert.counts, sigma, args.alpha, bound=bound, interval=interval,
                    uniforms=uniforms)
                correct = certified & (top == truth)
                rows.append({
                    "sigma": sigma, "bound": bound, "interval": interval,
                    "inputs": len(top), "acr": float(np.where(correct, radius, 0).mean()),
                    "certified_accuracy": {f"{r:g}": float((correct & (radius >= r)).mean())
                                           for r in RADII},
                    "certified_below_one_half": int((certified & (pa_lower < 0.5)).sum()),
                    "certify_seconds": seconds,
                })
                row = rows[-1]
                print(f"σ={sigma:<5g} {bound:9s} {interval:15s} ACR {row['acr']:.4f}  CA "
                      + " ".join(f"{100 * v:5.1f}" for v in row["certified_accuracy"].values())
                      + f"  certified with p̲_A<1/2: {row['certified_below_one_half']}")
        settings = {"dataset": args.dataset, "skip": args.skip, "n0": 100, "n": args.n,
                    "alpha": args.alpha, "epochs": args.epochs,
                    "network": "MLP" if digits else "LeNet",
                    "precision": "fp32" if digits else "bf16", "radii": RADII}
        atomic_write_text(OUT / f"two-class-{args.dataset}.json",
                          json.dumps({**settings, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
