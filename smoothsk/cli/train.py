"""``smoothsk train``: fit a smoothed classifier on a data set and save it.

The methods and their options come from :data:`smoothsk.methods.registry.METHODS`:
``--method`` lists the registry, and each method's hyperparameters are options
(``--num-noise``...) typed from the estimator's ``_parameter_constraints``;
``smoothsk train --method catrs --help`` lists CAT-RS's own.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from smoothsk.cli.options import (
    CommandError,
    add_common,
    add_compile,
    add_data,
    add_precision,
    add_trust_pickle,
    argparse_type,
    assignment,
    check_device,
    check_writable,
    load_data,
    network_for,
    positive_float,
    positive_int,
    progress,
    set_threads,
)
from smoothsk.methods.registry import ASSEMBLED, METHODS, method_options

# ``--method`` names: the training methods, then the models assembled from trained ones.
_COMMAND_METHODS = {**METHODS, **ASSEMBLED}

# Options a recipe also sets; None on the command line means "not given": then the
# recipe's value, or the estimator's default.
_TRAIN_OPTIONS = ("epochs", "lr", "batch_size", "momentum", "weight_decay")
# Side models read from files, by the method that reads them: option → (method, parameter).
_SIDE_MODEL_OPTIONS = {"teacher": ("crt", "teacher"), "classifier": ("denoised", "classifier"),
                       "target_model": ("catrs", "target_model")}


def _all_method_options() -> dict:
    """Every method's options by parameter name (a name several methods share, such as
    ``num_noise``, has one type in all of them)."""
    options = {}
    for cls in _COMMAND_METHODS.values():
        options.update(method_options(cls))
    return options


def given_method_options(args) -> dict:
    """The method options given on the command line, by parameter name; one that is not an
    option of ``--method`` is refused rather than ignored (``--eta`` for ``gaussian``)."""
    own = method_options(_COMMAND_METHODS[args.method])
    given = {}
    for name in _all_method_options():
        value = getattr(args, name, None)
        if value is None:
            continue
        if name not in own:
            takes = (f"its options: {', '.join('--' + n.replace('_', '-') for n in own)}"
                     if own else "it has no options of its own")
            raise CommandError(f"--{name.replace('_', '-')} is not an option of --method "
                               f"{args.method} ({takes}; see --method {args.method} --help).")
        given[name] = value
    return given


def add_parser(subparsers, method: str | None = None) -> None:
    """Add ``train``; ``method`` (what ``--method`` says on the command line) shows that
    method's own options in ``--help``."""
    train = subparsers.add_parser("train", help="train a smoothed classifier and save it")
    add_data(train)
    train.add_argument("--method", required=True, choices=list(_COMMAND_METHODS),
                       help="the training method (ensemble: assemble --members); --method "
                            "NAME --help lists its options")
    train.add_argument("--model", default="auto", choices=_network_names(),
                       help="auto: MLP for digits, LeNet for (Fashion-)MNIST, ResNet-110 for "
                            "CIFAR-10, ResNet-50 for ImageNet")
    train.add_argument("--sigma", type=positive_float, default=None,
                       help="noise level (default 0.25; CRT: the teacher's)")
    train.add_argument("--recipe", action="store_true",
                       help="the published settings for --method, --dataset's family and "
                            "--sigma (docs/recipes.md); other options given override them, "
                            "--epochs shortens the schedule keeping its shape")
    train.add_argument("--optimizer", choices=["adam", "sgd"], default=None,
                       help="default: the estimators' (Adam), or the recipe's (SGD)")
    train.add_argument("--epochs", type=positive_int, default=None,
                       help="default: the estimators' 20, or the recipe's")
    train.add_argument("--lr", type=positive_float, default=None,
                       help="default: the estimators' 1e-3 (Adam), or the recipe's")
    train.add_argument("--lr-step", type=positive_int, default=None, metavar="EPOCHS",
                       help="multiply the learning rate by --lr-gamma every EPOCHS epochs "
                            "(replaces the cosine schedule)")
    train.add_argument("--lr-gamma", type=positive_float, default=0.1)
    train.add_argument("--lr-schedule", choices=["cosine", "constant"], default=None,
                       help="without --lr-step or --recipe: the estimators' cosine annealing "
                            "to 0 over the epochs (default), or a constant rate")
    train.add_argument("--momentum", type=float, default=None,
                       help="SGD momentum (with --optimizer sgd)")
    train.add_argument("--weight-decay", type=float, default=None,
                       help="default: none, or the recipe's 1e-4")
    train.add_argument("--max-train", type=positive_int, default=None,
                       help="train on the first N training inputs")
    train.add_argument("--teacher", default=None, help="CRT: the teacher's model file")
    train.add_argument("--classifier", default=None,
                       help="denoised: the trained classifier (a smoothsk model file, or with "
                            "--trust-pickle a joblib file of any fitted scikit-learn "
                            "classifier)")
    train.add_argument("--target-model", default=None,
                       help="CAT-RS: a trained Gaussian model file whose smoothed prediction "
                            "is the KL target (default: train one at --target-sigma 0.25)")
    train.add_argument("--members", default=None, metavar="A,B,...",
                       help="ensemble: the members' model files, comma-separated (trained "
                            "at one sigma on --dataset); the ensemble averages their votes")
    add_trust_pickle(train)
    _add_method_options(train, method)
    train.add_argument("--set", type=assignment, action="append", metavar="NAME=VALUE",
                       help="any other estimator parameter, e.g. --set module__hidden_units="
                            "(512,512); each method's own options: --method NAME --help")
    train.add_argument("--out", required=True,
                       help="model file to write (safe format: weights and a JSON document)")
    add_precision(train, "fp32")
    train.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                       default=None,
                       help="channels-last memory format (kept in the model); default: "
                            "on for convolutional networks on a CPU or at reduced "
                            "precision, where it is faster (docs/benchmarks.md)")
    add_compile(train, "kept in the model", modes=False)
    add_common(train, batch_default=None)
    train.set_defaults(func=run)


def _network_names():
    from smoothsk.models import NETWORK_NAMES

    return NETWORK_NAMES


def _add_method_options(parser, method: str | None) -> None:
    """One option per method hyperparameter; those of ``method`` shown in ``--help``."""
    shown = method_options(_COMMAND_METHODS[method]) if method in _COMMAND_METHODS else {}
    group = parser.add_argument_group(f"{_COMMAND_METHODS[method].display_name} options") \
        if shown else parser
    for name, option in _all_method_options().items():
        target = group if name in shown else parser
        described = shown.get(name, option)
        target.add_argument("--" + name.replace("_", "-"), dest=name, default=None,
                            type=argparse_type(option.parse), metavar=option.metavar,
                            help=f"{described.help} (default: {described.default})"
                            if name in shown else argparse.SUPPRESS)


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

    from smoothsk.datasets import NUM_CLASSES

    cls = METHODS[args.method]
    _, module, module_params = network_for(args.dataset, args.model)
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
        params["classes"] = list(range(NUM_CLASSES[args.dataset]))
    if args.sigma is not None:
        params["sigma"] = args.sigma
    params.update(_side_models(args, module_params))
    if args.method == "denoised":
        params.update(module=None)
        for name in module_params:
            params.pop(name, None)
    params.update(given_method_options(args))
    params.update(dict(args.set or []))
    defaults = cls().get_params(deep=False)
    for name, value in (args.set or []):
        # a number given as text (--set lr=abc) would fail deep inside training
        default = defaults.get(name)
        if isinstance(default, (int, float)) and not isinstance(default, bool) and \
                (isinstance(value, (str, bool)) or not isinstance(value, (int, float))):
            raise CommandError(f"--set {name}={value!r}: {name} takes a number "
                               f"(default {default!r}).")
    try:
        clf = cls(**params)
    except TypeError as exc:
        raise CommandError(f"{args.method} does not take that option ({exc}).") from exc
    return clf


def _side_models(args, module_params: dict) -> dict:
    """The models ``--teacher``, ``--classifier`` and ``--target-model`` name, loaded, for
    the method that reads each; refused for any other method."""
    from smoothsk.io.model_file import load_model

    params = {}
    for option, (method, param) in _SIDE_MODEL_OPTIONS.items():
        flag = "--" + option.replace("_", "-")
        if getattr(args, option) is None:
            continue
        if args.method != method:
            raise CommandError(f"{flag} only applies to --method {method}.")
        if option == "classifier":
            params[param] = classifier_arg(args)
            continue
        try:
            params[param] = load_model(getattr(args, option), trusted=args.trust_pickle)
        except (FileNotFoundError, ValueError) as exc:
            raise CommandError(f"cannot use {flag}: {exc}") from exc
    if args.method == "crt" and "teacher" not in params:
        raise CommandError("--method crt needs --teacher MODEL (a trained smoothsk model).")
    if args.method == "denoised":
        if "classifier" not in params:
            raise CommandError("--method denoised needs --classifier MODEL (the trained "
                               "classifier to put the denoiser in front of).")
        if args.model != "auto":
            raise CommandError(
                "--model names a classifier's network; --method denoised trains a denoiser "
                "(DnCNN for images, an MLP for flat inputs): size it with --set "
                "module__depth=17 --set module__width=64.")
    return params


def classifier_arg(args):
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
    inner = unwrap_frozen(classifier_arg(args))
    if isinstance(inner, SmoothedClassifier):
        return len(inner.input_shape_) == 1
    return getattr(inner, "n_features_in_", None) is not None


def with_epoch_progress(clf, bar, lr_step=None):
    """Add the per-epoch progress callback (and ``--lr-step``'s scheduler) to ``clf``;
    :func:`without_progress` removes the callback."""
    from skorch.callbacks import LRScheduler

    from smoothsk.progress import EpochProgress

    callbacks = list(clf.callbacks or []) + [("progress", EpochProgress(bar))]
    if lr_step:
        step, gamma = lr_step
        callbacks.append(("lr_scheduler", LRScheduler(policy="StepLR", step_size=step,
                                                      gamma=gamma)))
    return clf.set_params(callbacks=callbacks)


def without_progress(clf):
    # The callback holds a terminal bar: drop it so the model pickles cleanly.
    clf.callbacks = [(name, cb) for name, cb in clf.callbacks or [] if name != "progress"] or None
    clf.callbacks_ = [(name, cb) for name, cb in clf.callbacks_ if name != "progress"]
    return clf


def _save_trained(clf, args) -> str:
    """Save in the safe format; a classifier only pickle can store (one the user loaded
    from a trusted pickle) makes it a joblib file.  Returns a note for the summary."""
    import joblib

    from smoothsk.io.files import atomic_write
    from smoothsk.io.model_file import save_model

    try:
        save_model(clf, args.out)
        return ""
    except ValueError:
        if not (args.method == "denoised" and args.trust_pickle):
            raise
    atomic_write(Path(args.out), lambda stream: joblib.dump(clf, stream))
    return (" as a joblib pickle (its scikit-learn classifier cannot be stored otherwise; "
            "certify it with --trust-pickle)")


def check_pickle_suffix(args) -> None:
    """A model that can only be saved as a pickle (a denoiser in front of a classifier
    read from a trusted pickle) must not go to a ``.smoothsk`` name: that suffix promises
    the safe format, which loads without running code."""
    from smoothsk.io.model_file import is_model_file

    classifier = getattr(args, "classifier", None)
    if not (args.method == "denoised" and args.trust_pickle and classifier
            and Path(classifier).exists() and not is_model_file(classifier)):
        return
    if Path(args.out).suffix.lower() == ".smoothsk":
        raise CommandError(
            f"--classifier {classifier} is a pickle, so the trained model can only be saved "
            f"as a joblib pickle, and --out {args.out} names the safe format (.smoothsk). "
            "Choose another suffix, e.g. --out "
            f"{Path(args.out).with_suffix('.joblib')}.")


def check_replaceable(out: Path, trust_pickle: bool) -> None:
    """Refuse to overwrite an existing ``--out`` that is not a model file: it is not ours."""
    from smoothsk.io.model_file import is_model_file

    if not out.exists() or is_model_file(out):
        return
    with open(out, "rb") as stream:
        pickled = stream.read(1) == b"\x80"  # a joblib model saved with --trust-pickle
    if pickled and trust_pickle:
        return
    raise CommandError(f"--out {out} exists and is not a smoothsk model file; training "
                       "would overwrite it. Choose another --out, or remove the file first.")


def run(args) -> int:
    from smoothsk.certification.inputs import take_rows
    from smoothsk.cli.ensemble import assemble
    from smoothsk.io.checkpoint import TrainingCheckpoint, completed_epochs
    from smoothsk.io.runs import RunLockedError, exclusive_run

    set_threads(args)
    check_device(args)
    check_writable(args.out)
    check_replaceable(Path(args.out), args.trust_pickle)
    if args.method in ASSEMBLED:
        return assemble(args, given_method_options(args))
    if args.members is not None:
        raise CommandError("--members only applies to --method ensemble.")
    check_pickle_suffix(args)
    flat = _classifier_takes_flat_inputs(args)
    X, y = load_data(args, "train", flat=flat)
    if args.max_train is not None:
        X = take_rows(X, slice(args.max_train))
        y = y[: args.max_train] if y is not None else None
    clf = build_estimator(args)
    epochs = clf.max_epochs
    # Every epoch is checkpointed next to --out; the same command continues from it.
    checkpoint = Path(str(args.out) + ".ckpt")
    clf.set_params(callbacks=list(clf.callbacks or [])
                   + [("checkpoint", TrainingCheckpoint(checkpoint))])
    bar = progress(epochs, f"train {args.method}", args.quiet, "epoch")
    with_epoch_progress(clf, bar, (args.lr_step, args.lr_gamma) if args.lr_step else None)
    start = time.perf_counter()
    try:
        with exclusive_run(args.out):
            clf.fit(X, y)
            if completed_epochs(clf.history) < epochs:  # skorch ends fit quietly on Ctrl-C
                raise KeyboardInterrupt
            seconds = time.perf_counter() - start
            without_progress(clf)
            clf.training_info_ = {"dataset": args.dataset, "method": args.method,
                                  "model": "mlp" if flat else
                                  network_for(args.dataset, args.model)[0],
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
    print(f"trained {type(clf).__name__} (sigma={clf.noise_level:g}) on {args.dataset} for "
          f"{epochs} epoch{'' if epochs == 1 else 's'} in {seconds:.1f} s (final loss "
          f"{loss:.4f}); saved {args.out}{note}")
    return 0
