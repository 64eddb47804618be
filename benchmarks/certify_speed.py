"""Certification speed and memory: smoothsk against Cohen's loop, IBM ART and raw inference.

Same network, same inputs, same n0 / n / alpha, same machine, one run; medians of
``--repeats`` runs.  Reported: noisy samples per second of

1. ``smoothsk.certify`` (batched across inputs) at the network's fastest batch size;
2. Cohen et al.'s reference CERTIFY loop, written here faithfully: one input at a time,
   noise batches of the same size, a Python loop counting predictions
   (``_count_arr``), statsmodels' ``proportion_confint(method="beta")``;
3. IBM ART's ``PyTorchRandomizedSmoothing.certify`` (``pip install 'smoothsk[bench]'``);
4. the network's raw batched inference rate (forward passes on ready-made noisy
   batches): the limit certification cannot beat at fixed n.

and the peak extra memory (VmHWM − VmRSS before certifying, in a fresh subprocess per
implementation) at n = 10,000 and 100,000 (CPU only).

On a GPU (``--device cuda``) every timing waits for the device before the clock stops,
the raw rate reads nothing back per batch (one synchronisation at the end), the batch
sizes go up to 16,000 and more inputs are certified, so that each timing lasts long
enough to mean something.  Implementations that are not installed (ART) are reported
as such.

``--settings`` adds smoothsk at faster sound settings (names of ``SETTINGS``: reduced-
precision autocast, the network in channels-last memory format, ``torch.compile`` with
inductor's options), each at its own best raw batch (``--fast-batches``), against its own
raw rate at that setting, against Cohen's loop at fp32 at the same best fp32 batch as
above, and against Cohen's loop as its script ships (fp32, ``--batch 1000``).  The
default on a GPU is ``GPU_SETTINGS`` (the settings that compile in seconds); on a CPU none.

    python benchmarks/certify_speed.py [--networks lenet,resnet20] [--repeats 3]
                                       [--device cuda] [--settings bf16-cl,...]
                                       [--out results.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import time

import harness  # benchmarks/harness.py: parser, --threads, timing
import numpy as np
import torch

from smoothsk import certify
from smoothsk.certification.precision import precision_context
from smoothsk.io.files import atomic_write_text
from smoothsk.models import CIFARResNet, LeNet

NETWORKS = {
    "lenet": (lambda: LeNet(), (1, 28, 28), 10),
    "resnet20": (lambda: CIFARResNet(20), (3, 32, 32), 10),
}
SIGMA, N0, ALPHA = 0.25, 100, 0.001
COHEN_SHIPPED_BATCH = 1000  # certify.py's --batch default in Cohen et al.'s repository
SETTINGS = {  # name: (precision, channels-last, torch.compile options or None)
    "fp32": ("fp32", False, None),
    "bf16-cl": ("bf16", True, None),
    "fp16-cl": ("fp16", True, None),
    "bf16-cl-compile": ("bf16", True, {}),
    "fp16-cl-compile": ("fp16", True, {}),
    # inductor's freezing: weights as constants, batch norm folded into the convolutions
    "fp16-cl-compile-frozen": ("fp16", True, {"freezing": True}),
    # and inductor's autotuning of convolution and matrix kernels (minutes to compile)
    "fp16-cl-autotune-frozen": ("fp16", True, {"freezing": True, "max_autotune": True}),
}
GPU_SETTINGS = ("fp32", "bf16-cl", "fp16-cl", "bf16-cl-compile", "fp16-cl-compile")


# ----------------------------------------------------------------------------- baselines
def _count_arr(arr, length):
    counts = np.zeros(length, dtype=int)
    for idx in arr:
        counts[idx] += 1
    return counts


def cohen_certify(model, X, num_classes, n0, n, alpha, batch_size):
    """Cohen et al.'s ``Smooth.certify`` (core.py), one input at a time."""
    from statsmodels.stats.proportion import proportion_confint

    def sample_noise(x, num):
        counts = np.zeros(num_classes, dtype=int)
        remaining = num
        with torch.no_grad():
            while remaining > 0:
                this_batch = min(batch_size, remaining)
                remaining -= this_batch
                batch = x.repeat((this_batch, 1, 1, 1))
                noise = torch.randn_like(batch) * SIGMA
                predictions = model(batch + noise).argmax(1)
                counts += _count_arr(predictions.cpu().numpy(), num_classes)
        return counts

    model.eval()
    device = next(model.parameters()).device
    results = []
    for x in torch.from_numpy(X).to(device):
        top = sample_noise(x, n0).argmax()
        n_a = sample_noise(x, n)[top]
        p_lower = proportion_confint(n_a, n, alpha=2 * alpha, method="beta")[0]
        results.append((top, p_lower))
    return results


def art_certify(model, X, num_classes, n0, n, alpha, batch_size):
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

    smoothed = PyTorchRandomizedSmoothing(
        model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=X.shape[1:],
        nb_classes=num_classes, clip_values=None, sample_size=n0,
        device_type="gpu" if next(model.parameters()).is_cuda else "cpu",
        scale=SIGMA, alpha=alpha,
    )
    return smoothed.certify(X, n=n, batch_size=batch_size)


def smoothsk_certify(model, X, num_classes, n0, n, alpha, batch_size, precision="fp32"):
    return certify(model, X, SIGMA, n0=n0, n=n, alpha=alpha, batch_size=batch_size,
                   random_state=0, precision=precision)


IMPLEMENTATIONS = {"smoothsk": smoothsk_certify, "cohen": cohen_certify, "art": art_certify}


# ----------------------------------------------------------------------------- measurements
def _wait(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def raw_rate(model, shape, batch_size, repeats, rows=20_000, precision="fp32"):
    """Samples/s of forward + argmax on noisy batches already in memory.

    On a CPU each batch's votes are read (as certification must); on a GPU the votes
    stay on the device and the clock stops after one synchronisation at the end: the
    device's own rate, which no certification loop can beat.  ``precision`` runs the
    forward pass under the same autocast as ``certify(precision=...)``.
    """
    device = next(model.parameters()).device
    batch = torch.rand(batch_size, *shape, device=device)
    steps = max(1, rows // batch_size)
    times = []
    model.eval()

    def forward(noisy):
        with precision_context(precision, device):
            return model(noisy)

    with torch.inference_mode():
        forward(batch)
        _wait(device)
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(steps):
                votes = forward(batch + SIGMA * torch.randn_like(batch)).argmax(1)
                if device.type == "cpu":
                    votes.numpy()
            _wait(device)
            times.append(time.perf_counter() - start)
    return steps * batch_size / statistics.median(times)


def _median_rate(run, rows, repeats, device):
    return rows / harness.timed(run, repeats=repeats, warmup=0, device=device)["median"]


def fast_settings(build, shape, classes, X, n, batches, settings, repeats, device, cohen):
    """smoothsk at each of ``settings`` (names of ``SETTINGS``), at its own best raw batch.

    ``cohen`` holds Cohen's loop's fp32 rates (``best batch`` and ``as shipped``), measured
    on the same inputs in the same run; every row is reported against both and against
    the raw rate at its own setting.
    """
    rows = []
    for name in settings:
        precision, channels_last, compile_options = SETTINGS[name]
        torch.manual_seed(0)
        model = build().eval().to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        if compile_options is not None:
            model = torch.compile(model, options=compile_options or None)
        started = time.perf_counter()
        try:
            rates = {b: raw_rate(model, shape, b, repeats, precision=precision)
                     for b in batches}
            best = max(rates, key=rates.get)

            def run(model=model, best=best, precision=precision):
                smoothsk_certify(model, X, classes, N0, n, ALPHA, best, precision)

            run()  # warm-up at the timed shapes: kernel selection, compilation
            warm_s = time.perf_counter() - started
            rate = _median_rate(run, len(X) * (N0 + n), repeats, device)
        except Exception as error:  # one setting failing must not lose the others
            print(f"{name}: failed ({type(error).__name__}: {str(error)[:200]})")
            continue
        row = dict(setting=name, precision=precision, channels_last=channels_last,
                   compile_options=compile_options, batch=best, raw_rate_by_batch=rates,
                   samples_per_s=rate, over_own_raw=rate / rates[best],
                   warm_up_s=warm_s,
                   **{f"over_cohen_{k.replace(' ', '_')}": rate / v for k, v in cohen.items()})
        rows.append(row)
        print(f"{name}: raw " + " | ".join(f"{b}: {r:,.0f}" for b, r in rates.items())
              + f" → best {best}; smoothsk {rate:,.0f}/s (warm-up {warm_s:.0f} s)")
    print("\n| setting | batch | smoothsk samples/s | / own raw | / Cohen fp32, same batch "
          f"| / Cohen fp32, batch {COHEN_SHIPPED_BATCH} (as shipped) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['setting']} | {row['batch']} | {row['samples_per_s']:,.0f} | "
              f"{row['over_own_raw']:.3f} | {row['over_cohen_best_batch']:.2f} | "
              f"{row['over_cohen_as_shipped']:.2f} |")
    print()
    return rows


def _rss_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(field)


def memory_child(implementation, network, n, batch_size):
    torch.set_num_threads(1)
    build, shape, classes = NETWORKS[network]
    torch.manual_seed(0)
    model = build().eval()
    X = np.random.default_rng(0).uniform(size=(1, *shape)).astype(np.float32)
    IMPLEMENTATIONS[implementation](model, X[:1], classes, 10, 200, ALPHA, batch_size)  # warm
    before = _rss_kib("VmRSS")
    IMPLEMENTATIONS[implementation](model, X, classes, N0, n, ALPHA, batch_size)
    print(json.dumps({"peak_extra_mib": (_rss_kib("VmHWM") - before) / 1024}))


def peak_memory(implementation, network, n, batch_size):
    output = subprocess.run(
        [sys.executable, __file__, "--memory-child", implementation, network, str(n),
         str(batch_size)], capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])["peak_extra_mib"]


def main(argv=None):
    parser = harness.parser(__doc__)
    parser.add_argument("--networks", default="lenet,resnet20")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--settings", default=None,
                        help="comma-separated faster settings for smoothsk: "
                             f"{', '.join(SETTINGS)} (default: all on a GPU, none on a CPU)")
    parser.add_argument("--fast-batches", default=None,
                        help="comma-separated batch sizes tried for --settings "
                             "(default: 4000,16000,32000 on a GPU, 200,1000 on a CPU)")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="let cuDNN time its algorithms per shape, for every "
                             "implementation (torch.backends.cudnn.benchmark)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--memory-child", nargs=4, default=None, help=argparse.SUPPRESS)
    args = harness.parse(parser, argv)
    if args.memory_child:
        implementation, network, n, batch_size = args.memory_child
        return memory_child(implementation, network, int(n), int(batch_size))
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    gpu = torch.device(args.device).type == "cuda"
    if args.settings is None:
        settings = list(GPU_SETTINGS) if gpu else []
    else:
        settings = [name for name in args.settings.split(",") if name]
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        parser.error(f"--settings must name some of {', '.join(SETTINGS)}; got {unknown}")
    if gpu:
        sizes = {"lenet": dict(inputs=100, n=10_000), "resnet20": dict(inputs=20, n=10_000)}
        batches = (100, 500, 1000, 2000, 4000, 8000, 16000)
        fast_batches = (4000, 16000, 32000)
    else:
        sizes = {"lenet": dict(inputs=20, n=10_000), "resnet20": dict(inputs=4, n=2_000)}
        batches = (25, 50, 100, 200, 500, 1000, 2000)
        fast_batches = (200, 1000)
    if args.fast_batches:
        fast_batches = tuple(int(b) for b in args.fast_batches.split(","))
    device_name = torch.cuda.get_device_name() if gpu else "cpu"
    print(f"torch {torch.__version__}, {device_name}, {torch.get_num_threads()} threads, "
          f"sigma={SIGMA}, n0={N0}, alpha={ALPHA}, median of {args.repeats}, "
          f"cudnn.benchmark={args.cudnn_benchmark}\n")
    memory_rows, results = [], []
    for network in args.networks.split(","):
        build, shape, classes = NETWORKS[network]
        torch.manual_seed(0)
        model = build().eval().to(args.device)
        rates = {b: raw_rate(model, shape, b, args.repeats) for b in batches}
        best = max(rates, key=rates.get)
        print(f"## {network}: raw inference samples/s by batch size")
        print(" | ".join(f"{b}: {r:,.0f}" for b, r in rates.items()), f"→ best {best}\n")
        inputs, n = sizes[network]["inputs"], sizes[network]["n"]
        X = np.random.default_rng(0).uniform(size=(inputs, *shape)).astype(np.float32)
        speed = {}
        for name, run in IMPLEMENTATIONS.items():
            try:
                run(model, X[:1], classes, 10, 200, ALPHA, best)  # warm-up
            except ImportError as error:
                print(f"{name}: not installed ({error})")
                continue
            speed[name] = _median_rate(
                functools.partial(run, model, X, classes, N0, n, ALPHA, best),
                inputs * (N0 + n), args.repeats, args.device)
        print(f"{inputs} inputs, n={n:,}, batch {best}\n")
        print("| implementation | samples/s | smoothsk / it |")
        print("|---|---|---|")
        for name, rate in [*speed.items(), ("raw inference (best batch)", rates[best])]:
            print(f"| {name} | {rate:,.0f} | {speed['smoothsk'] / rate:.2f} |")
        print(f"\nsmoothsk / best raw inference rate: {speed['smoothsk'] / rates[best]:.3f}\n")
        result = dict(network=network, inputs=inputs, n=n, batch=best,
                      raw_rate_by_batch=rates, samples_per_s=speed,
                      smoothsk_over_raw=speed["smoothsk"] / rates[best],
                      smoothsk_over_cohen=(speed["smoothsk"] / speed["cohen"]
                                           if "cohen" in speed else None))
        if settings:
            cohen = {"best batch": speed["cohen"], "as shipped": _median_rate(
                functools.partial(cohen_certify, model, X, classes, N0, n, ALPHA,
                                  COHEN_SHIPPED_BATCH),
                inputs * (N0 + n), args.repeats, args.device)}
            print(f"## {network}: faster sound settings (Cohen's loop, fp32: "
                  f"{cohen['best batch']:,.0f}/s at batch {best}, "
                  f"{cohen['as shipped']:,.0f}/s at batch {COHEN_SHIPPED_BATCH})\n")
            result["cohen_as_shipped_samples_per_s"] = cohen["as shipped"]
            result["settings"] = fast_settings(build, shape, classes, X, n, fast_batches,
                                               settings, args.repeats, args.device, cohen)
        results.append(result)
        if args.out:  # after every network, so that a run cut short keeps what it measured
            atomic_write_text(args.out, json.dumps(
                {"torch": torch.__version__, "device": device_name,
                 "cudnn_benchmark": args.cudnn_benchmark, "threads": torch.get_num_threads(),
                 "repeats": args.repeats, "networks": results}, indent=1))
        if network == "lenet" and not gpu:
            for n_mem in (10_000, 100_000):
                memory_rows.append((network, n_mem, {name: peak_memory(name, network, n_mem, best)
                                                     for name in speed}))
    if memory_rows:
        print("## peak extra memory (MiB) while certifying one input, batch size as above")
        names = list(memory_rows[0][2])
        print("| network | n | " + " | ".join(names) + " |")
        print("|---|---|" + "---|" * len(names))
        for network, n_mem, peaks in memory_rows:
            print(f"| {network} | {n_mem:,} | " +
                  " | ".join(f"{peaks[name]:.1f}" for name in names) + " |")


if __name__ == "__main__":
    main()
