"""Channels-last at fp32 on a CPU: the layout ``channels_last="auto"`` chooses there.

The estimators' default network for images (LeNet on 1 × 28 × 28 inputs) trained and
certified with ``channels_last=False`` and ``True``, everything else equal and at fp32,
interleaved (False, True, False, True, ...) in one process; best of ``--repeats``:

- training: seconds per epoch of ``GaussianAugClassifier`` on ``--train`` random images;
- certification: samples/s of ``certify`` (n0 = 100, n = ``--n``) on LeNet and on
  CIFAR ResNet-20;
- agreement: the trained models' certificates with the same seed (the layout changes
  only the order of sums inside a convolution).

    python benchmarks/channels_last.py [--threads 1] [--out results.json]
"""

from __future__ import annotations

import json
import time

import harness  # benchmarks/harness.py: parser, --threads, timing
import numpy as np
import torch

from smoothsk import GaussianAugClassifier, certify
from smoothsk.io.files import atomic_write_text
from smoothsk.models import CIFARResNet, LeNet


def _seconds(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def training_epoch_seconds(X, y, channels_last: bool, epochs: int) -> tuple[float, object]:
    clf = GaussianAugClassifier(sigma=0.25, max_epochs=epochs, channels_last=channels_last,
                                random_state=0, verbose=0)
    clf.fit(X, y)
    return min(clf.history[:, "dur"]), clf


def certify_rate(net, X, n: int, batch: int) -> float:
    rows = len(X) * (100 + n)
    return rows / _seconds(lambda: certify(net, X, 0.25, n0=100, n=n, batch_size=batch,
                                           random_state=0))


def main(argv=None):
    parser = harness.parser(__doc__, threads=None)
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = harness.parse(parser, argv)
    rng = np.random.default_rng(0)
    X = rng.random((args.train, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, args.train)
    networks = {"lenet": (LeNet(), rng.random((10, 1, 28, 28), dtype=np.float32), 200),
                "resnet20": (CIFARResNet(20), rng.random((2, 3, 32, 32), dtype=np.float32), 50)}
    layouts = {False: torch.contiguous_format, True: torch.channels_last}
    train = {False: [], True: []}
    rates = {name: {False: [], True: []} for name in networks}
    models = {}
    for _ in range(args.repeats):
        for last in (False, True):
            seconds, models[last] = training_epoch_seconds(X, y, last, args.epochs)
            train[last].append(seconds)
            for name, (net, inputs, batch) in networks.items():
                net = net.eval().to(memory_format=layouts[last])
                certify_rate(net, inputs[:1], 200, batch)  # warm-up: oneDNN primitives
                rates[name][last].append(certify_rate(net, inputs, args.n, batch))
    probe = rng.random((50, 1, 28, 28), dtype=np.float32)
    a, b = (models[last].certify(probe, n=args.n, random_state=0) for last in (False, True))
    result = {
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "training_seconds_per_epoch": {"contiguous": min(train[False]),
                                       "channels_last": min(train[True])},
        "training_speedup": min(train[False]) / min(train[True]),
        "certify_samples_per_s": {name: {"contiguous": max(r[False]),
                                         "channels_last": max(r[True])}
                                  for name, r in rates.items()},
        "certify_speedup": {name: max(r[True]) / max(r[False]) for name, r in rates.items()},
        "same_prediction": float((a.prediction == b.prediction).mean()),
        "radius_max_abs_difference": float(np.abs(a.radius - b.radius).max()),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
