"""Progress of long work: tqdm bars in terminals and notebooks, periodic lines in logs.

Certification of a test set at n = 100,000 and training at full scale take hours, and
are usually started in the background with their output going to a file, where a
terminal progress bar turns into one unreadable line.  :func:`progress_bar` gives a tqdm
bar (``tqdm.auto``: a widget in notebooks) when the stream is interactive, and otherwise
a :class:`LogProgress` that prints one complete line every ``interval`` seconds.
"""

from __future__ import annotations

import sys
import time

from skorch.callbacks import Callback

__all__ = ["EpochProgress", "LogProgress", "progress_bar"]


class LogProgress:
    """A minimal tqdm-compatible counter that prints a line every ``interval`` seconds.

    ``description: 120/500 inputs (24%), 35.2 inputs/s, 10.8 s left``

    Parameters
    ----------
    total : int
        The count that completes the work (0: unknown, no percentage or estimate).
    description : str
        What is counted, at the start of each line.
    unit : str, default="input"
        The counted thing's name (pluralised with an "s").
    interval : float, default=30.0
        Seconds between lines; the last line is printed when ``total`` is reached.
    file : file-like or None, default=None
        Where lines go (None: stderr).
    """

    def __init__(self, total: int, description: str, unit: str = "input", *,
                 interval: float = 30.0, file=None):
        self.total, self.description, self.unit = total, description, unit
        self.interval, self.file = interval, file or sys.stderr
        self.n = 0
        self.postfix = ""
        self._start = self._last = time.monotonic()

    def update(self, count: int = 1) -> None:
        self.n += count
        now = time.monotonic()
        if now - self._last >= self.interval or (self.total and self.n >= self.total):
            self._last = now
            self._print(now)

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def _print(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-9)
        rate = self.n / elapsed
        if self.total:  # None for a loader of unknown length: no estimate
            left = f", {(self.total - self.n) / rate:.0f} s left" if rate > 0 else ""
            share = f" ({100 * self.n / self.total:.0f}%)"
        else:
            left, share = "", ""
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.description}: {self.n}/{self.total or '?'} {self.unit}s{share}, "
              f"{rate:.3g} {self.unit}s/s{left}{extra}", file=self.file, flush=True)

    def close(self) -> None:
        pass


def progress_bar(total: int, description: str, *, unit: str = "input", enabled: bool = True,
                 file=None, interval: float = 30.0):
    """A tqdm bar (notebook-aware) on an interactive ``file`` (default stderr), a
    :class:`LogProgress` on a file or pipe, or a silent counter when not ``enabled``.

    Parameters
    ----------
    total : int
        The count that completes the work.
    description : str
        The bar's label.
    unit : str, default="input"
        The counted thing's name.
    enabled : bool, default=True
        False: a silent counter (``update`` still counts).
    file : file-like or None, default=None
        Where the bar goes (None: stderr).
    interval : float, default=30.0
        Seconds between :class:`LogProgress` lines on a non-interactive ``file``.

    Returns
    -------
    tqdm or LogProgress
        An object with ``update(k)``, ``set_postfix(**values)``, ``n`` and ``close()``.
    """
    from tqdm.auto import tqdm

    file = file or sys.stderr
    if enabled and not (hasattr(file, "isatty") and file.isatty()) and not _in_notebook():
        return LogProgress(total, description, unit, interval=interval, file=file)
    return tqdm(total=total, desc=description, unit=unit, disable=not enabled, file=file)


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class EpochProgress(Callback):
    """A skorch callback that advances ``bar`` by one per epoch, showing the loss.

    Parameters
    ----------
    bar : object
        What :func:`progress_bar` returns (anything with ``update`` and
        ``set_postfix``).  The callback holds a terminal bar, so remove it before
        pickling the estimator.
    """

    def __init__(self, bar):
        self.bar = bar

    def on_epoch_end(self, net, **kwargs):
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{net.history[-1, 'train_loss']:.4f}")
