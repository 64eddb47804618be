"""Noise-bound certification: independent noise per input against shared noise blocks.

For a small tabular network the forward pass is cheaper than drawing its Gaussian noise,
so certification runs far below the network's own rate.  ``shared_noise=True`` draws
each noise block once per chunk of inputs (docs/certification.md for why every per-input
guarantee is unchanged).  Reported, side by side in one run, as noisy samples per second
and as ratios to the network's raw forward rate on ready-made noisy batches (the limit):

- raw forward at the best batch size, on one ready-made batch (cache-hot: the usual
  limit) and on a 16 MB pool of distinct ready-made batches (what a forward pass over
  distinct inputs reads);
- ``torch.randn`` alone for the same rows (what bounds the independent path);
- ``certify`` with independent noise (the default) and with shared noise;
- with ``--jobs J``, ``certify`` with shared noise in J worker processes of one thread
  each (``n_jobs=J, threads_per_worker=1``) on 8× the inputs at n = 10,000, so that the
  workers' start-up (paid in a warm-up call) and per-call costs are amortised as in a
  long run: the way to use several cores for a network too small to split its batches
  across threads well; set against the better of two forward limits on those cores:
  one process at ``--threads`` threads (as above), and J one-thread processes running
  the raw forward pass at the same time (their rates summed; the best of each worker's
  repeats, so the limit errs high);

and what sharing does to the spread of certified accuracy over seeds: a model trained on
digits, certified with ``--seeds`` seeds in both modes (the mean is the same; shared noise
correlates the inputs' results, so the spread over seeds may grow), next to the test-set
standard error ``sqrt(CA (1 − CA) / N)`` that any reported accuracy carries anyway.

    python benchmarks/noise_path.py [--hidden 64 --hidden 256,256] [--out results.json]
"""

from __future__ import annotations

import json
import os
import time

import harness  # benchmarks/harness.py: parser, --threads, timing
import numpy as np
import torch

from smoothsk import GaussianAugClassifier, certify
from smoothsk.io.files import atomic_write_text
from smoothsk.metrics import certified_accuracy
from smoothsk.models import MLP

FEATURES, CLASSES, SIGMA = 64, 10, 0.25


def _best_seconds(function, repeats: int) -> float:
    function()  # warm-up (allocator, oneDNN primitive cache)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)  # the least disturbed run: other processes only slow a run down


POOL_ROWS = 65_536  # 16 MB of 64-feature fp32 rows: well beyond a core's L2 cache


def raw_forward_rate(net, batch: int, repeats: int, rows: int = 200_000,
                     distinct: bool = False) -> float:
    """Forward + argmax on ready-made noisy batches: one batch again and again (it stays
    in cache), or with ``distinct`` a pool of ``POOL_ROWS`` rows taken batch by batch."""
    pool = torch.rand(max(POOL_ROWS // batch, 1) if distinct else 1, batch, FEATURES)

    def run():
        with torch.inference_mode():
            for step in range(rows // batch):
                net(pool[step % len(pool)]).argmax(1)

    return (rows // batch) * batch / _best_seconds(run, repeats)


def _forward_worker(hidden_units: tuple, batch: int, repeats: int, rows: int) -> float:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = MLP(FEATURES, CLASSES, hidden_units=hidden_units).eval()
    return raw_forward_rate(net, batch, repeats, rows=rows)


def parallel_forward_rate(hidden_units: tuple, batch: int, repeats: int, jobs: int) -> float:
    """Summed raw forward rate of ``jobs`` one-thread processes running at once."""
    from joblib import Parallel, delayed

    rates = Parallel(n_jobs=jobs, backend="loky")(
        delayed(_forward_worker)(hidden_units, batch, repeats, 2_000_000) for _ in range(jobs))
    return sum(rates)


def randn_rate(batch: int, repeats: int, rows: int = 200_000) -> float:
    generator = torch.Generator()

    def run():
        for _ in range(rows // batch):
            torch.randn((batch, FEATURES), generator=generator)

    return (rows // batch) * batch / _best_seconds(run, repeats)


def certify_rate(net, X, batch: int, n: int, repeats: int, shared: bool, **parallel) -> float:
    def run():
        certify(net, X, SIGMA, n0=100, n=n, batch_size=batch, random_state=0,
                shared_noise=shared, **parallel)

    return len(X) * (n + 100) / _best_seconds(run, repeats)


def spread_over_seeds(seeds: int, n: int) -> list[dict]:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    clf = GaussianAugClassifier(sigma=0.25, random_state=0).fit(X[:1000], y[:1000])
    X_test, y_test = X[1000:], y[1000:]
    rows = []
    for shared in (False, True):
        curves = np.array([
            certified_accuracy(y_test, certify(clf, X_test, 0.25, n0=100, n=n,
                                               random_state=seed, batch_size=4096,
                                               shared_noise=shared), [0.0, 0.25, 0.5])
            for seed in range(seeds)])
        mean = curves.mean(axis=0)
        rows.append(dict(shared_noise=shared, radii=[0.0, 0.25, 0.5],
                         mean=mean.round(4).tolist(),
                         std_over_seeds=curves.std(axis=0, ddof=1).round(4).tolist(),
                         test_set_se=np.sqrt(mean * (1 - mean) / len(y_test)).round(4).tolist()))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None):
    parser = harness.parser(__doc__, threads=None)
    parser.add_argument("--hidden", action="append", default=None,
                        help="hidden widths, comma-separated (repeatable; default 64 and "
                             "256,256, the estimators' default MLP)")
    parser.add_argument("--batches", default="1000,4000,10000")
    parser.add_argument("--inputs", type=int, default=256)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--spread-n", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=None,
                        help="also certify with shared noise in this many one-thread workers")
    parser.add_argument("--out", default=None)
    args = harness.parse(parser, argv)
    X = np.random.default_rng(0).random((args.inputs, FEATURES)).astype(np.float32)
    rows = []
    for hidden in args.hidden or ["64", "256,256"]:
        units = tuple(int(u) for u in hidden.split(","))
        torch.manual_seed(0)
        net = MLP(FEATURES, CLASSES, hidden_units=units).eval()
        batches = [int(b) for b in args.batches.split(",")]
        forward = {b: raw_forward_rate(net, b, args.repeats) for b in batches}
        batch = max(forward, key=forward.get)
        limit = forward[batch]
        distinct = raw_forward_rate(net, batch, args.repeats, distinct=True)
        independent = certify_rate(net, X, batch, args.n, args.repeats, shared=False)
        shared = certify_rate(net, X, batch, args.n, args.repeats, shared=True)
        extra = {}
        if args.jobs:
            many = np.random.default_rng(1).random((8 * args.inputs, FEATURES)).astype(np.float32)
            jobs = certify_rate(net, many, batch, 10_000, args.repeats, shared=True,
                                n_jobs=args.jobs, threads_per_worker=1)
            processes = parallel_forward_rate(units, batch, args.repeats, args.jobs)
            extra = dict(jobs=args.jobs, certify_shared_jobs_per_s=round(jobs),
                         raw_forward_processes_per_s=round(processes),
                         shared_jobs_over_forward=round(jobs / limit, 3),
                         shared_jobs_over_best_forward=round(jobs / max(limit, processes), 3),
                         shared_jobs_over_distinct_forward=round(jobs / distinct, 3))
        rows.append(dict(
            hidden_units=list(units), batch=batch, raw_forward_per_s=round(limit),
            raw_forward_distinct_per_s=round(distinct),
            randn_per_s=round(randn_rate(batch, args.repeats)),
            certify_independent_per_s=round(independent),
            certify_shared_per_s=round(shared),
            independent_over_forward=round(independent / limit, 3),
            shared_over_forward=round(shared / limit, 3),
            shared_over_distinct_forward=round(shared / distinct, 3),
            shared_over_independent=round(shared / independent, 2),
            **extra,
        ))
        print(json.dumps(rows[-1]), flush=True)
    result = {"torch": torch.__version__, "cpu": harness.cpu_model(), "cores": os.cpu_count(),
              "threads": torch.get_num_threads(),
              "inputs": args.inputs, "n0": 100, "n": args.n, "rows": rows,
              "spread": spread_over_seeds(args.seeds, args.spread_n)}
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
