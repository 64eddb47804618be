"""Smoothed ensembles against their members, and K-consensus's cost, on the same inputs.

For each σ, ``--members`` Gaussian-augmentation models (the default MLP on digits, seeds
0…k−1) are certified one by one and as a ``SmoothedEnsembleClassifier`` (soft and hard
voting, and K-consensus with K = 2), all on the digits test set with the same n, α and
seed.  Reports ACR and certified accuracy of each, and for K-consensus the member
evaluations per draw against evaluating every member.

    python benchmarks/ensemble.py [--members 5] [--sigmas 0.25,0.5] [--n 10000]
"""

from __future__ import annotations

import json
from pathlib import Path

import harness  # benchmarks/harness.py: parser, --threads, timing
import torch

from smoothsk import (
    GaussianAugClassifier,
    SmoothedEnsembleClassifier,
    average_certified_radius,
    certified_accuracy,
)
from smoothsk.datasets import load_dataset
from smoothsk.io.files import atomic_write_text

OUT = Path(__file__).parent / "results" / "ensemble"
RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def main(argv=None):
    parser = harness.parser(__doc__, threads=1)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--sigmas", default="0.25,0.5")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--n", type=int, default=10_000)
    args = harness.parse(parser, argv)
    X, y = load_dataset("digits", split="train", flat=True)
    Xt, yt = load_dataset("digits", split="test", flat=True)
    rows = []
    for sigma in [float(s) for s in args.sigmas.split(",")]:
        members = [(f"seed{s}", GaussianAugClassifier(
            sigma=sigma, max_epochs=args.epochs, lr=0.05, optimizer=torch.optim.SGD,
            optimizer__momentum=0.9, random_state=s).fit(X, y)) for s in range(args.members)]

        def record(name, estimator, cost=None, sigma=sigma):
            cert = estimator.certify(Xt, n0=100, n=args.n, alpha=0.001, random_state=1)
            rows.append({"sigma": sigma, "model": name,
                         "acr": round(average_certified_radius(yt, cert), 4),
                         "certified_accuracy": {f"{r:g}": round(float(a), 4) for r, a in
                                                zip(RADII, certified_accuracy(yt, cert, RADII))},
                         **({} if cost is None else {"member_evaluations_per_draw":
                                                     round(cost(), 3)})})
            print(rows[-1], flush=True)

        for name, member in members:
            record(name, member)
        for voting, consensus in (("soft", None), ("hard", None), ("soft", 2)):
            ensemble = SmoothedEnsembleClassifier(members, prefit=True, voting=voting,
                                                  consensus=consensus).fit(X[:10])
            network = ensemble.classifier_network_
            draws = len(Xt) * (100 + args.n)
            record(f"ensemble {voting}" + (f" K={consensus}" if consensus else ""), ensemble,
                   cost=lambda network=network, draws=draws: network.member_rows / draws)
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_text(OUT / "ensemble-digits.json",
                      json.dumps({"members": args.members, "epochs": args.epochs, "n": args.n,
                                  "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
