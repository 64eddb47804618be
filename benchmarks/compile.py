"""torch.compile against eager certification, side by side in one run.

LeNet (Fashion-MNIST size) certified with the same inputs, seed and batch size in eager
mode and compiled with ``torch.compile`` (what skorch's ``compile=True`` does to
``module_``), at fp32 and at bf16 + channels-last; samples per second (best of
``--repeats`` after a warm-up that pays the compilation) and the one-off compilation time.
The certificates must be identical (printed as a check): compilation changes the speed,
not the network.

    python benchmarks/compile.py [--out results.json]
"""

from __future__ import annotations

import json
import time

import harness  # benchmarks/harness.py: parser, --threads, timing
import numpy as np
import torch

from smoothsk import certify
from smoothsk.io.files import atomic_write_text
from smoothsk.models import LeNet


def _certify(net, X, args, precision):
    return certify(net, X, 0.25, n0=100, n=args.n, batch_size=args.batch, random_state=0,
                   precision=precision)


def measure(net, X, args, precision) -> dict:
    start = time.perf_counter()
    first = _certify(net, X, args, precision)  # compiles on the first call
    warm_up = time.perf_counter() - start
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        _certify(net, X, args, precision)
        best = min(best, time.perf_counter() - start)
    return {"samples_per_s": len(X) * (args.n + 100) / best, "first_call_s": warm_up,
            "counts": first.counts}


def main(argv=None):
    parser = harness.parser(__doc__, threads=None)
    parser.add_argument("--inputs", type=int, default=10)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = harness.parse(parser, argv)
    X = np.random.default_rng(0).random((args.inputs, 1, 28, 28)).astype(np.float32)
    rows = []
    for precision, channels_last in (("fp32", False), ("bf16", True)):
        torch.manual_seed(0)
        eager = LeNet().eval()
        if channels_last:
            eager = eager.to(memory_format=torch.channels_last)
        compiled = torch.compile(eager)
        plain = measure(eager, X, args, precision)
        fast = measure(compiled, X, args, precision)
        rows.append({
            "precision": precision, "channels_last": channels_last,
            "eager_samples_per_s": round(plain["samples_per_s"]),
            "compiled_samples_per_s": round(fast["samples_per_s"]),
            "compiled_over_eager": round(fast["samples_per_s"] / plain["samples_per_s"], 3),
            "compile_first_call_s": round(fast["first_call_s"], 1),
            "eager_first_call_s": round(plain["first_call_s"], 1),
            "identical_counts": bool(np.array_equal(plain["counts"], fast["counts"])),
            "votes_differing": int(np.abs(plain["counts"] - fast["counts"]).sum() // 2),
        })
        print(json.dumps(rows[-1]), flush=True)
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(),
              "inputs": args.inputs, "n": args.n, "batch": args.batch, "rows": rows}
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
