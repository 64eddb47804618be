"""The discrete (lattice) Gaussian against float Gaussian noise: cost and certificates.

1. Cost: ``class_counts`` on the same inputs with the same draws, float noise against
   ``noise="discrete-gaussian"``, independent and shared noise, for LeNet on 28×28 images
   and the 64-feature MLP, run interleaved (median of ``--repeats``).
2. Certificates: for each σ, a Gaussian-augmentation model (the default MLP on digits, or
   LeNet on Fashion-MNIST; trained here, or loaded from ``results/discrete-noise/models/``,
   which is not committed) is certified on every ``--skip``-th test input with both
   noises: ACR, certified accuracy at each radius, and how many inputs' radii differ.

    python benchmarks/discrete_noise.py [--dataset digits|fashion-mnist] [--epochs 5]
        [--skip 1] [--n 10000] [--part cost,certificates]
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import harness  # benchmarks/harness.py: parser, --threads, timing
import numpy as np
import torch
from gaussian_models import gaussian_model  # benchmarks/ (these run as scripts)

from smoothsk import class_counts
from smoothsk.datasets import LATTICE_STEPS, load_dataset
from smoothsk.io.files import atomic_write_text
from smoothsk.models import MLP, LeNet

OUT = Path(__file__).parent / "results" / "discrete-noise"
RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


def cost(repeats: int) -> list[dict]:
    rng = np.random.default_rng(0)
    cases = [
        ("LeNet 28x28", LeNet(num_classes=10), (rng.integers(0, 256, (8, 1, 28, 28)) / 255),
         4_000),
        ("MLP 64 features", MLP(64, 10, hidden_units=(256, 256)),
         rng.integers(0, 256, (256, 64)) / 255, 4_000),
    ]
    rows = []
    for name, network, X, draws in cases:
        X = X.astype(np.float32)
        network.eval()
        for shared in (False, True):
            times = {"gaussian": [], "discrete-gaussian": []}
            for _ in range(repeats):
                for noise in times:  # interleaved, so drifts hit both alike
                    start = time.perf_counter()
                    class_counts(network, X, 0.5, draws, batch_size=1000, random_state=0,
                                 shared_noise=shared, noise=noise)
                    times[noise].append(time.perf_counter() - start)
            float_s = statistics.median(times["gaussian"])
            lattice_s = statistics.median(times["discrete-gaussian"])
            rows.append({"network": name, "shared_noise": shared, "inputs": len(X),
                         "draws": draws, "float_s": round(float_s, 4),
                         "discrete_s": round(lattice_s, 4),
                         "ratio": round(lattice_s / float_s, 3)})
            print(rows[-1], flush=True)
    return rows


def certificates(args) -> list[dict]:
    (OUT / "models").mkdir(parents=True, exist_ok=True)
    digits = args.dataset == "digits"
    X_train, y_train = load_dataset(args.dataset, split="train", flat=digits)
    X_test, y_test = load_dataset(args.dataset, split="test", flat=digits)
    X_test, y_test = X_test[:: args.skip], y_test[:: args.skip]
    step = LATTICE_STEPS[args.dataset]
    rows = []
    for sigma in [float(s) for s in args.sigmas.split(",")]:
        clf = gaussian_model(args.dataset, sigma, args.epochs, OUT / "models", X_train, y_train)
        results = {}
        for noise in ("gaussian", "discrete-gaussian"):
            clf.set_params(noise=noise, noise_step=None if noise == "gaussian" else step)
            start = time.perf_counter()
            cert = clf.certify(X_test, n0=100, n=args.n, alpha=args.alpha, random_state=1)
            seconds = time.perf_counter() - start
            correct = cert.is_correct(y_test)
            radius = np.where(correct, cert.radius, 0.0)
            results[noise] = radius
            rows.append({
                "sigma": sigma, "noise": noise, "noise_step": cert.noise_step,
                "inputs": len(X_test), "n": args.n, "alpha": args.alpha,
                "acr": round(float(radius.mean()), 4),
                "certified_accuracy": {f"{r:g}": round(float((correct & (cert.radius >= r))
                                                              .mean()), 4) for r in RADII},
                "seconds": round(seconds, 1),
            })
            print(rows[-1], flush=True)
        diff = results["discrete-gaussian"] - results["gaussian"]
        rows.append({"sigma": sigma, "radius_changed": int((np.abs(diff) > 1e-12).sum()),
                     "mean_abs_radius_change": round(float(np.abs(diff).mean()), 5),
                     "acr_ratio": round(float(results["discrete-gaussian"].mean()
                                              / results["gaussian"].mean()), 4)})
        print(rows[-1], flush=True)
    return rows


def main(argv=None):
    parser = harness.parser(__doc__, threads=1)
    parser.add_argument("--dataset", default="digits", choices=["digits", "fashion-mnist"])
    parser.add_argument("--sigmas", default="0.25,0.5,1.0")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--skip", type=int, default=1)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--part", default="cost,certificates")
    args = harness.parse(parser, argv)
    parts = args.part.split(",")
    report = {"threads": args.threads, "torch": torch.__version__}
    if "cost" in parts:
        report["cost"] = cost(args.repeats)
        OUT.mkdir(parents=True, exist_ok=True)
        atomic_write_text(OUT / "cost.json", json.dumps(report, indent=1))
    if "certificates" in parts:
        report = {"dataset": args.dataset, "epochs": args.epochs, "skip": args.skip,
                  "rows": certificates(args)}
        atomic_write_text(OUT / f"certificates-{args.dataset}.json", json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
