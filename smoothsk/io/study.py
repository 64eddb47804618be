"""Reports of a reproduction study: tables, curves and paired claims from its TSV runs.

A study directory holds, per (method, σ), the training record ``train-<method>-sigma<σ>.json``
and certification runs: ``<method>-sigma<σ>-n<n>.tsv`` (CERTIFY with ``n`` draws) or
``<method>-sigma<σ>-radii.tsv`` (``certify_radii`` on a grid).  ``benchmarks/reproduce.py``
writes them; :func:`write_study_report` and :func:`write_grid_report` turn them into the
tables of ``docs/results.md``.

Every comparison is paired: two runs certified the same test images, so a difference is
the mean of the per-image differences, with standard error their sample standard
deviation over √k.  Pairing removes the between-image variance, which dominates.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from smoothsk.io.files import atomic_write_text
from smoothsk.io.report import (
    CertificationRun,
    markdown_table,
    plot_certified_accuracy,
    read_certification_tsv,
)
from smoothsk.methods.registry import display_name

__all__ = ["STUDY_ORDER", "grid_hits", "paired_gain", "write_grid_report",
           "write_study_report"]

STUDY_ORDER = ("gaussian", "stability", "consistency", "macer", "smoothadv", "smoothmix", "crt",
               "catrs")
"""The methods of a study, in the order its tables list them (registry names)."""

# (method, the method its published claim compares it with)
COMPARISONS = tuple((m, "gaussian") for m in STUDY_ORDER if m not in ("gaussian", "crt")) + (
    ("catrs", "smoothmix"), ("smoothadv", "smoothmix"))
# The radii of the CERTIFY tables, by σ.
TABLE_RADII = {0.25: [0, 0.25, 0.5, 0.75, 1.0], 0.5: [0, 0.5, 1.0, 1.5, 2.0],
               1.0: [0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]}


def paired_gain(base: CertificationRun, other: CertificationRun) -> tuple[float, float, int]:
    """Mean and standard error of ``other − base`` in ``radius · correct`` over shared images.

    ACR is the mean of ``radius · correct`` per image, so on the same images the ACR
    difference is the mean of the per-image differences; its standard error is their
    sample standard deviation over √k.

    Parameters
    ----------
    base, other : CertificationRun
        Two runs; only the images both certified (by index) count.

    Returns
    -------
    tuple of (float, float, int)
        The mean difference, its standard error (NaN for one image) and k.
    """
    shared, a, b = np.intersect1d(base.idx, other.idx, return_indices=True)
    diff = other.radius[b] * other.correct[b] - base.radius[a] * base.correct[a]
    se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    return float(diff.mean()), float(se), len(shared)


def grid_hits(run: CertificationRun, grid) -> np.ndarray:
    """``(images, radii)`` of 0/1: correct and certified at least at each grid radius.

    Parameters
    ----------
    run : CertificationRun
        A run (``certify_radii`` reports the largest grid radius it certified).
    grid : sequence of float
        The radii.
    """
    radius = np.asarray(run.radius, dtype=float)
    correct = np.asarray(run.correct, dtype=bool)
    return (correct[:, None] & (radius[:, None] >= np.asarray(grid)[None, :])).astype(float)


def _mean_se_cells(values: np.ndarray, sign: str) -> list[str]:
    """``mean ± SE`` in points for each column of ``(images, radii)`` values."""
    mean = 100 * values.mean(axis=0)
    se = 100 * values.std(axis=0, ddof=1) / np.sqrt(len(values))
    return [f"{m:{sign}.2f} ± {e:.2f}" for m, e in zip(mean, se)]


def write_grid_report(out, grid, header: str, *, reference=None,
                      labels: tuple[str, str] | None = None) -> str | None:
    """``out/radii.md``: certified accuracy at each grid radius, and paired differences.

    Parameters
    ----------
    out : str or Path
        The study directory (its ``*-radii.tsv`` runs).
    grid : sequence of float
        The radii the runs were certified at.
    header : str
        The paragraph above the tables (data, network, settings).
    reference : str or Path, optional
        A second study directory on the same grid and test images (for example the same
        recipes trained in another precision): for every (method, σ) both directories
        hold, the differences table gains the row ``<method> labels[0] − <method>
        labels[1]``, paired over the images both runs certified.
    labels : (str, str), optional
        Names of ``out``'s runs and ``reference``'s in those rows (e.g. ``("bf16",
        "fp32")``); required with ``reference``.

    Returns
    -------
    str or None
        The markdown written (None when ``out`` holds no grid run).
    """
    if (reference is None) != (labels is None):
        raise ValueError("write_grid_report: pass reference and labels together, e.g. "
                         "reference='results/fp32', labels=('bf16', 'fp32').")
    if labels is not None and (len(labels) != 2 or not all(labels)):
        raise ValueError(f"labels must be two non-empty names, got {labels!r}.")
    out, grid = Path(out), sorted(float(r) for r in grid)
    runs = _grid_runs(out)
    if not runs:
        return None
    references = _grid_runs(Path(reference)) if reference is not None else {}
    columns = " | ".join(f"r={r:g}" for r in grid)
    lines = [header + "\n"]
    for sigma in sorted({s for _, s in runs}):
        at_sigma = {m: run for (m, s), run in runs.items() if s == sigma}
        lines += [f"### σ = {sigma:g}\n", f"| method | images | {columns} |",
                  "|---|---|" + "---|" * len(grid)]
        for method, run in at_sigma.items():
            cells = _mean_se_cells(grid_hits(run, grid), "")
            lines.append(f"| {display_name(method)} | {len(run.idx):,} | "
                         + " | ".join(cells) + " |")
        lines += ["", "Paired differences in certified accuracy (points, mean ± SE over the "
                  "images both runs certified):\n", f"| difference | images | {columns} |",
                  "|---|---|" + "---|" * len(grid)]
        pairs = []
        for method, run in at_sigma.items():
            if (method, sigma) in references:
                name = display_name(method)
                pairs.append((f"{name} {labels[0]} − {name} {labels[1]}",
                              references[(method, sigma)], run))
        methods = list(at_sigma)
        for i, first in enumerate(methods):
            for second in methods[i + 1:]:
                pairs.append((f"{display_name(second)} − {display_name(first)}",
                              at_sigma[first], at_sigma[second]))
        for name, a, b in pairs:
            shared, ia, ib = np.intersect1d(a.idx, b.idx, return_indices=True)
            if len(shared) < 2:
                continue
            cells = _mean_se_cells(grid_hits(b, grid)[ib] - grid_hits(a, grid)[ia], "+")
            lines.append(f"| {name} | {len(shared):,} | " + " | ".join(cells) + " |")
        lines.append("")
    text = "\n".join(lines)
    atomic_write_text(out / "radii.md", text)
    return text


def _grid_runs(directory: Path) -> dict[tuple[str, float], CertificationRun]:
    """``{(method, σ): run}`` of the ``*-radii.tsv`` runs in ``directory``, in study order."""
    runs = {}
    for method in STUDY_ORDER:
        for tsv in sorted(directory.glob(f"{method}-sigma*-radii.tsv")):
            sigma = float(tsv.stem.split("-sigma", 1)[1].removesuffix("-radii"))
            runs[(method, sigma)] = read_certification_tsv(tsv, display_name(method))
    return runs


def _run_name(method: str, n: int, seconds: float, images: str | None = None) -> str:
    images = f", {images}" if images else ""
    return f"{display_name(method)} (n = {n:,}{images}, train {seconds:.0f} s)"


def _same_images(run: CertificationRun, idx, name: str) -> CertificationRun:
    """``run`` restricted to the images ``idx``, for a like-for-like row next to a subset run."""
    keep = np.isin(run.idx, idx)
    return CertificationRun(name, run.idx[keep], run.radius[keep], run.correct[keep])


def write_study_report(out, header: str, n: int) -> str | None:
    """``out/results.md`` (tables, curves, claims), ``out/summary.json`` and one PNG per σ.

    Parameters
    ----------
    out : str or Path
        The study directory (its ``train-*.json`` records and ``*-n<n>.tsv`` runs).
    header : str
        The paragraph above the tables (data, network, settings).
    n : int
        The draws of the main runs; runs at other ``n`` are compared with them on the
        images both certified.

    Returns
    -------
    str or None
        The markdown written (None when ``out`` holds no training record).
    """
    out = Path(out)
    trained = [json.loads(p.read_text()) for p in out.glob("train-*.json")]
    if not trained:
        return None
    sigmas = sorted({float(t["sigma"]) for t in trained})
    methods = [m for m in STUDY_ORDER if any(t["method"] == m for t in trained)]
    lines, found = [header + "\n"], {}
    for sigma in sigmas:
        rows, curves = [], []
        for method in methods:
            for tsv in sorted(out.glob(f"{method}-sigma{sigma:g}-n*.tsv"),
                              key=lambda p: int(p.stem.rsplit("-n", 1)[1])):
                size = int(tsv.stem.rsplit("-n", 1)[1])
                info = json.loads((out / f"train-{method}-sigma{sigma:g}.json").read_text())
                seconds = info["seconds"]
                run = read_certification_tsv(tsv, _run_name(method, size, seconds))
                full = found.get((method, sigma, n))
                if full is not None and len(run.idx) < len(full[0].idx):
                    # a subset run: show the full run on the same images next to it
                    rows.append(_same_images(full[0], run.idx, _run_name(
                        method, n, seconds, f"same {len(run.idx)} images")))
                    run.name = _run_name(method, size, seconds, f"{len(run.idx)} images")
                rows.append(run)
                curves.append(run)
                found[(method, sigma, size)] = (run, seconds)
        if not rows:
            continue
        lines.append(f"### σ = {sigma:g}\n")
        lines.append(markdown_table(rows, TABLE_RADII.get(sigma, [0, 0.5, 1.0])))
        png = out / f"curves-sigma{sigma:g}.png"
        plot_certified_accuracy(curves, png, title=f"Fashion-MNIST, LeNet, σ = {sigma:g}")
        lines.append(f"![σ = {sigma:g}]({png.name})\n")
    lines += _claims(found, n)
    text = "\n".join(lines)
    atomic_write_text(out / "results.md", text)
    summary = {f"{m}|{s:g}|{size}": (run.average_certified_radius, seconds)
               for (m, s, size), (run, seconds) in found.items()}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    return text


def _paired_text(base: CertificationRun, other: CertificationRun) -> str:
    """``other − base`` ACR over their shared images: ``gain ± se (z SE, k images)``."""
    gain, se, k = paired_gain(base, other)
    return f"{gain:+.3f} ± {se:.3f} ({gain / se:+.1f} SE, {k} images)"


def _claims(found: dict, n: int) -> list[str]:
    """The published relative claims, as numbers: paired ACR gains and CRT's ratios."""
    lines = ["### Relative claims (paired over the same images: mean ± standard error)\n"]
    ordered = sorted(found.items(),
                     key=lambda item: (item[0][1], STUDY_ORDER.index(item[0][0]), item[0][2]))
    for (method, sigma, size), (run, seconds) in ordered:
        for reference in (r for m, r in COMPARISONS if m == method):
            if (reference, sigma, size) not in found:
                continue
            base, base_seconds = found[(reference, sigma, size)]
            lines.append(f"- σ = {sigma:g}, n = {size:,}: {display_name(method)} − "
                         f"{display_name(reference)} ACR = {_paired_text(base, run)}; "
                         f"training wall time {seconds:.0f} / {base_seconds:.0f} s")
    for (method, sigma, size), (run, seconds) in ordered:
        if method != "crt" or ("smoothmix", sigma, size) not in found:
            continue
        teacher, teacher_seconds = found[("smoothmix", sigma, size)]
        gain, se, _ = paired_gain(teacher, run)
        lines.append(f"- σ = {sigma:g}, n = {size:,}: {display_name('crt')} / SmoothMix "
                     "teacher ACR = "
                     f"{run.average_certified_radius / teacher.average_certified_radius:.3f} "
                     f"(difference {gain:+.3f} ± {se:.3f}); training wall time "
                     f"{seconds:.0f} / {teacher_seconds:.0f} s = {seconds / teacher_seconds:.3f} "
                     f"({teacher_seconds / seconds:.0f}× less)")
    for (method, sigma, size), (run, _) in ordered:
        if size == n or (method, sigma, n) not in found:
            continue
        gain, se, k = paired_gain(found[(method, sigma, n)][0], run)
        lines.append(f"- σ = {sigma:g}: {display_name(method)} ACR at n = {size:,} − at "
                     f"n = {n:,} = {gain:+.3f} ± {se:.3f} (same {k} images)")
    return lines + [""]
