"""Denoised smoothing on Fashion-MNIST: certify classifiers trained on clean data.

For σ in {0.25, 0.5}: certified accuracy at r = 0, 0.25, 0.5 of
(a) a clean LeNet smoothed as is, (b) with an MSE denoiser, (c) with a stability
denoiser, (d) a LeNet trained with Gaussian noise (what retraining reaches), and a
scikit-learn ``MLPClassifier`` bare and with an MSE denoiser; training times of each
denoiser against training the classifier itself.  Writes ``results.json`` and
``results.md`` to ``--out``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import harness  # benchmarks/harness.py: parser, --threads, timing
import numpy as np
import torch
from sklearn.neural_network import MLPClassifier
from skorch import NeuralNetClassifier

from smoothsk import DenoisedSmoothingClassifier, GaussianAugClassifier, certify
from smoothsk.datasets import load_fashion_mnist
from smoothsk.io.files import atomic_write_text
from smoothsk.models import LeNet

RADII = (0.0, 0.25, 0.5)


def certified_accuracy(cert, y) -> list[float]:
    correct = cert.is_correct(y)
    return [float(np.mean(correct & (cert.radius >= r))) for r in RADII]


def timed_fit(estimator, X, y):
    start = time.perf_counter()
    estimator.fit(X, y)
    return estimator, time.perf_counter() - start


def main(argv=None):
    parser = harness.parser(__doc__, threads=None)
    parser.add_argument("--out", default="benchmarks/results/denoised-fmnist")
    parser.add_argument("--root", default=None, help="Fashion-MNIST IDX directory")
    parser.add_argument("--train", type=int, default=5_000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--test-every", type=int, default=50)
    parser.add_argument("--n", type=int, default=1_000)
    args = harness.parse(parser, argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    X, y = load_fashion_mnist(args.root, split="train")
    X, y = X[: args.train], y[: args.train]
    X_test, y_test = load_fashion_mnist(args.root, split="test")
    X_test, y_test = X_test[:: args.test_every], y_test[:: args.test_every]
    fast = dict(precision="bf16", channels_last=True)
    common = dict(max_epochs=args.epochs, n=args.n, random_state=0, **fast)

    torch.manual_seed(0)
    lenet, lenet_seconds = timed_fit(NeuralNetClassifier(
        LeNet, criterion=torch.nn.CrossEntropyLoss, optimizer=torch.optim.Adam, lr=1e-3,
        max_epochs=args.epochs, batch_size=64, train_split=None,
        iterator_train__shuffle=True), X, y)
    mlp, mlp_seconds = timed_fit(MLPClassifier(
        hidden_layer_sizes=(256,), max_iter=args.epochs, random_state=0),
        X.reshape(len(X), -1), y)
    results = {"settings": vars(args) | {"radii": RADII},
               "classifiers": {"LeNet (clean)": lenet_seconds, "MLPClassifier": mlp_seconds},
               "rows": []}

    def record(sigma, name, cert, seconds, note):
        row = {"sigma": sigma, "model": name, "certified_accuracy": certified_accuracy(
            cert, y_test), "train_seconds": seconds, "note": note}
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
        atomic_write_text(out / "results.json", json.dumps(results, indent=1))

    for sigma in (0.25, 0.5):
        kw = dict(n0=100, n=args.n, random_state=0, batch_size=500)
        record(sigma, "LeNet (clean), bare", certify(lenet, X_test, sigma, **kw), 0.0, "")
        for objective in ("mse", "stability"):
            model, seconds = timed_fit(DenoisedSmoothingClassifier(
                lenet, sigma=sigma, objective=objective, **common), X, y)
            record(sigma, f"LeNet (clean) + {objective} denoiser", model.certify(X_test),
                   seconds, "denoiser training")
        model, seconds = timed_fit(GaussianAugClassifier(LeNet, sigma=sigma, **common), X, y)
        record(sigma, "LeNet trained with noise (Gaussian)", model.certify(X_test), seconds,
               "classifier training")
        record(sigma, "MLPClassifier, bare", certify(mlp, X_test, sigma, **kw), 0.0, "")
        model, seconds = timed_fit(DenoisedSmoothingClassifier(
            mlp, sigma=sigma, objective="mse", **common), X, y)
        record(sigma, "MLPClassifier + mse denoiser", model.certify(X_test), seconds,
               "denoiser training")
    write_markdown(out, results)


def write_markdown(out: Path, results: dict):
    s = results["settings"]
    lines = [f"Fashion-MNIST, {s['train']:,} training images, {s['epochs']} epochs (Adam, lr "
             f"1e-3), certified every {s['test_every']}th test image, n0 = 100, n = "
             f"{s['n']:,}, α = 0.001, bf16 + channels-last. Denoiser: DnCNN depth 5, width 32. "
             "Classifier training: " + ", ".join(
                 f"{name} {sec:.0f} s" for name, sec in results["classifiers"].items()) + ".\n",
             "| σ | model | " + " | ".join(f"r = {r:g}" for r in s["radii"])
             + " | training (s) |", "|---|---|" + "---|" * len(s["radii"]) + "---|"]
    for row in results["rows"]:
        accs = " | ".join(f"{100 * a:.1f}" for a in row["certified_accuracy"])
        seconds = f"{row['train_seconds']:.0f} ({row['note']})" if row["note"] else "–"
        lines.append(f"| {row['sigma']:g} | {row['model']} | {accs} | {seconds} |")
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
