"""How many draws CAT-RS's target p̂(x) needs: p̂ at few draws against 10,000 draws.

p̂(x) is the σ = 0.25 Gaussian model's smoothed prediction on a training image (the KL
target of CAT-RS).  For the first ``--images`` training images this compares p̂ from
``--draws`` draws with p̂ from 10,000 (the authors' N): total-variation distance, the
true-class entry and the KL term's target entropy.  Writes a JSON next to the model.
"""

import argparse
import json

import numpy as np
import torch

from smoothsk import smoothed_targets
from smoothsk.datasets import load_fashion_mnist
from smoothsk.io.files import atomic_write_text
from smoothsk.io.runs import load_model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--draws", default="200,1000")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = load_model(args.model)
    X, y = load_fashion_mnist(None, split="train")
    X, y = X[: args.images], y[: args.images]
    reference = smoothed_targets(model, X, 10_000, random_state=1)
    rows = np.arange(len(y))
    result = {"images": args.images, "reference_draws": 10_000, "compared": {}}
    for draws in (int(d) for d in args.draws.split(",")):
        probs = smoothed_targets(model, X, draws, random_state=0)
        tv = 0.5 * np.abs(probs - reference).sum(1)
        true_gap = np.abs(probs[rows, y] - reference[rows, y])
        result["compared"][draws] = {
            "mean_total_variation": float(tv.mean()), "max_total_variation": float(tv.max()),
            "mean_abs_true_class_gap": float(true_gap.mean()),
            "max_abs_true_class_gap": float(true_gap.max()),
            "same_argmax": float(np.mean(probs.argmax(1) == reference.argmax(1))),
        }
        print(draws, result["compared"][draws], flush=True)
    atomic_write_text(args.out, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
