"""The ``smoothsk`` command line: ``train``, ``certify``, ``report`` and ``demo``.

Errors are reported as ``smoothsk <command>: error: ...`` with exit status 2.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["build_parser", "main"]

METHODS = ("gaussian", "smoothmix", "crt", "smoothadv", "macer", "consistency", "stability",
           "catrs", "denoised")
MODELS = ("auto", "mlp", "lenet", "resnet20", "resnet110", "resnet50")
_DATA_SHAPES = {"digits": (10, None), "fashion-mnist": (10, 28), "mnist": (10, 28),
                "cifar10": (10, 32), "imagenet": (1000, 224)}


class CommandError(Exception):
    """A user error: printed without a traceback, exit status 2."""


# --------------------------------------------------------------------------- option types
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0; got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0; got {text}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must lie in the open interval (0, 1); got {text}")
    return value


def _assignment(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected name=value; got {text!r}")
    name, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return name.strip(), value


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row):
        return "  ".join(str(c).rjust(w) for c, w in zip(row, widths))

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _progress(total: int, description: str, quiet: bool, unit: str):
    """A tqdm bar on a terminal, a line every 30 s in a log (stderr redirected), or
    nothing with ``--quiet``."""
    from smoothsk.progress import progress_bar

    return progress_bar(total, description, unit=unit, enabled=not quiet, file=sys.stderr)


def _set_threads(args):
    import os

    import torch

    threads = getattr(args, "threads", None)
    if threads:
        limit = 4 * (os.cpu_count() or 1)
        if threads > limit:
            raise CommandError(f"--threads {threads} is more than 4× this machine's "
                               f"{os.cpu_count()} cores; pass at most {limit}.")
        torch.set_num_threads(threads)


def _check_device(args):
    import torch

    if getattr(args, "device", "cpu") == "cuda" and not torch.cuda.is_available():
        raise CommandError("--device cuda, but torch sees no CUDA GPU here (or this torch "
                           "build has no CUDA); use --device cpu.")


def _check_writable(out) -> Path:
    """Fail before any work when ``out`` cannot be written (a directory, no permission)."""
    import tempfile

    out = Path(out)
    if out.is_dir():
        raise CommandError(f"--out {out} is a directory; name a file in it instead.")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise CommandError(f"--out {out}: the directory {parent} does not exist.")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{out.name}.probe."):
            pass
    except OSError as exc:
        raise CommandError(f"--out {out} cannot be written ({exc.strerror}); choose a "
                           "writable place.") from exc
    return out


def _check_scheduler(address):
    import re

    if address is not None and not re.fullmatch(r"(tcp|tls|inproc|ucx)://[^\s/]+(:\d+)?",
                                                address):
        raise CommandError(f"--scheduler {address!r} is not a Dask scheduler address; use "
                           "e.g. tcp://10.0.0.5:8786.")


# --------------------------------------------------------------------------- data
def _load(args, split: str, flat: bool | None = None):
    """``(X, y)`` of ``--dataset``; flat vectors for an MLP (or when ``flat`` says so)."""
    from smoothsk.datasets import load_dataset

    if flat is None:
        flat = _resolve_model(args.dataset, getattr(args, "model", "auto")) == "mlp"
    try:
        X, y = load_dataset(args.dataset, split=split, root=args.root, flat=flat)
    except (FileNotFoundError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    return X, y


def _resolve_model(dataset: str, model: str) -> str:
    if model != "auto":
        return model
    return {"digits": "mlp", "fashion-mnist": "lenet", "mnist": "lenet", "cifar10": "resnet110",
            "imagenet": "resnet50"}[dataset]


def _module(dataset: str, model: str):
    from smoothsk import models

    num_classes, side = _DATA_SHAPES[dataset]
    if model == "mlp":
        return None, {}  # the estimators' default MLP, sized from the data
    if model == "lenet":
        if side is None:
            raise CommandError("--model lenet needs 28×28 images; use --model mlp for digits.")
        return models.LeNet, {"module__num_classes": num_classes, "module__image_size": side}
    if model in ("resnet20", "resnet110"):
        if dataset != "cifar10":
            raise CommandError(f"--model {model} is the CIFAR-10 network; use --dataset cifar10.")
        return models.CIFARResNet, {"module__depth": int(model[6:]),
                                    "module__num_classes": num_classes}
    if dataset != "imagenet":
        raise CommandError("--model resnet50 is the ImageNet network; use --dataset imagenet.")
    return models.ImageNetResNet50, {"module__num_classes": num_classes}


# --------------------------------------------------------------------------- train
_METHOD_OPTIONS = ("num_noise", "num_steps", "step_size", "eta", "mix_step", "attack_radius",
                   "epsilon", "warmup", "transfer_weight", "consistency_weight",
                   "entropy_weight", "stability_weight", "robustness_weight", "margin",
                   "inverse_temperature", "kl_weight", "target_draws", "target_sigma",
                   "objective", "mse_epochs")


def _with_epoch_progress(clf, bar, lr_step=None):
    """Fit-time callback updating ``bar`` each epoch; :func:`_without_progress` removes it."""
    from skorch.callbacks import Callback

    class EpochProgress(Callback):
        def on_epoch_end(self, net, **kwargs):
            bar.update(1)
            bar.set_postfix(loss=f"{net.history[-1, 'train_loss']:.4f}")

    callbacks = list(clf.callbacks or []) + [("progress", EpochProgress())]
    if lr_step:
        from skorch.callbacks import LRScheduler

        step, gamma = lr_step
        callbacks.append(("lr_scheduler", LRScheduler(policy="StepLR", step_size=step,
                                                      gamma=gamma)))
    return clf.set_params(callbacks=callbacks)


def _without_progress(clf):
    # The callback closes over a terminal bar: drop it so the model pickles cleanly.
    clf.callbacks = [(name, cb) for name, cb in clf.callbacks or [] if name != "progress"] or None
    clf.callbacks_ = [(name, cb) for name, cb in clf.callbacks_ if name != "progress"]
    return clf


# Options a recipe also sets; None on the command line means "not given": then the
# recipe's value, or the estimator's default.
_TRAIN_OPTIONS = ("epochs", "lr", "batch_size", "momentum", "weight_decay")


def _recipe_params(args) -> dict:
    from smoothsk.recipes import recipe, recipe_params

    if args.lr_step is not None:
        raise CommandError("--recipe sets the learning-rate schedule; drop --lr-step.")
    sigma = args.sigma
    if sigma is None and args.method != "crt":
        raise CommandError("--recipe needs --sigma (recipes are published per noise level).")
    try:
        item = recipe(args.method, args.dataset, 0.25 if sigma is None else sigma)
        return recipe_params(item, epochs=args.epochs)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc


def build_estimator(args, dataset_train_size: int | None = None):
    """The estimator ``smoothsk train`` fits, from parsed arguments."""
    import torch

    from smoothsk.io.runs import load_model
    from smoothsk.recipes import estimator_class

    cls = estimator_class(args.method)
    model = _resolve_model(args.dataset, args.model)
    module, module_params = _module(args.dataset, model)
    given = {name: getattr(args, name) for name in _TRAIN_OPTIONS
             if getattr(args, name) is not None}
    # Without --recipe the estimators' own defaults apply: one set of defaults for both.
    params = _recipe_params(args) if args.recipe else {}
    if args.recipe:
        given.pop("epochs", None)  # recipe_params already shortened the schedule
    if args.optimizer is not None:
        params["optimizer"] = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[args.optimizer]
    if "momentum" in given and params.get("optimizer") is not torch.optim.SGD:
        raise CommandError("--momentum applies to SGD; add --optimizer sgd (or --recipe).")
    renamed = {"epochs": "max_epochs", "momentum": "optimizer__momentum",
               "weight_decay": "optimizer__weight_decay"}
    params.update({renamed.get(name, name): value for name, value in given.items()})
    params.update(module=module, device=args.device, random_state=args.seed, **module_params)
    if args.precision is not None:
        params["precision"] = args.precision
    if args.lr_schedule is not None:
        if args.recipe or args.lr_step is not None:
            raise CommandError("--lr-schedule applies without --recipe and --lr-step, which "
                               "set the schedule themselves; drop one.")
        params["lr_schedule"] = args.lr_schedule
    if args.channels_last is not None:
        params["channels_last"] = args.channels_last
    if args.compile:
        params["compile"] = True
    if args.dataset in ("cifar10", "imagenet"):  # torch Datasets: fit needs the classes
        params["classes"] = list(range(_DATA_SHAPES[args.dataset][0]))
    if args.sigma is not None:
        params["sigma"] = args.sigma
    if args.method == "crt":
        if args.teacher is None:
            raise CommandError("--method crt needs --teacher MODEL (a trained smoothsk model).")
        try:
            params["teacher"] = load_model(args.teacher, trusted=args.trust_pickle)
        except (FileNotFoundError, ValueError) as exc:
            raise CommandError(f"cannot use --teacher: {exc}") from exc
    elif args.teacher is not None:
        raise CommandError("--teacher only applies to --method crt.")
    if args.method == "denoised":
        if args.classifier is None:
            raise CommandError("--method denoised needs --classifier MODEL (the trained "
                               "classifier to put the denoiser in front of).")
        if args.model != "auto":
            raise CommandError(
                "--model names a classifier's network; --method denoised trains a denoiser "
                "(DnCNN for images, an MLP for flat inputs): size it with --set "
                "module__depth=17 --set module__width=64.")
        params["classifier"] = _classifier_arg(args)
        params.update(module=None)
        for name in module_params:
            params.pop(name, None)
    elif args.classifier is not None:
        raise CommandError("--classifier only applies to --method denoised.")
    if args.target_model is not None:
        if args.method != "catrs":
            raise CommandError("--target-model only applies to --method catrs.")
        try:
            params["target_model"] = load_model(args.target_model, trusted=args.trust_pickle)
        except (FileNotFoundError, ValueError) as exc:
            raise CommandError(f"cannot use --target-model: {exc}") from exc
    for name in _METHOD_OPTIONS:
        value = getattr(args, name)
        if value is not None:
            params[name] = value
    params.update(dict(args.set or []))
    try:
        clf = cls(**params)
    except TypeError as exc:
        raise CommandError(f"{args.method} does not take that option ({exc}).") from exc
    return clf


def _classifier_arg(args):
    """The classifier ``--classifier`` names (loaded once per command)."""
    from smoothsk.io.model_file import load_classifier

    if getattr(args, "_classifier", None) is None:
        try:
            args._classifier = load_classifier(args.classifier, trusted=args.trust_pickle)
        except (FileNotFoundError, ValueError) as exc:
            raise CommandError(f"cannot use --classifier: {exc}") from exc
    return args._classifier


def _classifier_takes_flat_inputs(args) -> bool | None:
    """For ``--method denoised``: whether the classifier takes flat inputs (a smoothsk
    model trained on them, or any scikit-learn classifier); None for other methods."""
    from smoothsk.base import SmoothedClassifier, unwrap_frozen

    if args.method != "denoised" or args.classifier is None:
        return None
    inner = unwrap_frozen(_classifier_arg(args))
    if isinstance(inner, SmoothedClassifier):
        return len(inner.input_shape_) == 1
    return getattr(inner, "n_features_in_", None) is not None


def _save_trained(clf, args) -> str:
    """Save in the safe format; a classifier only pickle can store (one the user loaded
    from a trusted pickle) makes it a joblib file.  Returns a note for the summary."""
    import joblib

    from smoothsk.io.files import atomic_write
    from smoothsk.io.runs import save_model

    try:
        save_model(clf, args.out)
        return ""
    except ValueError:
        if not (args.method == "denoised" and args.trust_pickle):
            raise
    atomic_write(Path(args.out), lambda stream: joblib.dump(clf, stream))
    return (" as a joblib pickle (its scikit-learn classifier cannot be stored otherwise; "
            "certify it with --trust-pickle)")


def run_train(args) -> int:
    from smoothsk.certification.sampling import take_rows
    from smoothsk.io.checkpoint import TrainingCheckpoint
    from smoothsk.io.runs import RunLockedError, exclusive_run

    _set_threads(args)
    _check_device(args)
    _check_writable(args.out)
    flat = _classifier_takes_flat_inputs(args)
    X, y = _load(args, "train", flat=flat)
    if args.max_train is not None:
        X = take_rows(X, slice(args.max_train))
        y = y[: args.max_train] if y is not None else None
    clf = build_estimator(args)
    epochs = clf.max_epochs
    # Every epoch is checkpointed next to --out; the same command continues from it.
    checkpoint = Path(str(args.out) + ".ckpt")
    clf.set_params(callbacks=list(clf.callbacks or [])
                   + [("checkpoint", TrainingCheckpoint(checkpoint))])
    bar = _progress(epochs, f"train {args.method}", args.quiet, "epoch")
    _with_epoch_progress(clf, bar, (args.lr_step, args.lr_gamma) if args.lr_step else None)
    start = time.perf_counter()
    try:
        with exclusive_run(args.out):
            clf.fit(X, y)
            if len(clf.history) < epochs:  # skorch ends fit quietly on Ctrl-C
                raise KeyboardInterrupt
            seconds = time.perf_counter() - start
            _without_progress(clf)
            clf.training_info_ = {"dataset": args.dataset, "method": args.method,
                                  "model": "mlp" if flat else
                                  _resolve_model(args.dataset, args.model),
                                  "epochs": epochs, "seconds": seconds, "recipe": args.recipe,
                                  "final_lr": clf.optimizer_.param_groups[0]["lr"],
                                  "train_size": len(y) if y is not None else len(X)}
            note = _save_trained(clf, args)
            checkpoint.unlink(missing_ok=True)
    except (ValueError, RunLockedError) as exc:
        raise CommandError(str(exc)) from exc
    finally:
        bar.close()
    loss = clf.history[-1, "train_loss"]
    print(f"trained {type(clf).__name__} (sigma={clf.noise_level_:g}) on {args.dataset} for "
          f"{epochs} epochs in {seconds:.1f} s (final loss {loss:.4f}); saved {args.out}{note}")
    return 0


# --------------------------------------------------------------------------- certify
def run_certify(args) -> int:
    from smoothsk import PretrainedSmoothingClassifier, SmoothedClassifier
    from smoothsk.certification.sampling import check_precision, take_rows
    from smoothsk.io.model_file import load_classifier
    from smoothsk.io.runs import RunLockedError, RunMismatchError, _file_digest, certify_to_tsv

    _set_threads(args)
    _check_device(args)
    _check_scheduler(args.scheduler)
    _check_writable(args.out)
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
            f"trained with ({clf.noise_level_:g}).")
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
    if args.compile:
        if plain:
            raise CommandError("--compile applies to smoothsk models; a plain classifier's "
                               "network is certified as it is.")
        _compile_fitted(clf, args.compile)
    args.model = getattr(clf, "training_info_", {}).get("model", "auto")
    # scikit-learn classifiers take flat inputs
    flat = True if plain and hasattr(clf.classifier, "n_features_in_") else None
    X, y = _load(args, args.split, flat=flat)
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
    run_info = {"model_sha256": _file_digest(Path(args.model_file)), "dataset": args.dataset,
                "split": args.split, "skip": args.skip,  # --max may grow: the run extends
                "describes": {"method": "pretrained" if plain else
                              getattr(clf, "training_info_", {}).get("method"),
                              "sigma": float(clf.noise_level_)}}
    bar = _progress(len(indices), "certify", args.quiet, "input")
    start = time.perf_counter()
    try:
        with _backend(args):
            certify_to_tsv(clf, X, y, indices, args.out, run_info=run_info, n0=args.n0,
                           n=args.n, alpha=args.alpha, batch_size=args.batch_size,
                           random_state=args.seed, n_jobs=_jobs(args),
                           progress=lambda done: bar.update(done - bar.n))
    except (RunMismatchError, RunLockedError) as exc:
        raise CommandError(str(exc)) from exc
    finally:
        bar.close()
    print(f"certified {len(indices)} inputs of {args.dataset}/{args.split} "
          f"(n0={args.n0}, n={args.n}, alpha={args.alpha}) in "
          f"{time.perf_counter() - start:.1f} s; wrote {args.out}")
    return 0


# inductor options of `certify --compile max-autotune`: kernels chosen by timing them, and
# the weights frozen into the compiled graph (batch norm folded) -- sound for a run that
# never changes them, wrong for training, so `train --compile` takes no mode.
MAX_AUTOTUNE_OPTIONS = {"max_autotune": True, "freezing": True}


def _compile_fitted(clf, mode: str = "default") -> None:
    """Compile a fitted estimator's network (skorch's ``compile=True``), weights kept.

    skorch re-initializes the network when ``compile`` or its options change, so the
    trained weights are put back into the fresh module that the compiled wrapper holds.
    ``mode="max-autotune"`` adds ``MAX_AUTOTUNE_OPTIONS`` (docs/benchmarks.md: 1.4x the
    default compilation for ResNet-20 on a GPU).
    """
    network = getattr(clf.module_, "_orig_mod", clf.module_)
    state = network.state_dict()
    params = {"compile": True}
    if mode == "max-autotune":
        params["compile__options"] = dict(MAX_AUTOTUNE_OPTIONS)
    clf.set_params(**params)
    getattr(clf.module_, "_orig_mod", clf.module_).load_state_dict(state)


def _check_model_fits_data(clf, X, args):
    from smoothsk.certification.sampling import first_field

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


# --------------------------------------------------------------------------- report
def _print_runs(runs, radii) -> None:
    """The report table (run, N, ACR, certified accuracy % per radius) on stdout."""
    header = ["run", "N", "ACR", *[f"r={r:g}" for r in radii]]
    rows = [[run.name, str(len(run.radius)), f"{run.average_certified_radius:.3f}",
             *[f"{100 * a:.1f}" for a in run.certified_accuracy(radii)]] for run in runs]
    print("certified accuracy (%) at l2 radius r")
    print(_table(rows, header))


def _write_markdown(path, runs, radii) -> None:
    from smoothsk.io.files import atomic_write
    from smoothsk.io.report import markdown_table

    table = markdown_table(runs, radii).encode()
    atomic_write(Path(path), lambda stream: stream.write(table))


def run_report(args) -> int:
    from smoothsk.io.report import parse_radii, plot_certified_accuracy, read_certification_tsv

    try:
        radii = parse_radii(args.radii)
        # Labels are text: a "$" would start matplotlib's math mode (and fail to parse).
        names = ([name.replace("$", r"\$") for name in args.labels.split(",")]
                 if args.labels else [None] * len(args.runs))
        if len(names) != len(args.runs):
            raise ValueError(f"--labels has {len(names)} names for {len(args.runs)} runs.")
        runs = [read_certification_tsv(path, name) for path, name in zip(args.runs, names)]
    except (FileNotFoundError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    _print_runs(runs, radii)
    if args.markdown:
        _check_writable(args.markdown)
        _write_markdown(args.markdown, runs, radii)
        print(f"Markdown table: {args.markdown}")
    if args.plot:
        _check_writable(args.plot)
        plot_certified_accuracy(runs, args.plot, max_radius=args.max_radius, title=args.title)
        print(f"plot: {args.plot}")
    return 0


# --------------------------------------------------------------------------- demo
def run_demo(args) -> int:
    """Train a Gaussian-augmentation smoothed classifier on digits, certify, report, plot."""
    import torch

    from smoothsk import GaussianAugClassifier
    from smoothsk.datasets import load_dataset
    from smoothsk.io.report import plot_certified_accuracy, read_certification_tsv
    from smoothsk.io.runs import certify_to_tsv, save_model

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    X_train, y_train = load_dataset("digits", split="train", flat=True)
    X_test, y_test = load_dataset("digits", split="test", flat=True)
    clf = GaussianAugClassifier(
        sigma=args.sigma, max_epochs=args.epochs, lr=0.05,
        optimizer=torch.optim.SGD, optimizer__momentum=0.9,
        batch_size=64, random_state=args.seed,
    )
    bar = _progress(args.epochs, "train gaussian", args.quiet, "epoch")
    _with_epoch_progress(clf, bar)
    start = time.perf_counter()
    clf.fit(X_train, y_train)
    bar.close()
    _without_progress(clf)
    trained = time.perf_counter()
    save_model(clf, out / "model.smoothsk")
    tsv = out / f"certify-sigma{args.sigma:g}.tsv"
    for stale in (tsv, tsv.with_name(tsv.name + ".run.json")):
        stale.unlink(missing_ok=True)  # the demo retrains, so it always starts a fresh run
    bar = _progress(len(X_test), "certify", args.quiet, "input")
    certify_to_tsv(clf, X_test, y_test, np.arange(len(X_test)), tsv,
                   run_info={"dataset": "digits", "split": "test"}, n0=100, n=args.n,
                   alpha=0.001, batch_size=1000, random_state=args.seed,
                   progress=lambda done: bar.update(done - bar.n))
    bar.close()
    done = time.perf_counter()
    run = read_certification_tsv(tsv, f"Gaussian σ={args.sigma:g}")
    radii = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    print(f"\nGaussianAugClassifier(sigma={args.sigma}) on digits: trained on {len(X_train)} "
          f"images in {trained - start:.1f} s, certified {len(X_test)} test images "
          f"(n0=100, n={args.n}, alpha=0.001) in {done - trained:.1f} s.")
    print(f"clean accuracy of the smoothed classifier: {clf.score(X_test, y_test):.3f}\n")
    _print_runs([run], radii)
    _write_markdown(out / "table.md", [run], radii)
    plot = plot_certified_accuracy([run], out / "certified_accuracy.png",
                                   title="digits, Gaussian augmentation")
    print(f"\ncertification TSV: {tsv}\nplot: {plot}")
    return 0


# --------------------------------------------------------------------------- parser
def _add_precision(parser, default_text: str):
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None,
                        help="arithmetic of the network's passes; noise stays fp32 "
                             f"(docs/certification.md); default: {default_text}")


def _add_compile(parser, scope: str, modes: bool):
    if not modes:
        parser.add_argument("--compile", action="store_true",
                            help=f"compile the network with torch.compile ({scope}): faster "
                                 "on a GPU, slower than bf16 with --channels-last on a CPU "
                                 "(docs/benchmarks.md)")
        return
    parser.add_argument("--compile", nargs="?", const="default", default=None,
                        choices=["default", "max-autotune"],
                        help=f"compile the network with torch.compile ({scope}); "
                             "max-autotune also times kernels and freezes the weights into "
                             "the graph (a minute to compile; on a GPU 1.4x the default: "
                             "docs/benchmarks.md)")


def _add_common(parser, *, batch_default: int):
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where the network runs (default: cpu)")
    parser.add_argument("--seed", type=_non_negative_int, default=0, help="random_state")
    parser.add_argument("--batch-size", type=_positive_int, default=batch_default,
                        help=f"default {batch_default}" if batch_default else
                        "default: the estimators' 64, or the recipe's")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_trust_pickle(parser):
    parser.add_argument("--trust-pickle", action="store_true",
                        help="also read pickle-based model files (smoothsk 0.1); loading a "
                             "pickle can run arbitrary code, so only for files you trust")


def _add_data(parser):
    from smoothsk.datasets import DATASETS

    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--root", default=None,
                        help="local data directory (required for mnist, cifar10, imagenet)")


class _DefaultsHelp(argparse.HelpFormatter):
    """``--help`` shows each option's default (unless it is None or already said)."""

    def _get_help_string(self, action):
        text = action.help or ""
        hidden = action.default is None or action.default is False \
            or action.default == argparse.SUPPRESS
        if not hidden and "default" not in text and action.option_strings:
            text += f" (default: {action.default})"
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smoothsk", description="Randomized-smoothing training, certification and reports."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_parser = sub.add_parser
    sub.add_parser = lambda *a, **k: _add_parser(*a, formatter_class=_DefaultsHelp, **k)

    train = sub.add_parser("train", help="train a smoothed classifier and save it")
    _add_data(train)
    train.add_argument("--method", required=True, choices=METHODS)
    train.add_argument("--model", default="auto", choices=MODELS,
                       help="auto: MLP for digits, LeNet for (Fashion-)MNIST, ResNet-110 for "
                            "CIFAR-10, ResNet-50 for ImageNet")
    train.add_argument("--sigma", type=_positive_float, default=None,
                       help="noise level (default 0.25; CRT: the teacher's)")
    train.add_argument("--recipe", action="store_true",
                       help="the published settings for --method, --dataset's family and "
                            "--sigma (docs/recipes.md); other options given override them, "
                            "--epochs shortens the schedule keeping its shape")
    train.add_argument("--optimizer", choices=["adam", "sgd"], default=None,
                       help="default: the estimators' (Adam), or the recipe's (SGD)")
    train.add_argument("--epochs", type=_positive_int, default=None,
                       help="default: the estimators' 20, or the recipe's")
    train.add_argument("--lr", type=_positive_float, default=None,
                       help="default: the estimators' 1e-3 (Adam), or the recipe's")
    train.add_argument("--lr-step", type=_positive_int, default=None, metavar="EPOCHS",
                       help="multiply the learning rate by --lr-gamma every EPOCHS epochs "
                            "(replaces the cosine schedule)")
    train.add_argument("--lr-gamma", type=_positive_float, default=0.1)
    train.add_argument("--lr-schedule", choices=["cosine", "constant"], default=None,
                       help="without --lr-step or --recipe: the estimators' cosine annealing "
                            "to 0 over the epochs (default), or a constant rate")
    train.add_argument("--momentum", type=float, default=None,
                       help="SGD momentum (with --optimizer sgd)")
    train.add_argument("--weight-decay", type=float, default=None,
                       help="default: none, or the recipe's 1e-4")
    train.add_argument("--max-train", type=_positive_int, default=None,
                       help="train on the first N training inputs")
    train.add_argument("--teacher", default=None, help="CRT: the teacher's model file")
    train.add_argument("--classifier", default=None,
                       help="denoised: the trained classifier (a smoothsk model file, or with "
                            "--trust-pickle a joblib file of any fitted scikit-learn "
                            "classifier)")
    train.add_argument("--target-model", default=None,
                       help="CAT-RS: a trained Gaussian model file whose smoothed prediction "
                            "is the KL target (default: train one at --target-sigma 0.25)")
    _add_trust_pickle(train)
    for name in _METHOD_OPTIONS:
        kind = int if name in ("num_noise", "num_steps", "mix_step", "warmup",
                               "target_draws", "mse_epochs") else float
        kind = str if name == "objective" else kind
        train.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                           help=argparse.SUPPRESS)
    train.add_argument("--set", type=_assignment, action="append", metavar="NAME=VALUE",
                       help="any other estimator parameter, e.g. --set module__hidden_units="
                            "(512,512); method options: --num-noise --num-steps --step-size "
                            "--eta --mix-step --attack-radius --epsilon --warmup "
                            "--transfer-weight --consistency-weight --entropy-weight "
                            "--stability-weight --robustness-weight --margin "
                            "--inverse-temperature --kl-weight --target-draws "
                            "--target-sigma --objective --mse-epochs")
    train.add_argument("--out", required=True,
                       help="model file to write (safe format: weights and a JSON document)")
    _add_precision(train, "fp32")
    train.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                       default=None,
                       help="channels-last memory format (kept in the model); default: "
                            "on for convolutional networks on a CPU or at reduced "
                            "precision, where it is faster (docs/benchmarks.md)")
    _add_compile(train, "kept in the model", modes=False)
    _add_common(train, batch_default=None)
    train.set_defaults(func=run_train)

    certify = sub.add_parser("certify", help="certify a data set split into a resumable TSV")
    certify.add_argument("model_file")
    _add_trust_pickle(certify)
    _add_data(certify)
    certify.add_argument("--split", default="test", choices=["train", "test"],
                         help="which split to certify")
    certify.add_argument("--skip", type=_positive_int, default=1, help="every SKIP-th input")
    certify.add_argument("--max", type=_positive_int, default=None,
                         help="certify at most MAX inputs (of those --skip selects; Cohen's "
                              "certify.py counts MAX in data-set indices instead, so its "
                              "--skip 20 --max 10000 is --skip 20 --max 500 here)")
    certify.add_argument("--sigma", type=_positive_float, default=None,
                         help="for a model file holding a plain fitted classifier (a joblib "
                              "file of a scikit-learn classifier, with --trust-pickle): the "
                              "noise level of its smoothed classifier; smoothsk models keep "
                              "their own")
    certify.add_argument("--n0", type=_positive_int, default=100, help="selection draws")
    certify.add_argument("--n", type=_positive_int, default=100_000, help="estimation draws")
    certify.add_argument("--alpha", type=_probability, default=0.001,
                         help="failure probability per input")
    certify.add_argument("--out", required=True, help="TSV to write, or to continue")
    certify.add_argument("--jobs", type=int, default=None,
                         help="worker processes (joblib; -1 = all cores, or all workers of "
                              "the --scheduler cluster); results do not depend on it")
    certify.add_argument("--scheduler", default=None, metavar="ADDRESS",
                         help="run on a running Dask scheduler, e.g. tcp://10.0.0.5:8786")
    _add_precision(certify, "the model's (a resumed run refuses another)")
    certify.add_argument("--shared-noise", action="store_true",
                         help="every input uses the same noise draws: the same per-input "
                              "guarantee, much faster for small tabular models (recorded; a "
                              "resumed run refuses a change)")
    _add_compile(certify, "for this run", modes=True)
    _add_common(certify, batch_default=1000)
    certify.set_defaults(func=run_certify)

    report = sub.add_parser("report", help="tables and curves from certification TSV files")
    report.add_argument("runs", nargs="+", help="TSV files (smoothsk's or the authors')")
    report.add_argument("--radii", default="0:2:0.25", help="start:stop:step or a comma list")
    report.add_argument("--labels", default=None, help="comma-separated names of the runs")
    report.add_argument("--markdown", default=None, help="write the table here")
    report.add_argument("--plot", default=None, help="write certified-accuracy curves (PNG)")
    report.add_argument("--max-radius", type=_positive_float, default=None)
    report.add_argument("--title", default=None)
    report.set_defaults(func=run_report)

    demo = sub.add_parser("demo", help="train and certify on scikit-learn's digits (CPU)")
    demo.add_argument("--sigma", type=_positive_float, default=0.25)
    demo.add_argument("--epochs", type=_positive_int, default=40)
    demo.add_argument("--n", type=_positive_int, default=10_000, help="estimation draws")
    demo.add_argument("--seed", type=_non_negative_int, default=0)
    demo.add_argument("--out-dir", default="demo-output")
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=run_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (CommandError, FloatingPointError, ValueError) as exc:
        print(f"smoothsk {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permissions, a file vanishing under us
        print(f"smoothsk {args.command}: error: {exc.strerror or exc} "
              f"({exc.filename or 'output'}); nothing was left half-written.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        what = ("the last complete epoch is kept in OUT.ckpt (OUT is not written); run the "
                "same command again to continue" if args.command == "train" else
                "completed rows are kept, run the same command again to continue")
        print(f"smoothsk {args.command}: interrupted; {what}.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
