"""``smoothsk train --method ensemble --members A,B,...``: one model file from trained ones.

The members are smoothsk model files trained at one σ on ``--dataset``; the ensemble
(:class:`~smoothsk.SmoothedEnsembleClassifier`, members used as they are) is checked
against the data set and saved in the safe format with its members nested.  Nothing is
trained, so the training options are refused rather than ignored.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from smoothsk.cli.options import CommandError, load_data

# Options that train a network: an ensemble of trained members has nothing to train.
_TRAINING_OPTIONS = ("recipe", "optimizer", "epochs", "lr", "lr_step", "lr_schedule",
                     "momentum", "weight_decay", "max_train", "teacher", "classifier",
                     "target_model", "set", "sigma", "compile", "channels_last")


def member_names(paths: list[str]) -> list[str]:
    """Members named after their files (``runs/gauss-0.smoothsk`` → ``gauss-0``), made
    distinct and free of ``__`` (which scikit-learn reads as a nested parameter).

    Parameters
    ----------
    paths : list of str
        The members' model files, in order.
    """
    names: list[str] = []
    for path in paths:
        stem = re.sub(r"_{2,}", "_", Path(path).stem) or "member"
        name, copy = stem, 1
        while name in names:
            copy += 1
            name = f"{stem}-{copy}"
        names.append(name)
    return names


def assemble(args, options: dict) -> int:
    """Load ``--members``, build the ensemble, check it on ``--dataset`` and save it.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed ``smoothsk train`` arguments.
    options : dict
        The ensemble's own options given on the command line (``voting``, ``consensus``),
        already checked to be options of :class:`~smoothsk.SmoothedEnsembleClassifier`.
    """
    from smoothsk.io.model_file import load_model, save_model
    from smoothsk.io.runs import RunLockedError, exclusive_run
    from smoothsk.methods.registry import ASSEMBLED

    given = [name for name in _TRAINING_OPTIONS if getattr(args, name, None) not in
             (None, False, [])]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise CommandError(f"{flags} train a network; --method ensemble trains nothing (its "
                           "members are trained model files, trained at one sigma). Drop "
                           f"{flags}, or train the members with them first.")
    paths = [path for path in (args.members or "").split(",") if path]
    if len(paths) < 2:
        raise CommandError("--method ensemble needs --members A.smoothsk,B.smoothsk,... (at "
                           "least two trained model files, comma-separated).")
    members = []
    for path in paths:
        try:
            members.append(load_model(path, trusted=args.trust_pickle))
        except (FileNotFoundError, ValueError) as exc:
            raise CommandError(f"cannot use --members {path}: {exc}") from exc
    flat = len(members[0].input_shape_) == 1
    X, y = load_data(args, "train", flat=flat)
    ensemble = ASSEMBLED["ensemble"](list(zip(member_names(paths), members)), prefit=True,
                                     device=args.device, random_state=args.seed, **options)
    if args.batch_size is not None:
        ensemble.set_params(batch_size=args.batch_size)
    start = time.perf_counter()
    try:
        with exclusive_run(args.out):
            ensemble.fit(X, y)
            ensemble.training_info_ = {
                "dataset": args.dataset, "method": "ensemble", "members": paths,
                "voting": ensemble.voting, "consensus": ensemble.consensus,
                "seconds": time.perf_counter() - start}
            save_model(ensemble, args.out)
    except (ValueError, RunLockedError) as exc:
        raise CommandError(f"cannot assemble --members into an ensemble: {exc}") from exc
    consensus = f", {ensemble.consensus}-consensus" if ensemble.consensus else ""
    print(f"assembled an ensemble of {len(members)} members (sigma="
          f"{ensemble.noise_level:g}, {ensemble.voting} voting{consensus}) checked on "
          f"{args.dataset}; saved {args.out}")
    return 0
