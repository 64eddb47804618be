"""Certified-accuracy tables and curves from certification TSV files.

Reads the TSV of Cohen et al.'s ``certify.py`` (``idx label predict radius correct
time``), which smoothsk's command line writes and the authors' scripts of Cohen,
SmoothAdv, MACER, Consistency, SmoothMix and CRT all produce.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smoothsk.io.runs import _atomic_write
from smoothsk.metrics import _accuracy_curve, _mean_certified_radius

__all__ = [
    "CertificationRun",
    "markdown_table",
    "parse_radii",
    "plot_certified_accuracy",
    "read_certification_tsv",
]


@dataclass
class CertificationRun:
    """One TSV: per-input ``radius`` and ``correct`` (certified with the true class)."""

    name: str
    idx: np.ndarray
    radius: np.ndarray
    correct: np.ndarray

    def certified_accuracy(self, radii) -> np.ndarray:
        """``CA(r)`` = fraction of inputs that are correct with radius ≥ r."""
        return _accuracy_curve(self.correct, self.radius, radii)

    @property
    def average_certified_radius(self) -> float:
        return _mean_certified_radius(self.correct, self.radius)


def read_certification_tsv(path, name: str | None = None) -> CertificationRun:
    """Read a certification TSV (smoothsk's or the authors' scripts').

    Only the ``radius`` and ``correct`` columns are required; abstentions have
    ``correct = 0``.  Raises ``ValueError`` naming the file for anything else.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist.")
    try:
        return _read_tsv(path, name)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not a UTF-8 text file; it is not a certification "
                         "TSV.") from exc


def _read_tsv(path: Path, name: str | None) -> CertificationRun:
    with open(path, newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream, delimiter="\t")
        fields = [f.strip() for f in (reader.fieldnames or [])]
        if "radius" not in fields or "correct" not in fields:
            raise ValueError(f"{path} has no 'radius' and 'correct' columns; it is not a "
                             "certification TSV (idx label predict radius correct time).")
        reader.fieldnames = fields
        idx, radius, correct = [], [], []
        for line, row in enumerate(reader, start=2):
            try:
                radius.append(float(row["radius"]))
                correct.append(bool(int(float(row["correct"]))))
                idx.append(int(row["idx"]) if row.get("idx") not in (None, "") else line - 2)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}, line {line}: cannot parse {row!r}.") from exc
    if not radius:
        raise ValueError(f"{path} has no rows.")
    radius = np.asarray(radius)
    bad = ~np.isfinite(radius) | (radius < 0)
    if bad.any():
        line = int(np.flatnonzero(bad)[0]) + 2
        raise ValueError(f"{path}, line {line}: radius {radius[bad][0]!r} is not a finite "
                         "number >= 0; the file is corrupt or not a certification TSV.")
    unique, seen = np.unique(idx, return_counts=True)
    if (seen > 1).any():
        raise ValueError(f"{path} has duplicate rows for idx {unique[seen > 1][:5].tolist()}; "
                         "two runs wrote to one file. Certify again into a new file.")
    return CertificationRun(name or path.stem, np.asarray(idx), radius,
                            np.asarray(correct, dtype=bool))


MAX_RADII = 10_000
"""The most radii a table or a curve is computed at."""


def parse_radii(text: str) -> np.ndarray:
    """``"0:2:0.25"`` (start:stop:step, stop included) or ``"0,0.5,1"`` → array of radii."""
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            if not step > 0 or stop < start:
                raise ValueError
            count = (stop - start) / step
            radii = None if count > MAX_RADII else np.round(
                np.arange(start, stop + step / 2, step), 10)
        else:
            radii = np.array([float(v) for v in text.split(",")])
    except ValueError:
        raise ValueError(
            f"radii must be start:stop:step (e.g. 0:2:0.25) or a comma list; got {text!r}."
        ) from None
    if radii is None:
        raise ValueError(f"radii {text!r} asks for more than {MAX_RADII:,} radii; use a "
                         "larger step.")
    if np.any(radii < 0) or not np.all(np.isfinite(radii)):
        raise ValueError(f"radii must be finite and >= 0; got {text!r}.")
    return radii


def markdown_table(runs: list[CertificationRun], radii) -> str:
    """A Markdown table: one row per run, ACR then certified accuracy (%) at each radius."""
    header = ["run", "N", "ACR", *[f"r={r:g}" for r in radii]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        cells = [run.name, str(len(run.radius)), f"{run.average_certified_radius:.3f}"]
        cells += [f"{100 * a:.1f}" for a in run.certified_accuracy(radii)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_certified_accuracy(runs: list[CertificationRun], path, *, max_radius=None,
                            title: str | None = None, size=(6.4, 4.8), dpi: int = 100) -> Path:
    """Certified accuracy against radius, one labelled line per run, saved as PNG.

    The figure is ``size`` inches at ``dpi`` (640×480 pixels by default).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = max_radius or max(1e-6, max(float(run.radius.max()) for run in runs)) * 1.05
    grid = np.linspace(0.0, top, 400)
    figure, axes = plt.subplots(figsize=size, dpi=dpi)
    for run in runs:
        axes.plot(grid, run.certified_accuracy(grid), label=run.name)
    axes.set_xlabel("l2 radius")
    axes.set_ylabel("certified accuracy")
    axes.set_ylim(0, 1)
    axes.set_xlim(0, top)
    axes.grid(alpha=0.3)
    axes.legend()
    if title:
        axes.set_title(title)
    path = Path(path)
    try:
        _atomic_write(path, lambda stream: figure.savefig(stream, dpi=dpi, format="png"))
    finally:
        plt.close(figure)
    return path
