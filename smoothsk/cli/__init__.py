"""The ``smoothsk`` command line: ``train``, ``certify``, ``report`` and ``demo``.

One module per command, each with ``add_parser(subparsers)`` and ``run(args)``;
:mod:`~smoothsk.cli.options` holds what they share.  The commands hold no library logic:
networks, data, progress and model files come from the library, and ``train`` derives
each method's options from :data:`smoothsk.methods.registry.METHODS`.  Errors are
reported as ``smoothsk <command>: error: ...`` with exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from smoothsk.cli import certify, demo, report, train
from smoothsk.cli.options import CommandError, DefaultsHelpFormatter
from smoothsk.cli.train import build_estimator

__all__ = ["CommandError", "build_estimator", "build_parser", "main"]


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, as the commands' own are: the
    mistake and where help is, without argparse's usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(method: str | None = None) -> argparse.ArgumentParser:
    """The ``smoothsk`` parser; ``method`` shows that method's options in
    ``smoothsk train --help``."""
    parser = OneLineParser(
        prog="smoothsk", description="Randomized-smoothing training, certification and reports."
    )
    from smoothsk import __version__

    parser.add_argument("--version", action="version", version=f"smoothsk {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    add_parser = sub.add_parser
    sub.add_parser = lambda *a, **k: add_parser(*a, formatter_class=DefaultsHelpFormatter, **k)
    train.add_parser(sub, method)
    certify.add_parser(sub)
    report.add_parser(sub)
    demo.add_parser(sub)
    return parser


# What Ctrl-C leaves behind, per command.
INTERRUPTED = {
    "train": "the last complete epoch is kept in OUT.ckpt (OUT is not written); run the same "
             "command again to continue",
    "certify": "completed rows are kept, run the same command again to continue",
    "report": "nothing was written (tables and plots are written whole or not at all)",
    "demo": "run smoothsk demo again (it starts afresh)",
}


def _method_named(argv: list[str]) -> str | None:
    """What ``--method`` says in ``argv`` (before parsing, for ``--help``)."""
    for i, word in enumerate(argv):
        if word == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith("--method="):
            return word.split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> int:
    """Run ``smoothsk`` with ``argv`` (default: the process's arguments); the exit status.

    Parameters
    ----------
    argv : list of str or None
        The arguments after ``smoothsk``.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(_method_named(argv)).parse_args(argv)
    except KeyboardInterrupt:
        print("smoothsk: interrupted while starting; nothing was done.", file=sys.stderr)
        return 130
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
        print(f"smoothsk {args.command}: interrupted; {INTERRUPTED[args.command]}.",
              file=sys.stderr)
        return 130
