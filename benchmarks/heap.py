"""Certification in a fresh process: glibc's heap thresholds and how often it is trimmed.

How fast a CPU certification runs depends on the C heap's state, so every measurement
runs in a fresh Python process of its own, settings interleaved, best of ``--repeats``:

- ``before``: the free heap trimmed after every chunk of inputs and glibc's thresholds as
  a fresh process has them (smoothsk up to this change);
- ``now``: trimmed once per ``TRIM_EVERY_BYTES`` of noisy inputs and at the end of the
  call, thresholds raised first (``heap.raise_heap_thresholds``; the default).

Reported per case: noisy samples per second, page faults per forward batch and the ratio
now / before; and, for a long call (LeNet bf16 + channels-last, ``--memory-inputs``
inputs at n = 200), peak extra resident memory before, now and never trimmed (the growth
that trimming exists to stop).

    python benchmarks/heap.py --threads 1 [--out benchmarks/results/heap.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import harness  # benchmarks/harness.py: parser, --threads, timing

CASES = {
    # name: (network, precision, channels_last, batch, n0, n, inputs)
    "lenet-bf16-cl-n200": ("lenet", "bf16", True, 200, 100, 200, 400),
    "lenet-bf16-cl-n2000": ("lenet", "bf16", True, 200, 100, 2000, 40),
    "lenet-fp32-n2000": ("lenet", "fp32", False, 200, 100, 2000, 20),
    "resnet20-fp32-n2000": ("resnet20", "fp32", False, 50, 100, 2000, 4),
    "mlp64-fp32-n2000": ("mlp64", "fp32", False, 1000, 100, 2000, 64),
}


def _rss_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(spec: dict) -> dict:
    """One measurement in this (fresh) process."""
    import numpy as np
    import torch

    from smoothsk import certify
    from smoothsk.certification import heap
    from smoothsk.models import MLP, CIFARResNet, LeNet

    torch.set_num_threads(spec["threads"])
    if spec["mode"] == "before":
        heap.TRIM_EVERY_BYTES = 0  # after every chunk
        heap.raise_heap_thresholds = lambda: None
    elif spec["mode"] == "never":
        heap.release_free_memory = lambda: None
    network, precision, last, batch, n0, n, inputs = spec["case"]
    torch.manual_seed(0)
    net, shape = {"lenet": (LeNet, (1, 28, 28)),
                  "resnet20": (lambda: CIFARResNet(20), (3, 32, 32)),
                  "mlp64": (lambda: MLP(64, 10, hidden_units=(64,)), (64,))}[network]
    net = net().eval()
    if last:
        net = net.to(memory_format=torch.channels_last)
    X = np.random.default_rng(0).random((inputs, *shape)).astype(np.float32)
    rss = _rss_mib("VmRSS")
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    certify(net, X, 0.25, n0=n0, n=n, batch_size=batch, random_state=0, precision=precision)
    seconds = time.perf_counter() - start
    batches = inputs * (-(-n0 // batch) + -(-n // batch))  # every case: one input per chunk
    return dict(samples_per_s=inputs * (n0 + n) / seconds,
                faults_per_batch=(resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                                  - faults) / batches,
                peak_extra_mib=_rss_mib("VmHWM") - rss)


def _fresh(spec: dict) -> dict:
    run = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                         check=True, capture_output=True, text=True)
    return json.loads(run.stdout.splitlines()[-1])


def main(argv=None):
    parser = harness.parser(__doc__, threads=1)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-inputs", type=int, default=2000)
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = harness.parse(parser, argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return None
    rows = []
    for name in filter(None, args.cases.split(",")):
        runs = {"before": [], "now": []}
        for _ in range(args.repeats):
            for mode in runs:  # interleaved: drift on a shared machine hits both alike
                runs[mode].append(_fresh(dict(case=CASES[name], mode=mode,
                                              threads=args.threads)))
        best = {mode: max(r, key=lambda m: m["samples_per_s"]) for mode, r in runs.items()}
        rows.append(dict(
            case=name, before_per_s=round(best["before"]["samples_per_s"]),
            now_per_s=round(best["now"]["samples_per_s"]),
            now_over_before=round(best["now"]["samples_per_s"]
                                  / best["before"]["samples_per_s"], 2),
            faults_per_batch_before=round(best["before"]["faults_per_batch"]),
            faults_per_batch_now=round(best["now"]["faults_per_batch"])))
        print(json.dumps(rows[-1]), flush=True)
    memory = {}
    if args.memory_inputs:
        case = list(CASES["lenet-bf16-cl-n200"])
        case[-1] = args.memory_inputs
        for mode in ("before", "now", "never"):
            result = _fresh(dict(case=case, mode=mode, threads=args.threads))
            memory[mode] = dict(peak_extra_mib=round(result["peak_extra_mib"]),
                                samples_per_s=round(result["samples_per_s"]))
        print(json.dumps({"memory": memory}), flush=True)
    import torch

    result = {"torch": torch.__version__, "threads": args.threads,
              "memory_case": f"lenet-bf16-cl-n200, {args.memory_inputs} inputs",
              "rows": rows, "memory": memory}
    if args.out:
        from smoothsk.io.files import atomic_write_text  # here: the children start bare

        atomic_write_text(args.out, json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
