"""Certification throughput against the number of local joblib workers.

Same network (LeNet, 1×28×28 inputs), same inputs, same n, one run: noisy samples per
second with 1 worker (all cores as torch threads), 1 worker with 1 thread, and
2 workers with cpu_count // 2 threads each.  Certificates are checked identical.

    python benchmarks/scaling.py [--inputs 40] [--n 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from smoothsk import certify
from smoothsk.models import LeNet


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=40)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    torch.manual_seed(0)
    net = LeNet().eval()
    X = np.random.default_rng(0).uniform(size=(args.inputs, 1, 28, 28)).astype(np.float32)
    kw = dict(n0=100, n=args.n, alpha=0.001, batch_size=args.batch_size, random_state=0)
    settings = [(f"1 worker, {cores} threads", dict(), cores),
                ("1 worker, 1 thread", dict(), 1),
                (f"2 workers, {max(1, cores // 2)} thread(s) each",
                 dict(n_jobs=2, chunk_size=-(-args.inputs // 2)), cores)]
    reference = None
    rows = []
    for name, extra, threads in settings:
        torch.set_num_threads(threads)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            cert = certify(net, X, 0.25, **kw, **extra)
            times.append(time.perf_counter() - start)
        if reference is None:
            reference = cert
        assert np.array_equal(cert.counts, reference.counts), "results differ across workers"
        seconds = statistics.median(times)
        rows.append((name, seconds, args.inputs * (args.n + 100) / seconds))
    print(f"LeNet, {args.inputs} inputs, n0=100, n={args.n:,}, batch {args.batch_size}, "
          f"{cores} cores, median of {args.repeats}\n")
    print("| setting | s | samples/s | × 1 worker |")
    print("|---|---|---|---|")
    for name, seconds, rate in rows:
        print(f"| {name} | {seconds:.2f} | {rate:,.0f} | {rate / rows[0][2]:.2f} |")


if __name__ == "__main__":
    main()
