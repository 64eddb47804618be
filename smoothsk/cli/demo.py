"""``smoothsk demo`` (what ``make demo`` runs): ``train``, ``certify`` and ``report`` on
scikit-learn's digits, each run through its own command's code."""

from __future__ import annotations

import time
from pathlib import Path

from smoothsk.cli.options import non_negative_int, positive_float, positive_int


def add_parser(subparsers) -> None:
    demo = subparsers.add_parser("demo", help="train and certify on scikit-learn's digits (CPU)")
    demo.add_argument("--sigma", type=positive_float, default=0.25,
                      help="noise level of training and certification")
    demo.add_argument("--epochs", type=positive_int, default=40, help="training epochs")
    demo.add_argument("--n", type=positive_int, default=10_000,
                      help="CERTIFY's estimation draws per input")
    demo.add_argument("--seed", type=non_negative_int, default=0,
                      help="random_state of training and certification")
    demo.add_argument("--out-dir", default="demo-output",
                      help="where the model, the TSV, the table and the plot go")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=run)


def run(args) -> int:
    """Train a Gaussian-augmentation smoothed classifier on digits, certify, report, plot."""
    import torch

    from smoothsk.cli import build_parser
    from smoothsk.datasets import load_dataset
    from smoothsk.io.model_file import load_model

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tsv = out / "model.smoothsk", out / f"certify-sigma{args.sigma:g}.tsv"
    for stale in (model, tsv, tsv.with_name(tsv.name + ".run.json")):
        stale.unlink(missing_ok=True)  # the demo retrains, so it always starts afresh
    quiet = ["--quiet"] if args.quiet else []
    parser = build_parser()

    def command(*words) -> None:
        parsed = parser.parse_args([str(word) for word in words])
        parsed.func(parsed)

    start = time.perf_counter()
    command("train", "--dataset", "digits", "--method", "gaussian", "--sigma", args.sigma,
            "--epochs", args.epochs, "--optimizer", "sgd", "--lr", 0.05, "--momentum", 0.9,
            "--batch-size", 64, "--seed", args.seed, "--out", model, *quiet)
    trained = time.perf_counter()
    command("certify", model, "--dataset", "digits", "--n0", 100, "--n", args.n,
            "--alpha", 0.001, "--batch-size", 1000, "--seed", args.seed, "--out", tsv, *quiet)
    done = time.perf_counter()
    X_test, y_test = load_dataset("digits", split="test", flat=True)
    print(f"\nGaussianAugClassifier(sigma={args.sigma}) on digits: trained in "
          f"{trained - start:.1f} s, certified {len(X_test)} test images (n0=100, "
          f"n={args.n}, alpha=0.001) in {done - trained:.1f} s.")
    print("clean accuracy of the smoothed classifier: "
          f"{load_model(model).score(X_test, y_test):.3f}\n")
    command("report", tsv, "--radii", "0,0.25,0.5,0.75,1", "--labels",
            f"Gaussian σ={args.sigma:g}", "--markdown", out / "table.md",
            "--plot", out / "certified_accuracy.png", "--title",
            "digits, Gaussian augmentation")
    print(f"\ncertification TSV: {tsv}")
    return 0
