"""``smoothsk certify``: certify a data set split into a resumable TSV."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np

from smoothsk.cli.options import (
    CommandError,
    add_common,
    add_compile,
    add_data,
    add_precision,
    add_trust_pickle,
    check_device,
    check_scheduler,
    check_writable,
    load_data,
    positive_float,
    positive_int,
    probability,
    progress,
    set_threads,
)


def add_parser(subparsers) -> None:
    certify = subparsers.add_parser("certify",
                                    help="certify a data set split into a resumable TSV")
    certify.add_argument("model_file")
    add_trust_pickle(certify)
    add_data(certify)
    certify.add_argument("--split", default="test", choices=["train", "test"],
                         help="which split to certify")
    certify.add_argument("--skip", type=positive_int, default=1, help="every SKIP-th input")
    certify.add_argument("--max", type=positive_int, default=None,
                         help="certify at most MAX inputs (of those --skip selects; Cohen's "
                              "certify.py counts MAX in data-set indices instead, so its "
                              "--skip 20 --max 10000 is --skip 20 --max 500 here)")
    certify.add_argument("--sigma", type=positive_float, default=None,
                         help="for a model file holding a plain fitted classifier (a joblib "
                              "file of a scikit-learn classifier, with --trust-pickle): the "
                              "noise level of its smoothed classifier; smoothsk models keep "
                              "their own")
    certify.add_argument("--n0", type=positive_int, default=100, help="selection draws")
    certify.add_argument("--n", type=positive_int, default=100_000, help="estimation draws")
    certify.add_argument("--alpha", type=probability, default=0.001,
                         help="failure probability per input")
    certify.add_argument("--out", required=True, help="TSV to write, or to continue")
    certify.add_argument("--jobs", type=int, default=None,
                         help="worker processes (joblib; -1 = all cores, or all workers of "
                              "the --scheduler cluster); results do not depend on it")
    certify.add_argument("--scheduler", default=None, metavar="ADDRESS",
                         help="run on a running Dask scheduler, e.g. tcp://10.0.0.5:8786")
    add_precision(certify, "the model's (a resumed run refuses another)")
    certify.add_argument("--shared-noise", action="store_true",
                         help="every input uses the same noise draws: the same per-input "
                              "guarantee, much faster for small tabular models (recorded; a "
                              "resumed run refuses a change)")
    certify.add_argument("--noise", default=None, choices=["gaussian", "discrete-gaussian"],
                         help="the smoothing noise (default: the model's): 'discrete-gaussian'"
                              " rounds the Gaussian to the inputs' lattice and forms noisy "
                              "inputs exactly, so certificates hold in floating point "
                              "(docs/certification.md); recorded, a resumed run refuses a "
                              "change")
    certify.add_argument("--noise-step", default=None, metavar="STEP",
                         help="lattice step of --noise discrete-gaussian (default: the data "
                              "set's, 1/255 for images and 1/16 for digits); inputs off it "
                              "are refused")
    certify.add_argument("--radii", default=None, metavar="RADII",
                         help="certify at this grid of radii only (start:stop:step or a comma "
                              "list), sequentially: each input draws until every radius is "
                              "decided or --max-n draws (docs/certification.md); the TSV's "
                              "radius is the largest certified grid radius")
    certify.add_argument("--max-n", type=positive_int, default=None,
                         help="with --radii: the most estimation draws per input (default "
                              "--n)")
    certify.add_argument("--bound", default="binary", choices=["binary", "two-class"],
                         help="radius from the top class alone (Cohen et al.), or also from "
                              "an upper bound on every other class (certifies inputs whose "
                              "top class has p_A < 1/2 but a clear lead; docs/"
                              "certification.md); recorded, a resumed run refuses a change")
    certify.add_argument("--interval", default="clopper-pearson",
                         choices=["clopper-pearson", "randomized"],
                         help="exact Clopper-Pearson bounds, or their randomized versions "
                              "(exact coverage, never looser; seeded by --seed); recorded")
    add_compile(certify, "for this run", modes=True)
    add_common(certify, batch_default=1000)
    certify.set_defaults(func=run)


def run(args) -> int:
    from smoothsk import PretrainedSmoothingClassifier, SmoothedClassifier
    from smoothsk.certification.inputs import take_rows
    from smoothsk.certification.noise import check_noise_options
    from smoothsk.certification.precision import check_precision
    from smoothsk.datasets import LATTICE_STEPS
    from smoothsk.io.files import file_digest
    from smoothsk.io.model_file import load_classifier
    from smoothsk.io.report import parse_radii
    from smoothsk.io.runs import (
        RunLockedError,
        RunMismatchError,
        certify_to_tsv,
        check_grid_run,
        count_complete_rows,
    )
    from smoothsk.models import compile_fitted

    radii = None
    if args.radii is not None:
        try:  # refused before any work, with the run's own check
            radii = check_grid_run(parse_radii(args.radii), bound=args.bound,
                                   interval=args.interval, n_jobs=args.jobs)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if args.max_n is not None:
            args.n = args.max_n
    elif args.max_n is not None:
        raise CommandError("--max-n applies to --radii; CERTIFY's draws are --n.")
    set_threads(args)
    check_device(args)
    check_scheduler(args.scheduler)
    check_writable(args.out)
    try:
        clf = load_classifier(args.model_file, trusted=args.trust_pickle)
    except (FileNotFoundError, ValueError) as exc:
        raise CommandError(f"cannot load model: {exc}") from exc
    plain = not isinstance(clf, SmoothedClassifier)
    if plain:  # any fitted classifier: certify its smoothed classifier at --sigma
        if args.sigma is None:
            raise CommandError(
                f"{args.model_file} holds a {type(clf).__name__}, not a smoothed model; give "
                "--sigma to certify its smoothed classifier at that noise level.")
        clf = PretrainedSmoothingClassifier(clf, sigma=args.sigma, random_state=args.seed,
                                            device=args.device)
    elif args.sigma is not None:
        raise CommandError(
            f"--sigma applies to a plain classifier; a smoothsk model keeps the sigma it was "
            f"trained with ({clf.noise_level:g}).")
    elif args.device != "cpu" or str(clf.device) != "cpu":
        clf.set_params(device=args.device)  # moves the network and sets its layout
    if args.precision is not None:
        try:
            clf.set_params(precision=args.precision)
            check_precision(args.precision, args.device)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
    if args.shared_noise:
        clf.set_params(shared_noise=True)
    if args.noise is not None or args.noise_step is not None:
        noise = args.noise or clf.noise
        if args.noise_step is not None and noise == "gaussian":
            raise CommandError("--noise-step applies to --noise discrete-gaussian.")
        # the data set's own spacing unless given (digits: 1/16, images: 1/255)
        step = args.noise_step if args.noise_step is not None or noise == "gaussian" \
            else LATTICE_STEPS.get(args.dataset)
        try:
            clf.set_params(noise=noise, noise_step=step)
            check_noise_options(noise, step)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
    if args.compile:
        if plain:
            raise CommandError("--compile applies to smoothsk models; a plain classifier's "
                               "network is certified as it is.")
        compile_fitted(clf, args.compile)
    args.model = getattr(clf, "training_info_", {}).get("model", "auto")
    # scikit-learn classifiers take flat inputs
    flat = True if plain and hasattr(clf.classifier, "n_features_in_") else None
    X, y = load_data(args, args.split, flat=flat)
    total = len(X)
    indices = np.arange(0, total, args.skip)[: args.max]
    if y is None:  # a torch Dataset: labels are its targets
        targets = getattr(X, "targets", None)  # torchvision keeps them without the images
        y = np.asarray(targets)[indices] if targets is not None else \
            np.asarray([X[int(i)][1] for i in indices])
    else:
        y = y[indices]
    X = take_rows(X, indices)
    if plain:
        try:
            clf.fit(X, y if isinstance(X, np.ndarray) else None)
        except ValueError as exc:
            raise CommandError(f"cannot certify {args.model_file} on {args.dataset}: "
                               f"{exc}") from exc
    _check_model_fits_data(clf, X, args)
    run_info = {"model_sha256": file_digest(Path(args.model_file)), "dataset": args.dataset,
                "split": args.split, "skip": args.skip,  # --max may grow: the run extends
                "describes": {"method": "pretrained" if plain else
                              getattr(clf, "training_info_", {}).get("method"),
                              "sigma": float(clf.noise_level)}}
    if hasattr(clf, "named_estimators_"):  # an ensemble: tables name its size
        run_info["describes"]["members"] = len(clf.named_estimators_)
    already = count_complete_rows(args.out)
    bar = progress(len(indices), "certify", args.quiet, "input")
    start = time.perf_counter()
    try:
        with _backend(args):
            certify_to_tsv(clf, X, y, indices, args.out, run_info=run_info, n0=args.n0,
                           n=args.n, alpha=args.alpha, batch_size=args.batch_size,
                           random_state=args.seed, n_jobs=_jobs(args),
                           progress=lambda done: bar.update(done - bar.n), bound=args.bound,
                           interval=args.interval, radii=radii)
    except (RunMismatchError, RunLockedError) as exc:
        raise CommandError(str(exc)) from exc
    finally:
        bar.close()
    new = count_complete_rows(args.out) - already
    if new <= 0:
        print(f"all {len(indices)} inputs of {args.dataset}/{args.split} were already certified "
              f"in {args.out}: nothing to do (--max or --skip choose more inputs)")
        return 0
    resumed = f", {already} were already there" if already else ""
    print(f"certified {new} inputs of {args.dataset}/{args.split} "
          f"(n0={args.n0}, n={args.n}, alpha={args.alpha}) in "
          f"{time.perf_counter() - start:.1f} s{resumed}; wrote {args.out}")
    return 0


def _check_model_fits_data(clf, X, args):
    from smoothsk.certification.inputs import first_field

    sample = X[0] if not isinstance(X, np.ndarray) else X[:1][0]
    shape = tuple(np.shape(first_field(sample)))
    if shape != tuple(clf.input_shape_):
        trained_on = getattr(clf, "training_info_", {}).get("dataset", "other data")
        raise CommandError(
            f"the model takes inputs of shape {tuple(clf.input_shape_)} (trained on "
            f"{trained_on}), but --dataset {args.dataset} has inputs of shape {shape}; "
            "certify it on the data set it was trained on.")


def _jobs(args):
    if args.jobs == 0:
        raise CommandError("--jobs must be a positive number of workers or -1 (all).")
    if args.jobs is None and args.scheduler is not None:
        return -1  # every worker of the cluster
    return args.jobs


@contextlib.contextmanager
def _backend(args):
    """joblib's local processes, or a running Dask scheduler with ``--scheduler``."""
    if args.scheduler is None:
        yield
        return
    try:
        from dask.distributed import Client
    except ImportError as exc:
        raise CommandError("--scheduler needs dask.distributed: pip install "
                           "'smoothsk[dask]'.") from exc
    from joblib import parallel_config

    try:
        client = Client(args.scheduler, timeout="20s")
    except OSError as exc:
        raise CommandError(f"cannot reach the Dask scheduler at {args.scheduler} ({exc}).") \
            from exc
    with client, parallel_config(backend="dask"):
        yield
