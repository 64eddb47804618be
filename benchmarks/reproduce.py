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
from smoothsk.io.report import (
    CertificationRun,
    markdown_table,
    plot_certified_accuracy,
    read_certification_tsv,
)
from smoothsk.io.runs import certify_to_tsv, load_model, save_model
from smoothsk.models import LeNet
from smoothsk.recipes import estimator_class, recipe, recipe_params


def method_estimator(method, sigma, args, teacher=None):
    """The published MNIST-family recipe (smoothsk.recipes) for LeNet, shortened to
    ``--epochs`` with the schedule's shape kept; ``--batch-size`` overrides its batch."""
    params = recipe_params(recipe(method, "mnist", sigma), epochs=args.epochs)
    if args.batch_size is not None:
        params["batch_size"] = args.batch_size
    params.update(module=LeNet, random_state=0, verbose=1,  # per-epoch lines in the log
                  precision=args.precision, channels_last=args.channels_last)
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
    # Checkpointed every epoch: a killed run continues where it stopped, to the same weights.
    checkpoint = out / "models" / f"{method}-sigma{sigma:g}.ckpt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    clf.set_params(callbacks=list(clf.callbacks or [])
                   + [("checkpoint", TrainingCheckpoint(checkpoint))])
    clf.fit(X, y)
    seconds = float(sum(clf.history[:, "dur"]))  # training time over every resumed piece
    info = {"method": method, "sigma": sigma, "seconds": seconds,
            "epochs": args.epochs, "train_size": len(X), "batch_size": args.batch_size,
            "recipe": "smoothsk.recipes, mnist family", "precision": args.precision,
            **({"target_draws": args.target_draws} if method == "catrs" else {}),
            "channels_last": args.channels_last}
    model_path.parent.mkdir(parents=True, exist_ok=True)
    save_model(clf, model_path)
    atomic_write_text(info_path, json.dumps(info, indent=1))
    checkpoint.unlink(missing_ok=True)
    print(f"trained {method} σ={sigma}: {info['seconds']:.0f} s", flush=True)
    return clf, info


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
    parser.add_argument("--report-only", action="store_true",
                        help="only rewrite the tables, claims and curves from the TSVs in --out")
    args = harness.parse(parser, argv)
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
    """``radii.md``: certified accuracy at each grid radius, and paired differences.

    At a grid radius r an input counts as certified-correct when ``correct`` and its
    radius ≥ r (``certify_radii`` reports the largest grid radius it certified).  The
    paired standard error of a difference between two methods on the same k images is
    the sample standard deviation of the per-image differences over √k.
    """
    grid = grid_of(args)
    runs = {}
    for method in ORDER:
        for tsv in sorted(out.glob(f"{method}-sigma*-radii.tsv")):
            sigma = float(tsv.stem.split("-sigma", 1)[1].removesuffix("-radii"))
            runs[(method, sigma)] = read_certification_tsv(tsv, LABEL[method])
    if not runs:
        return
    lines = [f"Fashion-MNIST, LeNet, {args.train:,} training images, {args.epochs} epochs; "
             f"certify_radii on the grid {', '.join(f'{r:g}' for r in grid)} (at most "
             f"{args.n:,} estimation draws, n0 = 100, α = 0.001).\n"]
    for sigma in sorted({s for _, s in runs}):
        at_sigma = {m: run for (m, s), run in runs.items() if s == sigma}
        lines += [f"### σ = {sigma:g}\n",
                  "| method | images | " + " | ".join(f"r={r:g}" for r in grid) + " |",
                  "|---|---|" + "---|" * len(grid)]
        for method, run in at_sigma.items():
            cells = _mean_se_cells(_grid_hits(run, grid), "")
            lines.append(f"| {LABEL[method]} | {len(run.idx):,} | " + " | ".join(cells) + " |")
        lines += ["", "Paired differences in certified accuracy (points, mean ± SE over the "
                  "images both runs certified):\n",
                  "| difference | images | " + " | ".join(f"r={r:g}" for r in grid) + " |",
                  "|---|---|" + "---|" * len(grid)]
        methods = list(at_sigma)
        for i, first in enumerate(methods):
            for second in methods[i + 1:]:
                a, b = at_sigma[first], at_sigma[second]
                shared, ia, ib = np.intersect1d(a.idx, b.idx, return_indices=True)
                if len(shared) < 2:
                    continue
                cells = _mean_se_cells(_grid_hits(b, grid)[ib] - _grid_hits(a, grid)[ia], "+")
                lines.append(f"| {LABEL[second]} − {LABEL[first]} | {len(shared):,} | "
                             + " | ".join(cells) + " |")
        lines.append("")
    atomic_write_text(out / "radii.md", "\n".join(lines))
    print("\n".join(lines))


def _mean_se_cells(values: np.ndarray, sign: str) -> list[str]:
    """``mean ± SE`` in points for each column of ``(images, radii)`` values."""
    mean = 100 * values.mean(axis=0)
    se = 100 * values.std(axis=0, ddof=1) / np.sqrt(len(values))
    return [f"{m:{sign}.2f} ± {e:.2f}" for m, e in zip(mean, se)]


def _grid_hits(run, grid) -> np.ndarray:
    """``(images, radii)`` 0/1: correct and certified at each grid radius."""
    radius = np.asarray(run.radius, dtype=float)
    correct = np.asarray(run.correct, dtype=bool)
    return (correct[:, None] & (radius[:, None] >= np.asarray(grid)[None, :])).astype(float)


ORDER = ("gaussian", "stability", "consistency", "macer", "smoothadv", "smoothmix", "crt",
         "catrs")
LABEL = {"gaussian": "Gaussian", "stability": "Stability", "consistency": "Consistency",
         "macer": "MACER", "smoothadv": "SmoothAdv", "smoothmix": "SmoothMix",
         "crt": "CRT student", "catrs": "CAT-RS"}


def _batch_text(args) -> str:
    if args.batch_size:
        return f"batch {args.batch_size}"
    return ("the published MNIST-family recipes (SGD, lr 0.01 ×0.1 at 1/3 and 2/3 of "
            "training, batch 256 per loader batch)")


def write_report(out: Path, args):
    """Tables and curves for every (method, σ) whose TSVs are in ``out`` (all pieces)."""
    trained = [json.loads(p.read_text()) for p in out.glob("train-*.json")]
    sigmas = sorted({float(t["sigma"]) for t in trained})
    methods = [m for m in ORDER if any(t["method"] == m for t in trained)]
    radii = {0.25: [0, 0.25, 0.5, 0.75, 1.0], 0.5: [0, 0.5, 1.0, 1.5, 2.0],
             1.0: [0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]}
    lines = [f"Fashion-MNIST, LeNet, {args.train:,} training images, {args.epochs} epochs, "
             f"{_batch_text(args)}; certified every {args.test_every}th test image "
             f"(at most {args.max_test}), n0 = 100, α = 0.001.\n"]
    found = {}
    for sigma in sigmas:
        rows, curves = [], []
        for method in methods:
            for tsv in sorted(out.glob(f"{method}-sigma{sigma:g}-n*.tsv"),
                              key=lambda p: int(p.stem.rsplit("-n", 1)[1])):
                n = int(tsv.stem.rsplit("-n", 1)[1])
                info = json.loads((out / f"train-{method}-sigma{sigma:g}.json").read_text())
                seconds = info["seconds"]
                run = read_certification_tsv(tsv, _run_name(method, n, seconds))
                full = found.get((method, sigma, args.n))
                if full is not None and len(run.idx) < len(full[0].idx):
                    # a subset run: show the full run on the same images next to it
                    rows.append(_same_images(full[0], run.idx, _run_name(
                        method, args.n, seconds, f"same {len(run.idx)} images")))
                    run.name = _run_name(method, n, seconds, f"{len(run.idx)} images")
                rows.append(run)
                curves.append(run)
                found[(method, sigma, n)] = (run, seconds)
        if not rows:
            continue
        lines.append(f"### σ = {sigma:g}\n")
        lines.append(markdown_table(rows, radii.get(sigma, [0, 0.5, 1.0])))
        png = out / f"curves-sigma{sigma:g}.png"
        plot_certified_accuracy(curves, png, title=f"Fashion-MNIST, LeNet, σ = {sigma:g}")
        lines.append(f"![σ = {sigma:g}]({png.name})\n")
    lines += claims(found, args.n)
    atomic_write_text(out / "results.md", "\n".join(lines))
    summary = {f"{m}|{s:g}|{n}": (run.average_certified_radius, seconds)
               for (m, s, n), (run, seconds) in found.items()}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    print("\n".join(lines))


def paired_gain(base, other) -> tuple[float, float, int]:
    """Mean and standard error of ``other − base`` in ``radius · correct`` over shared images.

    ACR is the mean of ``radius · correct`` per image, so on the same images the ACR
    difference is the mean of the per-image differences; its standard error is their
    sample standard deviation over √k (pairing removes the between-image variance).
    """
    shared, a, b = np.intersect1d(base.idx, other.idx, return_indices=True)
    diff = other.radius[b] * other.correct[b] - base.radius[a] * base.correct[a]
    se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    return float(diff.mean()), float(se), len(shared)


def _run_name(method: str, n: int, seconds: float, images: str | None = None) -> str:
    images = f", {images}" if images else ""
    return f"{LABEL[method]} (n = {n:,}{images}, train {seconds:.0f} s)"


def _same_images(run, idx, name: str) -> CertificationRun:
    """``run`` restricted to the images ``idx``, for a like-for-like row next to a subset run."""
    keep = np.isin(run.idx, idx)
    return CertificationRun(name, run.idx[keep], run.radius[keep], run.correct[keep])


def _by_sigma(item):
    (method, sigma, size), _ = item
    return sigma, ORDER.index(method), size


# (method, the method its published claim compares it with)
COMPARISONS = tuple((m, "gaussian") for m in ORDER if m not in ("gaussian", "crt")) + (
    ("catrs", "smoothmix"), ("smoothadv", "smoothmix"))


def _paired_text(base, other) -> str:
    """``other − base`` ACR over their shared images: ``gain ± se (z SE, k images)``."""
    gain, se, k = paired_gain(base, other)
    return f"{gain:+.3f} ± {se:.3f} ({gain / se:+.1f} SE, {k} images)"


def claims(found: dict, n: int) -> list[str]:
    """The published relative claims, as numbers: paired ACR gains and CRT's ratios."""
    lines = ["### Relative claims (paired over the same images: mean ± standard error)\n"]
    ordered = sorted(found.items(), key=_by_sigma)
    for (method, sigma, size), (run, seconds) in ordered:
        for reference in (r for m, r in COMPARISONS if m == method):
            if (reference, sigma, size) not in found:
                continue
            base, base_seconds = found[(reference, sigma, size)]
            lines.append(f"- σ = {sigma:g}, n = {size:,}: {LABEL[method]} − {LABEL[reference]} "
                         f"ACR = {_paired_text(base, run)}; training wall time "
                         f"{seconds:.0f} / {base_seconds:.0f} s")
    for (method, sigma, size), (run, seconds) in ordered:
        if method != "crt" or ("smoothmix", sigma, size) not in found:
            continue
        teacher, teacher_seconds = found[("smoothmix", sigma, size)]
        gain, se, _ = paired_gain(teacher, run)
        lines.append(f"- σ = {sigma:g}, n = {size:,}: CRT student / SmoothMix teacher ACR = "
                     f"{run.average_certified_radius / teacher.average_certified_radius:.3f} "
                     f"(difference {gain:+.3f} ± {se:.3f}); training wall time "
                     f"{seconds:.0f} / {teacher_seconds:.0f} s = {seconds / teacher_seconds:.3f} "
                     f"({teacher_seconds / seconds:.0f}× less)")
    for (method, sigma, size), (run, _) in ordered:
        if size == n or (method, sigma, n) not in found:
            continue
        gain, se, k = paired_gain(found[(method, sigma, n)][0], run)
        lines.append(f"- σ = {sigma:g}: {LABEL[method]} ACR at n = {size:,} − at n = {n:,} = "
                     f"{gain:+.3f} ± {se:.3f} (same {k} images)")
    return lines + [""]


if __name__ == "__main__":
    main()
