"""Reproduction study on Fashion-MNIST: Gaussian, SmoothMix, CRT and baselines with LeNet.

For every (method, σ) the script trains (or reuses) a model, certifies every
``--test-every``-th test image into a TSV (resumable, via ``smoothsk.io.runs``), and then
writes the papers' tables and certified-accuracy curves from the TSV files.  Run it
whole or in pieces (``--sigmas 0.5 --methods gaussian``); finished pieces are reused.
Models go to ``<out>/models`` (not committed); TSVs, timings, tables and PNGs to
``<out>``.

    python benchmarks/reproduce.py --out benchmarks/results/fashion-mnist

With ``--radii`` the certification is ``certify_radii`` on that grid (at most ``--n``
estimation draws per input) into ``<method>-sigma<σ>-radii.tsv`` instead of CERTIFY, and
the report adds ``radii.md``: certified accuracy at each grid radius with paired standard
errors between methods.  The whole test set, σ = 0.5, as ``docs/results.md`` reports it:

    python benchmarks/reproduce.py --out benchmarks/results/fashion-mnist-whole \
        --sigmas 0.5 --methods gaussian,consistency,smoothmix,smoothadv,catrs \
        --train 60000 --epochs 30 --test-every 1 --max-test 10000 \
        --n 100000 --radii 0.25,0.5,0.75,1,1.25,1.5
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import harness  # benchmarks/harness.py: parser, --threads, timing
import numpy as np

from smoothsk.datasets import load_fashion_mnist
from smoothsk.io.checkpoint import TrainingCheckpoint, data_digest
from smoothsk.io.files import atomic_write_text
from smoothsk.io.runs import certify_to_tsv, load_model, save_model
from smoothsk.io.study import write_grid_report as write_grid_report_of
from smoothsk.io.study import write_study_report
from smoothsk.models import LeNet
from smoothsk.recipes import estimator_class, recipe, recipe_params


def method_estimator(method, sigma, args, teacher=None, module=LeNet, **module_params):
    """The published MNIST-family recipe (smoothsk.recipes) for ``module`` (LeNet unless
    given, with its ``module_params``), shortened to ``--epochs`` with the schedule's shape
    kept; ``--batch-size`` overrides its batch."""
    params = recipe_params(recipe(method, "mnist", sigma), epochs=args.epochs)
    if args.batch_size is not None:
        params["batch_size"] = args.batch_size
    params.update(module=module, random_state=0, verbose=1,  # per-epoch lines in the log
                  precision=args.precision, channels_last=args.channels_last,
                  **{f"module__{key}": value for key, value in module_params.items()})
    if method == "crt":
        params["teacher"] = teacher
    if method == "catrs":  # the authors' σ = 0.25 Gaussian model, at --target-draws
        params.update(target_model=teacher, target_draws=args.target_draws)
    return estimator_class(method)(**params)


def train(method, sigma, args, X, y, out: Path):
    model_path = out / "models" / f"{method}-sigma{sigma:g}.smoothsk"
    info_path = out / f"train-{method}-sigma{sigma:g}.json"
    if model_path.exists() and info_path.exists():
        info = json.loads(info_path.read_text())
        wanted = {"train_size": args.train, "epochs": args.epochs, "batch_size": args.batch_size,
                  "precision": args.precision, "channels_last": args.channels_last}
        saved = dict({"precision": "fp32", "channels_last": False}, **info)  # older files
        differing = {k: (saved.get(k), v) for k, v in wanted.items() if saved.get(k) != v}
        if differing:
            raise SystemExit(f"{model_path} was trained with other settings "
                             f"(saved, asked): {differing}; use another --out or the same "
                             "--train/--epochs/--batch-size")
        return load_model(model_path), info
    teacher = None
    if method == "crt":
        teacher, _ = train("smoothmix", sigma, args, X, y, out)
    elif method == "catrs":
        teacher, _ = train("gaussian", 0.25, args, X, y, out)
    clf = method_estimator(method, sigma, args, teacher)
    info = fit_and_save(clf, X, y, model_path, info_path, {
        "method": method, "sigma": sigma, "epochs": args.epochs, "train_size": len(X),
        "batch_size": args.batch_size,
        "recipe": "smoothsk.recipes, mnist family", "precision": args.precision,
        **({"target_draws": args.target_draws} if method == "catrs" else {}),
        "channels_last": args.channels_last})
    print(f"trained {method} σ={sigma}: {info['seconds']:.0f} s", flush=True)
    return clf, info


def fit_and_save(clf, X, y, model_path: Path, info_path: Path, info: dict) -> dict:
    """Fit ``clf`` with a checkpoint every epoch beside ``model_path`` (a killed run
    continues where it stopped, to the same weights), save it there, and write ``info``
    to ``info_path`` with ``"seconds"`` set to the training time over every resumed piece
    and ``"machine"`` to where it trained (retraining reproduces the weights bit for bit
    only on the same CPU kernels).  Returns that ``info``."""
    checkpoint = model_path.with_suffix(".ckpt")
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    clf.set_params(callbacks=list(clf.callbacks or [])
                   + [("checkpoint", TrainingCheckpoint(checkpoint))])
    clf.fit(X, y)
    info = dict(info, seconds=float(sum(clf.history[:, "dur"])), machine=harness.machine())
    save_model(clf, model_path)
    atomic_write_text(info_path, json.dumps(info, indent=1))
    checkpoint.unlink(missing_ok=True)
    return info


def main(argv=None):
    parser = harness.parser(__doc__, threads=None)
    parser.add_argument("--out", default="benchmarks/results/fashion-mnist")
    parser.add_argument("--root", default=None, help="Fashion-MNIST IDX directory")
    parser.add_argument("--sigmas", default="0.25,0.5,1.0")
    parser.add_argument("--methods", default="gaussian,smoothmix,crt")
    parser.add_argument("--train", type=int, default=5_000, help="training subset size")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="examples per optimiser step (default: the recipe's)")
    parser.add_argument("--test-every", type=int, default=20)
    parser.add_argument("--max-test", type=int, default=500)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--large-n", type=int, default=100_000,
                        help="also certify every σ=0.5 model with this n (0: skip)")
    parser.add_argument("--large-methods", default=None,
                        help="comma-separated methods to certify at --large-n (default: all)")
    parser.add_argument("--large-max-test", type=int, default=200,
                        help="certify only the first this many of the images at --large-n")
    parser.add_argument("--certify-batch", type=int, default=200,
                        help="noisy samples per forward pass when certifying (results do not "
                             "depend on it; 200 is LeNet's fastest on a 2-core CPU, see "
                             "docs/benchmarks.md)")
    parser.add_argument("--target-draws", type=int, default=1_000,
                        help="CAT-RS: noisy draws behind the σ = 0.25 Gaussian model's smoothed "
                             "prediction on each training image (the authors: 10,000)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="train and certify at this precision (use its own --out)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--radii", default=None,
                        help="comma-separated grid: certify with certify_radii (max_n = --n) "
                             "instead of CERTIFY")
    parser.add_argument("--reference", default=None,
                        help="with --radii: a second study directory on the same grid (e.g. "
                             "the fp32 runs of a bf16 study); radii.md adds each method's "
                             "paired difference against it")
    parser.add_argument("--labels", default=None,
                        help="with --reference: names of --out's runs and its runs in those "
                             "rows, comma-separated (e.g. bf16,fp32)")
    parser.add_argument("--report-only", action="store_true",
                        help="only rewrite the tables, claims and curves from the TSVs in --out")
    args = harness.parse(parser, argv)
    if (args.reference is None) != (args.labels is None) or \
            (args.reference and (not args.radii or len(args.labels.split(",")) != 2)):
        parser.error("--reference and --labels go together, with --radii; --labels names "
                     "the two directories' runs, e.g. --labels bf16,fp32")
    out = Path(args.out)
    report = write_grid_report if args.radii else write_report
    if args.report_only:
        report(out, args)
        return
    out.mkdir(parents=True, exist_ok=True)
    X, y = load_fashion_mnist(args.root, split="train")
    X, y = X[: args.train], y[: args.train]
    X_test, y_test = load_fashion_mnist(args.root, split="test")
    indices = np.arange(0, len(X_test), args.test_every)[: args.max_test]
    sigmas = [float(s) for s in args.sigmas.split(",")]
    methods = args.methods.split(",")
    for sigma in sigmas:
        for method in methods:
            clf, _ = train(method, sigma, args, X, y, out)
            if args.radii:
                certify_grid(clf, method, sigma, args, X_test, y_test, indices, out)
                continue
            runs = [args.n]
            large = args.large_methods.split(",") if args.large_methods else methods
            if sigma == 0.5 and method in large and args.large_n:
                runs.append(args.large_n)
            for n in runs:
                tsv = out / f"{method}-sigma{sigma:g}-n{n}.tsv"
                idx = indices if n == args.n else indices[: args.large_max_test]
                start = time.perf_counter()
                certify_to_tsv(clf, X_test[idx], y_test[idx], idx, tsv,
                               run_info={"method": method, "sigma": sigma,
                                         "train": args.train, "epochs": args.epochs},
                               n0=100, n=n, alpha=0.001, batch_size=args.certify_batch,
                               random_state=0)
                print(f"certified {method} σ={sigma} n={n}: {time.perf_counter() - start:.0f} s",
                      flush=True)
    report(out, args)


def certify_study_images(clf, name: str, X_test, y_test, indices, tsv: Path, run_info: dict,
                         *, n: int = 10_000) -> None:
    """CERTIFY of the study's test images ``indices`` into ``tsv`` with its fixed settings
    (n0 = 100, α = 0.001, ``random_state=0``, batches of 200, 50 rows per call):
    resumable, and paired with every other run on the same images."""
    start = time.perf_counter()
    certify_to_tsv(clf, X_test[indices], y_test[indices], indices, tsv, run_info=run_info,
                   n0=100, n=n, alpha=0.001, batch_size=200, random_state=0,
                   rows_per_call=50,
                   progress=lambda rows: print(f"{name}: {rows} images, "
                                               f"{time.perf_counter() - start:.0f} s",
                                               flush=True))
    print(f"certified {name}: {time.perf_counter() - start:.0f} s", flush=True)


def grid_of(args) -> list[float]:
    return sorted(float(r) for r in args.radii.split(","))


def certify_grid(clf, method, sigma, args, X_test, y_test, indices, out: Path):
    """``certify_radii`` of every chosen test image into ``<method>-sigma<σ>-radii.tsv``."""
    tsv = out / f"{method}-sigma{sigma:g}-radii.tsv"
    start = time.perf_counter()

    def progress(rows):
        print(f"{method} σ={sigma}: {rows} of {len(indices)} images, "
              f"{time.perf_counter() - start:.0f} s", flush=True)

    certify_to_tsv(clf, X_test[indices], y_test[indices], indices, tsv,
                   run_info={"method": method, "sigma": sigma, "train": args.train,
                             "epochs": args.epochs, "weights_sha256": weights_digest(clf)},
                   n0=100, n=args.n, alpha=0.001, batch_size=args.certify_batch,
                   random_state=0, radii=grid_of(args), rows_per_call=100, progress=progress)
    print(f"certified {method} σ={sigma} on the grid: {time.perf_counter() - start:.0f} s",
          flush=True)


def weights_digest(clf) -> str:
    """SHA-256 of the network's weights: a run that spans sessions resumes only on the
    model that wrote its rows (model files are not committed, so a new checkout retrains,
    and a retrained model that differs in one bit is refused rather than mixed in)."""
    state = clf.module_.state_dict()
    return data_digest(np.concatenate([state[k].detach().cpu().double().numpy().ravel()
                                       for k in sorted(state)]))


def write_grid_report(out: Path, args):
    """``radii.md`` (:func:`smoothsk.io.study.write_grid_report`)."""
    grid = grid_of(args)
    text = write_grid_report_of(
        out, grid, f"Fashion-MNIST, LeNet, {args.train:,} training images, {args.epochs} "
        f"epochs; certify_radii on the grid {', '.join(f'{r:g}' for r in grid)} (at most "
        f"{args.n:,} estimation draws, n0 = 100, α = 0.001).",
        reference=args.reference,
        labels=tuple(args.labels.split(",")) if args.labels else None)
    if text:
        print(text)


def _batch_text(args) -> str:
    if args.batch_size:
        return f"batch {args.batch_size}"
    return ("the published MNIST-family recipes (SGD, lr 0.01 ×0.1 at 1/3 and 2/3 of "
            "training, batch 256 per loader batch)")


def write_report(out: Path, args):
    """``results.md``, ``summary.json`` and the curves
    (:func:`smoothsk.io.study.write_study_report`)."""
    text = write_study_report(
        out, f"Fashion-MNIST, LeNet, {args.train:,} training images, {args.epochs} epochs, "
        f"{_batch_text(args)}; certified every {args.test_every}th test image (at most "
        f"{args.max_test}), n0 = 100, α = 0.001.", args.n)
    if text:
        print(text)


if __name__ == "__main__":
    main()
