"""Speed beyond the fp32 limit: certification and training at bf16, side by side with fp32.

One run, one machine, same network and inputs; medians of ``--repeats``.  Reported as
ratios to the fp32 raw forward rate (the limit of fp32 certification at fixed n):

- certification samples/s of ``smoothsk.certify`` at fp32, at bf16, and at bf16 with the
  network in channels-last memory format (``net.to(memory_format=torch.channels_last)``),
  each at the network's batch size;
- training seconds per epoch of Gaussian augmentation and SmoothMix on LeNet at fp32 and
  bf16 (same data, same seed);
- agreement of the votes of the same trained model certified at fp32 and bf16.

    python benchmarks/precision.py [--networks lenet,resnet20] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from smoothsk import GaussianAugClassifier, SmoothMixClassifier, certify
from smoothsk.models import CIFARResNet, LeNet

NETWORKS = {
    "lenet": (lambda: LeNet(), (1, 28, 28), 200),
    "resnet20": (lambda: CIFARResNet(20), (3, 32, 32), 50),
}


def _median_seconds(run, repeats):
    run()  # warm-up: first calls pay for allocation and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def raw_forward_rate(net, shape, batch, repeats, rows=4000):
    x = torch.rand(batch, *shape)
    steps = max(1, rows // batch)

    def run():
        with torch.inference_mode():
            for _ in range(steps):
                net(x)

    return steps * batch / _median_seconds(run, repeats)


def certify_rate(net, X, batch, repeats, n, precision):
    def run():
        certify(net, X, 0.25, n0=100, n=n, batch_size=batch, random_state=0,
                precision=precision)

    return len(X) * (n + 100) / _median_seconds(run, repeats)


def certification(args):
    rows = []
    for name in args.networks.split(","):
        build, shape, batch = NETWORKS[name]
        torch.manual_seed(0)
        net = build().eval()
        X = np.random.default_rng(0).random((args.inputs, *shape)).astype(np.float32)
        limit = raw_forward_rate(net, shape, batch, args.repeats)
        fp32 = certify_rate(net, X, batch, args.repeats, args.n, "fp32")
        bf16 = certify_rate(net, X, batch, args.repeats, args.n, "bf16")
        last = build().eval()
        last.load_state_dict(net.state_dict())
        last = last.to(memory_format=torch.channels_last)
        bf16_last = certify_rate(last, X, batch, args.repeats, args.n, "bf16")
        rows.append(dict(network=name, batch=batch, fp32_raw_forward=limit,
                         certify_fp32=fp32 / limit, certify_bf16=bf16 / limit,
                         certify_bf16_channels_last=bf16_last / limit))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def training(args):
    rng = np.random.default_rng(0)
    X = rng.random((args.train, 1, 28, 28)).astype(np.float32)
    y = (X[:, 0, 14, :14].mean(1) > X[:, 0, 14, 14:].mean(1)).astype(int)
    rows = []
    for cls, extra in ((GaussianAugClassifier, {}),
                       (SmoothMixClassifier, dict(num_noise=2, num_steps=2, warmup=1))):
        seconds = {}
        for precision, last in (("fp32", False), ("bf16", False), ("bf16", True)):
            clf = cls(module=LeNet, module__num_classes=2, sigma=0.5, max_epochs=1,
                      batch_size=128, precision=precision, channels_last=last,
                      random_state=0, **extra)
            seconds[precision, last] = _median_seconds(lambda clf=clf: clf.fit(X, y),
                                                       args.repeats)
        base = seconds["fp32", False]
        rows.append(dict(method=cls.__name__, fp32_seconds_per_epoch=base,
                         bf16_speedup=base / seconds["bf16", False],
                         bf16_channels_last_speedup=base / seconds["bf16", True]))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def agreement(args):
    rng = np.random.default_rng(1)
    X = rng.random((600, 1, 28, 28)).astype(np.float32)
    y = (X[:, 0, 14, :14].mean(1) > X[:, 0, 14, 14:].mean(1)).astype(int)
    clf = GaussianAugClassifier(module=LeNet, module__num_classes=2, sigma=0.25,
                                max_epochs=3, random_state=0).fit(X[:400], y[:400])
    fp32 = certify(clf.module_, X[400:], 0.25, n0=100, n=args.n, random_state=0)
    bf16 = certify(clf.module_, X[400:], 0.25, n0=100, n=args.n, random_state=0,
                   precision="bf16")
    correct = lambda c: np.where(c.prediction == y[400:], c.radius, 0.0)  # noqa: E731
    row = dict(inputs=200, same_prediction=float((fp32.prediction == bf16.prediction).mean()),
               acr_fp32=float(correct(fp32).mean()), acr_bf16=float(correct(bf16).mean()),
               acr_difference_se=float(np.std(correct(fp32) - correct(bf16)) / np.sqrt(200)))
    print(json.dumps(row), flush=True)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default="lenet,resnet20")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--inputs", type=int, default=10)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"torch": torch.__version__, "threads": torch.get_num_threads(),
               "certification": certification(args), "training": training(args),
               "agreement": agreement(args)}
    if args.out:
        with open(args.out, "w") as stream:
            json.dump(results, stream, indent=1)


if __name__ == "__main__":
    main()
