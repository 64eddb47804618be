"""The ``smoothsk`` console script: the command line, started so that Ctrl-C is one line.

Importing :mod:`smoothsk` loads torch, scikit-learn and skorch, which takes seconds; a
Ctrl-C in that time would print a ``KeyboardInterrupt`` traceback from inside an import.
This package imports nothing of its own, so the script can catch it.
"""

import sys

__all__ = ["main"]


def main() -> int:
    """Run :func:`smoothsk.cli.main`; a Ctrl-C while it starts exits 130 in one line."""
    try:
        from smoothsk.cli import main as command_line
    except KeyboardInterrupt:
        print("smoothsk: interrupted while starting; nothing was done.", file=sys.stderr)
        return 130
    return command_line()
