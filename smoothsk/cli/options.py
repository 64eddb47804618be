"""What the commands share: the user-error type, argparse value types, option groups,
and the checks that run before any work (threads, device, output path, scheduler)."""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
import tempfile
from pathlib import Path

from smoothsk.validation import NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, PROBABILITY

__all__ = ["CommandError", "DefaultsHelpFormatter"]


class CommandError(Exception):
    """A user error: printed without a traceback, exit status 2."""


# --------------------------------------------------------------------------- value types
def _constrained(convert, constraints: list, what: str):
    """An argparse type: the text converted, then checked against the library's own
    constraint (:mod:`smoothsk.validation`), so a value refused here is refused with the
    words the estimators and functions use for it."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}; got {text!r}") from None
        if not any(constraint.is_satisfied_by(value) for constraint in constraints):
            raise argparse.ArgumentTypeError(f"must be {what}; got {text}")
        return value

    parse.__name__ = convert.__name__
    return parse


positive_int = _constrained(int, POSITIVE_INT, str(POSITIVE_INT[0]))
non_negative_int = _constrained(int, NON_NEGATIVE_INT, str(NON_NEGATIVE_INT[0]))
positive_float = _constrained(float, POSITIVE, str(POSITIVE[0]))
probability = _constrained(float, PROBABILITY, str(PROBABILITY[0]))


def assignment(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` with VALUE a Python literal, or else the text itself."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected name=value; got {text!r}")
    name, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return name.strip(), value


def argparse_type(parse):
    """A parser that raises ``ValueError`` as an argparse type (its message kept)."""
    def checked(text: str):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    checked.__name__ = parse.__name__
    return checked


# --------------------------------------------------------------------------- option groups
def add_precision(parser, default_text: str) -> None:
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16", "auto"], default=None,
                        help="arithmetic of the network's passes; noise stays fp32 "
                             f"(docs/certification.md); default: {default_text}")


def add_compile(parser, scope: str, modes: bool) -> None:
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
                             "the graph (a minute to compile; on a GPU faster than the "
                             "default: docs/benchmarks.md)")


def add_common(parser, *, batch_default: int | None) -> None:
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where the network runs (default: cpu)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random_state")
    parser.add_argument("--batch-size", type=positive_int, default=batch_default,
                        help=f"default {batch_default}" if batch_default else
                        "default: the estimators' 64, or the recipe's")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_trust_pickle(parser) -> None:
    parser.add_argument("--trust-pickle", action="store_true",
                        help="also read pickle-based model files (smoothsk 0.1); loading a "
                             "pickle can run arbitrary code, so only for files you trust")


def add_data(parser) -> None:
    from smoothsk.datasets import DATASETS

    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--root", default=None,
                        help="local data directory (required for mnist, cifar10, imagenet)")


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``--help`` shows each option's default (unless it is None or already said)."""

    def _get_help_string(self, action):
        text = action.help or ""
        hidden = action.default is None or action.default is False \
            or action.default == argparse.SUPPRESS
        if not hidden and "default" not in text and action.option_strings:
            text += f" (default: {action.default})"
        return text


# --------------------------------------------------------------------------- checks
def set_threads(args) -> None:
    import torch

    threads = getattr(args, "threads", None)
    if threads:
        limit = 4 * (os.cpu_count() or 1)
        if threads > limit:
            raise CommandError(f"--threads {threads} is more than 4× this machine's "
                               f"{os.cpu_count()} cores; pass at most {limit}.")
        torch.set_num_threads(threads)


def check_device(args) -> None:
    import torch

    if getattr(args, "device", "cpu") == "cuda" and not torch.cuda.is_available():
        raise CommandError("--device cuda, but torch sees no CUDA GPU here (or this torch "
                           "build has no CUDA); use --device cpu.")


def check_writable(out) -> Path:
    """Fail before any work when ``out`` cannot be written (a directory, no permission)."""
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


def check_scheduler(address) -> None:
    if address is not None and not re.fullmatch(r"(tcp|tls|inproc|ucx)://[^\s/]+(:\d+)?",
                                                address):
        raise CommandError(f"--scheduler {address!r} is not a Dask scheduler address; use "
                           "e.g. tcp://10.0.0.5:8786.")


# --------------------------------------------------------------------------- output, data
def progress(total: int, description: str, quiet: bool, unit: str):
    """A tqdm bar on a terminal, a line every 30 s in a log (stderr redirected), or
    nothing with ``--quiet``."""
    from smoothsk.progress import progress_bar

    return progress_bar(total, description, unit=unit, enabled=not quiet, file=sys.stderr)


def text_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row):
        return "  ".join(str(c).rjust(w) for c, w in zip(row, widths))

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def network_for(dataset: str, model: str = "auto"):
    """:func:`smoothsk.models.network_for_dataset`, its refusals as user errors."""
    from smoothsk.models import network_for_dataset

    try:
        return network_for_dataset(dataset, model)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc


def load_data(args, split: str, flat: bool | None = None):
    """``(X, y)`` of ``--dataset``; flat vectors for an MLP (or when ``flat`` says so)."""
    from smoothsk.datasets import load_dataset

    if flat is None:
        model = getattr(args, "model", "auto")
        flat = (network_for(args.dataset)[0] if model == "auto" else model) == "mlp"
    try:
        X, y = load_dataset(args.dataset, split=split, root=args.root, flat=flat)
    except (FileNotFoundError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    return X, y
