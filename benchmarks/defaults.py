"""Defaults that train, on Fashion-MNIST: nothing but σ against scikit-learn's MLPClassifier.

The first ``--train`` training images as the data loader gives them (1 × 28 × 28, so the
estimators' default network is LeNet), the first ``--test`` test images; smoothed
accuracy (``score``: 1,000 draws per input) of ``GaussianAugClassifier(sigma=0.25)`` with
every other parameter at its default, per seed, against the clean accuracy of
``MLPClassifier(random_state=seed)`` on the same images flattened, seed by seed.

    python benchmarks/defaults.py [--seeds 0,1] [--out results.json]
"""

from __future__ import annotations

import json
import time

import harness  # benchmarks/harness.py: parser, --threads, timing
from sklearn.neural_network import MLPClassifier

from smoothsk import GaussianAugClassifier
from smoothsk.datasets import load_dataset
from smoothsk.io.files import atomic_write_text


def main(argv=None):
    parser = harness.parser(__doc__, threads=None)
    parser.add_argument("--train", type=int, default=5000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--out", default=None)
    args = harness.parse(parser, argv)
    X, y = load_dataset("fashion-mnist", split="train")
    X_test, y_test = load_dataset("fashion-mnist", split="test")
    X, y = X[: args.train], y[: args.train]
    X_test, y_test = X_test[: args.test], y_test[: args.test]
    result = {"train": args.train, "test": args.test, "mlpclassifier": [], "gaussian": []}
    for seed in (int(s) for s in args.seeds.split(",")):
        start = time.perf_counter()
        reference = MLPClassifier(random_state=seed).fit(X.reshape(len(X), -1), y)
        row = {"seed": seed, "clean_accuracy": reference.score(
            X_test.reshape(len(X_test), -1), y_test), "train_seconds": time.perf_counter() - start}
        result["mlpclassifier"].append(row)
        print(json.dumps({"mlpclassifier": row}), flush=True)
        start = time.perf_counter()
        clf = GaussianAugClassifier(sigma=0.25, random_state=seed).fit(X, y)
        trained = time.perf_counter() - start
        row = {"seed": seed, "default_network": clf.default_network_,
               "smoothed_accuracy": clf.score(X_test, y_test), "train_seconds": trained}
        result["gaussian"].append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
