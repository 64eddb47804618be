"""Certified-accuracy tables and curves from certification TSV files.

Reads the TSV of Cohen et al.'s ``certify.py`` (``idx label predict radius correct
time``), which smoothsk's command line writes and the authors' scripts of Cohen,
SmoothAdv, MACER, Consistency, SmoothMix and CRT all produce.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smoothsk.io.files import atomic_write
from smoothsk.metrics import accuracy_curve, mean_certified_radius

__all__ = [
    "CertificationRun",
    "markdown_table",
    "run_labels",
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
    settings: dict | None = None  # the run's sidecar (``<tsv>.run.json``), when present
    name_given: bool = False  # ``name`` was chosen by the user, not taken from the file

    def setting(self, key: str):
        """A value of the run's sidecar, also from its ``describes`` section; else None."""
        settings = self.settings or {}
        return settings.get(key, (settings.get("describes") or {}).get(key))

    @property
    def label(self) -> str:
        """``"<method>, σ = <sigma>"`` from the sidecar when it names them, else ``name``."""
        method, sigma = self.setting("method"), self.setting("sigma")
        if method is None or sigma is None or self.name_given:
            return self.name
        from smoothsk.methods.registry import display_name

        bound, noise = self.setting("bound"), self.setting("noise")
        extra = "" if bound in (None, "binary") else f", {bound} bound"
        if noise not in (None, "gaussian"):
            extra += f", {noise} noise"
        members = self.setting("members")
        size = f" of {members}" if isinstance(members, int) and members > 1 else ""
        return f"{display_name(method)}{size}, σ = {float(sigma):g}{extra}"

    @classmethod
    def from_certificate(cls, certificate, y_true, name: str = "certificate"):
        """A run from a :class:`~smoothsk.Certificate` (or the ``RadiusCertificate`` /
        ``RadiiCertificate`` of the sequential tests) and the inputs' true labels
        ``y_true`` (labels for an estimator's certificate, class indices for a bare
        network's: :meth:`~smoothsk.Certificate.is_correct` checks which)."""
        correct = np.asarray(certificate.is_correct(y_true), dtype=bool)
        radius = np.asarray(certificate.radius, dtype=float)
        settings = {"sigma": getattr(certificate, "sigma", None),
                    "n": getattr(certificate, "n", getattr(certificate, "max_n", None)),
                    "alpha": getattr(certificate, "alpha", None)}
        return cls(name, np.arange(len(radius)), radius, correct, settings, name_given=True)

    def certified_accuracy(self, radii) -> np.ndarray:
        """``CA(r)`` = fraction of inputs that are correct with radius ≥ r."""
        return accuracy_curve(self.correct, self.radius, radii)

    @property
    def planned(self) -> int | None:
        """How many inputs the run was started for (its sidecar's ``indices``), or None."""
        planned = self.setting("indices")
        return int(planned) if isinstance(planned, (int, float)) else None

    @property
    def size_text(self) -> str:
        """``N``, or ``"N of M"`` for a run stopped before its M inputs were certified."""
        planned = self.planned
        done = len(self.radius)
        return f"{done} of {planned}" if planned is not None and done < planned else str(done)

    @property
    def average_certified_radius(self) -> float:
        return mean_certified_radius(self.correct, self.radius)


def read_certification_tsv(path, name: str | None = None) -> CertificationRun:
    """Read a certification TSV (smoothsk's or the authors' scripts').

    Only the ``radius`` and ``correct`` columns are required; abstentions have
    ``correct = 0``.  Raises ``ValueError`` naming the file for anything else.

    Parameters
    ----------
    path : str or Path
        The TSV; its sidecar ``<path>.run.json`` is read when present.
    name : str or None
        How tables and plots name the run (default: from the sidecar, else the file's stem).

    Returns
    -------
    CertificationRun
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist.")
    try:
        run = _read_tsv(path, name)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not a UTF-8 text file; it is not a certification "
                         "TSV.") from exc
    run.name_given = name is not None
    sidecar = path.with_name(path.name + ".run.json")
    try:
        settings = json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else None
    except (ValueError, RecursionError):  # a damaged sidecar only loses the descriptions
        settings = None
    run.settings = _described(settings)
    return run


_TEXT_FIELDS = ("method", "bound", "interval", "noise", "noise_step", "dataset", "split",
                "precision")
_NUMBER_FIELDS = ("sigma", "n", "n0", "max_n", "alpha", "indices", "members")


def _described(settings):
    """The sidecar's fields a report reads, each of its own type; a field of another type
    is dropped like a damaged sidecar (it only describes the run: the rows are the TSV's),
    so that a crafted or damaged sidecar can neither crash a report nor mislabel a run."""
    if not isinstance(settings, dict):
        return None

    def number(value) -> bool:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and bool(np.isfinite(value)) and value > 0)

    kept = {}
    for source in (settings, settings.get("describes")):
        if not isinstance(source, dict):
            continue
        for key in _TEXT_FIELDS:
            if isinstance(source.get(key), str) and len(source[key]) <= 200:
                kept.setdefault(key, source[key])
        for key in _NUMBER_FIELDS:
            if number(source.get(key)):
                kept.setdefault(key, source[key])
    return kept


def _read_tsv(path: Path, name: str | None) -> CertificationRun:
    with open(path, newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream, delimiter="\t")
        fields = [f.strip() for f in (reader.fieldnames or [])]
        if "radius" not in fields or "correct" not in fields:
            raise ValueError(f"{path} has no 'radius' and 'correct' columns; it is not a "
                             "certification TSV (idx label predict radius correct time).")
        reader.fieldnames = fields
        idx, radius, correct = [], [], []
        line = 1
        try:
            for line, row in enumerate(reader, start=2):
                try:
                    radius.append(float(row["radius"]))
                    correct.append(bool(int(float(row["correct"]))))
                    idx.append(int(row["idx"]) if row.get("idx") not in (None, "") else
                               line - 2)
                except (TypeError, ValueError) as exc:
                    shown = {key: _shorten(str(value)) for key, value in row.items()}
                    raise ValueError(f"{path}, line {line}: cannot parse {shown!r}.") from exc
        except csv.Error as exc:  # a field beyond csv's limit, a NUL byte, ...
            raise ValueError(f"{path}, line {line + 1}: not a certification TSV row ({exc}); "
                             "the file is corrupt or not a certification TSV.") from exc
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


def _plain(text: str) -> str:
    """``text`` shown as written: a ``$`` in a file name, a label or a title would start
    matplotlib's math mode (and fail to parse, or render as math)."""
    return text.replace("$", r"\$")


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_radii(text: str) -> np.ndarray:
    """``"0:2:0.25"`` (start:stop:step, stop included) or ``"0,0.5,1"`` → array of radii.

    Parameters
    ----------
    text : str
        ``start:stop:step`` or a comma list.
    """
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            if not step > 0 or stop < start:
                raise ValueError
            count = (stop - start) / step
            radii = None if count > MAX_RADII else np.round(
                np.arange(start, stop + step / 2, step), 10)
        else:
            parts = text.split(",")
            radii = None if len(parts) > MAX_RADII else np.array([float(v) for v in parts])
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


def run_labels(runs: list[CertificationRun]) -> list[str]:
    """How tables and plots name the runs: each run's :attr:`~CertificationRun.label`
    (method and σ from its sidecar, else its name), with the data set added when the
    runs do not all share one, and the file name added where two labels would coincide.

    Parameters
    ----------
    runs : list of CertificationRun
        The runs of one table or plot.
    """
    labels = [run.label for run in runs]
    datasets = [run.setting("dataset") for run in runs]
    if len(set(datasets)) > 1:
        labels = [f"{label} ({dataset or 'data set unknown'})"
                  for label, dataset in zip(labels, datasets)]
    if len(set(labels)) < len(labels):
        labels = [label if labels.count(label) == 1 or run.name_given
                  else f"{label} [{run.name}]" for label, run in zip(labels, runs)]
    return labels


def markdown_table(runs: list[CertificationRun], radii) -> str:
    """A Markdown table: one row per run, ACR then certified accuracy (%) at each radius.

    Runs are named as in the plot (:func:`run_labels`).

    Parameters
    ----------
    runs : list of CertificationRun
        The runs, one row each.
    radii : array-like of float
        The radii of the certified-accuracy columns.
    """
    header = ["run", "N", "ACR", *[f"r={r:g}" for r in radii]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run, label in zip(runs, run_labels(runs)):
        cells = [label, run.size_text, f"{run.average_certified_radius:.3f}"]
        cells += [f"{100 * a:.1f}" for a in run.certified_accuracy(radii)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


PLOT_FORMATS = ("pdf", "svg", "png")


def _common(runs, key):
    values = {run.setting(key) for run in runs}
    return values.pop() if len(values) == 1 else None


def max_certifiable_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius CERTIFY can return with ``n`` draws: all ``n`` votes for the
    top class give ``p_A_lower = α^(1/n)`` (Clopper–Pearson), hence ``σ Φ⁻¹(α^(1/n))``.

    Parameters
    ----------
    sigma : float
        The noise level.
    n : int
        Estimation draws.
    alpha : float
        CERTIFY's failure probability.
    """
    from scipy.stats import norm

    return float(sigma * norm.ppf(alpha ** (1.0 / n)))


def plot_certified_accuracy(runs, path=None, *, ax=None, y_true=None, max_radius=None,
                            title: str | None = None, size=(3.4, 2.5), dpi: int = 300):
    """Certified accuracy (%) against l2 radius, one line per run, for a paper column.

    Parameters
    ----------
    runs : list of CertificationRun or Certificate
        Runs read from TSVs (:func:`read_certification_tsv`), or certificates
        (``Certificate``, ``RadiusCertificate``, ``RadiiCertificate``) with ``y_true``.
    path : str, Path or None
        Where to write the figure; the format follows the suffix (PDF, SVG or PNG, at
        ``dpi``).  None writes nothing.
    ax : matplotlib Axes or None
        Draw into this Axes (matplotlib's convention); None makes a figure of ``size``
        inches (one column of a two-column paper) without touching pyplot's state or the
        backend.
    y_true : array-like or None
        The true labels of the certified inputs, for the certificates among ``runs``.
    max_radius : float or None
        The x-axis' end (default: the largest radius, plus 5 %).
    title : str or None
        A first title line; the second gives N, n and α when the runs share them.
    size : (float, float), default=(3.4, 2.5)
        The new figure's width and height in inches (ignored with ``ax``).
    dpi : int, default=300
        Resolution of the new figure and of a PNG written to ``path``.

    Returns
    -------
    matplotlib.axes.Axes
        The Axes drawn into.  Legends name each run's method and σ when its sidecar says
        them (:func:`run_labels`); a dotted line marks the largest radius CERTIFY can
        certify with that n (``σ Φ⁻¹(α^(1/n))``) for each σ.
    """
    import matplotlib

    path = None if path is None else Path(path)
    fmt = None if path is None else path.suffix.lower().lstrip(".")
    if path is not None and fmt not in PLOT_FORMATS:
        raise ValueError(f"The plot's file name must end in one of "
                         f"{', '.join('.' + f for f in PLOT_FORMATS)}; got {path.name!r}.")
    runs = list(runs)
    if not runs:
        raise ValueError("Pass at least one run or certificate to plot.")
    if any(not isinstance(run, CertificationRun) for run in runs):
        if y_true is None:
            raise ValueError("A certificate holds radii but not the true labels: pass "
                             "y_true=... (the labels of the certified inputs).")
        runs = [run if isinstance(run, CertificationRun) else
                CertificationRun.from_certificate(run, y_true, f"certificate {i + 1}")
                for i, run in enumerate(runs)]
    top = max_radius or max(1e-6, max(float(run.radius.max()) for run in runs)) * 1.05
    grid = np.linspace(0.0, top, 400)
    # svg.fonttype "none" keeps text as text: editable in a paper, searchable in tests.
    style = {"font.size": 7, "axes.titlesize": 7, "legend.fontsize": 6,
             "svg.fonttype": "none", "pdf.fonttype": 42}
    with matplotlib.rc_context(style):
        if ax is None:
            from matplotlib.figure import Figure

            figure = Figure(figsize=size, dpi=dpi, layout="constrained")
            ax = figure.add_subplot()
        for run, label in zip(runs, run_labels(runs)):
            ax.plot(grid, 100.0 * run.certified_accuracy(grid), label=_plain(label), lw=1.2)
        n, alpha = _common(runs, "n"), _common(runs, "alpha")
        if n and alpha:
            sigmas = {run.setting("sigma") for run in runs} - {None}
            for sigma in sorted(float(s) for s in sigmas):
                limit = max_certifiable_radius(sigma, int(n), float(alpha))
                if limit < top:
                    ax.axvline(limit, color="0.5", ls=":", lw=0.8)
                    ax.annotate(f"max at n (σ={sigma:g})", (limit, 97), rotation=90,
                                ha="right", va="top", fontsize=5, color="0.4")
        caption = [f"N = {len(runs[0].radius):,}" if len({len(r.radius) for r in runs}) == 1
                   else None, f"n = {int(n):,}" if n else None,
                   f"α = {alpha:g}" if alpha else None]
        caption = ", ".join(c for c in caption if c)
        ax.set_title("\n".join(_plain(line) for line in (title, caption) if line))
        ax.set_xlabel("l2 radius")
        ax.set_ylabel("certified accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_xlim(0, top)
        ax.grid(alpha=0.3, lw=0.5)
        ax.legend(frameon=False)
        if path is not None:
            figure = ax.figure
            atomic_write(path, lambda stream: figure.savefig(stream, dpi=dpi, format=fmt))
    return ax
