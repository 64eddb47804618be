"""``certify_radii`` against CERTIFY on the same inputs: draws and the certified-accuracy curve.

For each σ, a Gaussian-augmentation model (the default MLP on digits, as
``benchmarks/discrete_noise.py`` trains it and caches it in
``results/discrete-noise/models/``, not committed) is certified on every ``--skip``-th
test input by CERTIFY (n0 = 100, n = ``--n``) and by ``certify_radii`` on the grid
(max_n = ``--n``), same α and seed.  Reports mean estimation draws, certified accuracy
at each grid radius with its Monte Carlo standard error, and time.

    python benchmarks/certify_radii.py [--sigmas 0.25,0.5,1.0] [--n 100000] [--skip 1]
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import harness  # benchmarks/harness.py: parser, --threads, timing
import numpy as np
from gaussian_models import gaussian_model  # benchmarks/ (these run as scripts)

from smoothsk import certified_accuracy
from smoothsk.datasets import load_dataset
from smoothsk.io.files import atomic_write_text

OUT = Path(__file__).parent / "results" / "certify-radii"
MODELS = Path(__file__).parent / "results" / "discrete-noise" / "models"
GRID = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


def main(argv=None):
    parser = harness.parser(__doc__, threads=1)
    parser.add_argument("--sigmas", default="0.25,0.5,1.0")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--skip", type=int, default=1)
    parser.add_argument("--alpha", type=float, default=0.001)
    args = harness.parse(parser, argv)
    X_train, y_train = load_dataset("digits", split="train", flat=True)
    X_test, y_test = load_dataset("digits", split="test", flat=True)
    X_test, y_test = X_test[:: args.skip], y_test[:: args.skip]
    rows = []
    for sigma in [float(s) for s in args.sigmas.split(",")]:
        clf = gaussian_model("digits", sigma, args.epochs, MODELS, X_train, y_train)
        start = time.perf_counter()
        full = clf.certify(X_test, n0=100, n=args.n, alpha=args.alpha, random_state=1)
        certify_s = time.perf_counter() - start
        start = time.perf_counter()
        curve = clf.certify_radii(X_test, GRID, n0=100, max_n=args.n, alpha=args.alpha,
                                  random_state=1)
        radii_s = time.perf_counter() - start
        ca_full = certified_accuracy(y_test, full, GRID)
        ca_curve = certified_accuracy(y_test, curve, GRID)
        se = np.sqrt(ca_full * (1 - ca_full) / len(y_test))
        rows.append({
            "sigma": sigma, "inputs": len(y_test), "n": args.n, "alpha": args.alpha,
            "certify_draws": args.n, "radii_mean_draws": round(float(curve.samples.mean()), 1),
            "draws_ratio": round(float(curve.samples.mean()) / args.n, 4),
            "certify_seconds": round(certify_s, 1), "radii_seconds": round(radii_s, 1),
            "radii": list(GRID),
            "ca_certify": [round(float(v), 4) for v in ca_full],
            "ca_radii": [round(float(v), 4) for v in ca_curve],
            "ca_se": [round(float(v), 4) for v in se],
        })
        print(rows[-1], flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_text(OUT / "certify-radii-digits.json",
                      json.dumps({"threads": args.threads, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
