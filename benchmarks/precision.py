"""Speed beyond the fp32 limit: certification and training at bf16, side by side with fp32.

One run, one machine, same network and inputs; medians of ``--repeats``.  Reported as
ratios to the fp32 raw forward rate (the limit of fp32 certification at fixed n):

- certification samples/s of ``smoothsk.certify`` at fp32, at bf16, and at bf16 with the
  network in channels-last memory format (``net.to(memory_format=torch.channels_last)``),
  each at the network's batch size;
- training seconds per epoch of Gaussian augmentation and SmoothMix on LeNet at fp32 and
  bf16 (same data, same seed);
- agreement of the votes of the same trained model certified at fp32 and bf16.

On a GPU (``--device cuda``) fp16 joins bf16, and timings wait for the device.

    python benchmarks/precision.py [--networks lenet,resnet20] [--repeats 3] [--threads N]
                                   [--device cuda]
"""

from __future__ import annotations

import json
import statistics
import time

import harness  # benchmarks/harness.py: parser, --threads, timing
import numpy as np
import torch

from smoothsk import GaussianAugClassifier, SmoothMixClassifier, certify
from smoothsk.io.files import atomic_write_text
from smoothsk.models import CIFARResNet, LeNet

NETWORKS = {
    "lenet": (lambda: LeNet(), (1, 28, 28), 200),
    "resnet20": (lambda: CIFARResNet(20), (3, 32, 32), 50),
}


def _wait():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _median_seconds(run, repeats):
    run()  # warm-up: first calls pay for allocation and kernel selection
    times = []
    for _ in range(repeats):
        _wait()
        start = time.perf_counter()
        run()
        _wait()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _reduced_precisions(device):
    return ("bf16", "fp16") if torch.device(device).type == "cuda" else ("bf16",)


def raw_forward_rate(net, shape, batch, repeats, rows=4000):
    x = torch.rand(batch, *shape, device=next(net.parameters()).device)
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
        if torch.device(args.device).type == "cuda":
            batch *= 20  # a GPU needs far larger batches to be busy
        torch.manual_seed(0)
        net = build().eval().to(args.device)
        X = np.random.default_rng(0).random((args.inputs, *shape)).astype(np.float32)
        limit = raw_forward_rate(net, shape, batch, args.repeats, rows=max(4000, 20 * batch))
        row = dict(network=name, batch=batch, fp32_raw_forward=limit,
                   certify_fp32=certify_rate(net, X, batch, args.repeats, args.n, "fp32") / limit)
        last = build().eval().to(args.device)
        last.load_state_dict(net.state_dict())
        last = last.to(memory_format=torch.channels_last)
        for precision in _reduced_precisions(args.device):
            row[f"certify_{precision}"] = certify_rate(
                net, X, batch, args.repeats, args.n, precision) / limit
            row[f"certify_{precision}_channels_last"] = certify_rate(
                last, X, batch, args.repeats, args.n, precision) / limit
        rows.append(row)
        print(json.dumps(rows[-1]), flush=True)
    return rows


def training(args):
    rng = np.random.default_rng(0)
    X = rng.random((args.train, 1, 28, 28)).astype(np.float32)
    y = (X[:, 0, 14, :14].mean(1) > X[:, 0, 14, 14:].mean(1)).astype(int)
    rows = []
    settings = [("fp32", False)] + [(p, last) for p in _reduced_precisions(args.device)
                                    for last in (False, True)]
    for cls, extra in ((GaussianAugClassifier, {}),
                       (SmoothMixClassifier, dict(num_noise=2, num_steps=2, warmup=1))):
        seconds = {}
        for precision, last in settings:
            clf = cls(module=LeNet, module__num_classes=2, sigma=0.5, max_epochs=1,
                      batch_size=128, precision=precision, channels_last=last,
                      device=args.device, random_state=0, **extra)
            seconds[precision, last] = _median_seconds(lambda clf=clf: clf.fit(X, y),
                                                       args.repeats)
        base = seconds["fp32", False]
        row = dict(method=cls.__name__, fp32_seconds_per_epoch=base)
        for precision, last in settings[1:]:
            key = f"{precision}{'_channels_last' if last else ''}_speedup"
            row[key] = base / seconds[precision, last]
        rows.append(row)
        print(json.dumps(rows[-1]), flush=True)
    return rows


def agreement(args):
    rng = np.random.default_rng(1)
    X = rng.random((600, 1, 28, 28)).astype(np.float32)
    y = (X[:, 0, 14, :14].mean(1) > X[:, 0, 14, 14:].mean(1)).astype(int)
    clf = GaussianAugClassifier(module=LeNet, module__num_classes=2, sigma=0.25,
                                max_epochs=3, device=args.device,
                                random_state=0).fit(X[:400], y[:400])
    fp32 = certify(clf.module_, X[400:], 0.25, n0=100, n=args.n, random_state=0)
    correct = lambda c: np.where(c.prediction == y[400:], c.radius, 0.0)  # noqa: E731
    row = dict(inputs=200, acr_fp32=float(correct(fp32).mean()))
    for precision in _reduced_precisions(args.device):
        other = certify(clf.module_, X[400:], 0.25, n0=100, n=args.n, random_state=0,
                        precision=precision)
        row[f"same_prediction_{precision}"] = float((fp32.prediction == other.prediction).mean())
        row[f"acr_{precision}"] = float(correct(other).mean())
        row[f"acr_difference_se_{precision}"] = float(
            np.std(correct(fp32) - correct(other)) / np.sqrt(200))
    print(json.dumps(row), flush=True)
    return row


def main(argv=None):
    parser = harness.parser(__doc__, threads=None)
    parser.add_argument("--networks", default="lenet,resnet20")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--inputs", type=int, default=10)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = harness.parse(parser, argv)
    device_name = (torch.cuda.get_device_name() if torch.device(args.device).type == "cuda"
                   else "cpu")
    results = {"torch": torch.__version__, "device": device_name,
               "threads": torch.get_num_threads(),
               "certification": certification(args), "training": training(args),
               "agreement": agreement(args)}
    if args.out:
        atomic_write_text(args.out, json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
