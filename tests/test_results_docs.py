"""The full-scale tables of docs/results.md are written by hand from committed TSVs; every
table marked ``<!-- checked: <results dir> sigma=<σ> -->`` is recomputed here from those
files, cell by cell, so a mistyped or stale number fails the suite."""

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest

from smoothsk.io.report import CertificationRun, read_certification_tsv

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MARKER = re.compile(r"<!-- checked: (\S+) sigma=([0-9.]+)( grid)? -->")
METHODS = {"gaussian": "gaussian", "stability": "stability", "consistency": "consistency",
           "smoothmix": "smoothmix", "macer": "macer", "crt": "crt", "cat-rs": "catrs",
           "smoothadv": "smoothadv",
           # CRT students of other architectures (benchmarks/crt_architectures.py)
           "resnet-8": "crt-resnet8", "mlp": "crt-mlp", "mlp-gaussian": "gaussian-mlp"}


def _checked_tables(text: str):
    """``(directory, sigma, header, rows)`` for every marked table."""
    lines = text.splitlines()
    for at, line in enumerate(lines):
        match = MARKER.search(line)
        if not match:
            continue
        table = []
        for row in lines[at + 1:]:
            if not row.startswith("|"):
                break
            table.append([cell.strip() for cell in row.strip("|").split("|")])
        assert len(table) > 2, f"no table after the marker on line {at + 1}"
        yield match.group(1), float(match.group(2)), bool(match.group(3)), table[0], \
            table[2:]


def _number(cell: str) -> str:
    return re.match(r"[\d,.]+", cell.replace("*", "")).group(0).replace(",", "")


def _expected_on_grid(directory: Path, method: str, sigma: float, column: str) -> str | None:
    """A cell of a ``certify_radii`` table: ``images``, or ``mean ± SE`` in points of
    "correct and certified at r" over the images (SE: sample standard deviation / √N)."""
    run = read_certification_tsv(directory / f"{method}-sigma{sigma:g}-radii.tsv")
    if column == "images":
        return str(len(run.idx))
    radius = re.fullmatch(r"r=([0-9.]+)", column)
    if radius is None:
        return None
    hits = run.correct.astype(bool) & (run.radius >= float(radius.group(1)))
    mean, se = 100 * hits.mean(), 100 * hits.std(ddof=1) / np.sqrt(len(hits))
    return f"{mean:.2f} ± {se:.2f}"


def _expected(directory: Path, method: str, sigma: float, column: str) -> str | None:
    """The cell ``column`` of ``method``'s row as the committed files give it."""
    def run(n):
        return read_certification_tsv(directory / f"{method}-sigma{sigma:g}-n{n}.tsv")

    if column == "training":
        train = json.loads((directory / f"train-{method}-sigma{sigma:g}.json").read_text())
        return str(round(train["seconds"]))
    if column == "ACR":
        return f"{run(10000).average_certified_radius:.3f}"
    if column == "ACR at n = 100,000":
        return f"{run(100000).average_certified_radius:.3f}"
    if column == "same images at n = 10,000":  # paired with the n = 100,000 images
        small, large = run(10000), run(100000)
        keep = np.isin(small.idx, large.idx)
        assert keep.sum() == len(large.idx)
        same = CertificationRun(method, small.idx[keep], small.radius[keep], small.correct[keep])
        return f"{same.average_certified_radius:.3f}"
    radius = re.fullmatch(r"(?:r=)?([0-9.]+)", column)
    if radius:
        return f"{100 * run(10000).certified_accuracy([float(radius.group(1))])[0]:.1f}"
    return None  # a derived column (differences, gains), stated in the text beside it


def test_every_checked_table_matches_its_files():
    text = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    tables = list(_checked_tables(text))
    assert len(tables) >= 4
    checked = 0
    for directory, sigma, grid, header, rows in tables:
        for row in rows:
            method = METHODS[row[0].split()[0].lower()]
            for column, cell in zip(header[1:], row[1:]):
                if grid:
                    expected = _expected_on_grid(RESULTS / directory, method, sigma, column)
                    cell = cell if column != "images" else _number(cell)
                else:
                    expected = _expected(RESULTS / directory, method, sigma, column)
                    cell = _number(cell) if expected is not None else cell
                if expected is None:
                    continue
                assert cell == expected, (directory, sigma, row[0], column)
                checked += 1
    assert checked >= 107  # the tables as committed hold 107 such cells


@pytest.mark.parametrize("cell, number", [("**1.112**", "1.112"), ("4,442 s (+ target)", "4442"),
                                          ("82.0", "82.0")])
def test_cells_are_read_as_numbers(cell, number):
    assert _number(cell) == number


ENSEMBLE_MARKER = "<!-- checked: ensemble-fmnist -->"
# benchmarks/ensemble_fmnist.py's members of each ensemble
MIXED_MEMBERS = ["gaussian-seed0", "consistency-seed0", "gaussian-seed1"]


def _members(ensemble: str) -> list[str]:
    if ensemble.startswith("mixed"):
        return MIXED_MEMBERS
    method, k = re.fullmatch(r"(\w+)-ensemble(\d)", ensemble).groups()
    return [f"{method}-seed{s}" for s in range(int(k))]


def test_the_ensemble_table_matches_its_files():
    # each row: the ensemble's TSV, its best member's (the highest ACR), and the paired
    # gain: mean ± sample SD / √k of the per-image differences of radius · correct
    text = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    at = lines.index(ENSEMBLE_MARKER)
    rows = [[c.strip() for c in row.strip("|").split("|")]
            for row in itertools.takewhile(lambda r: r.startswith("|"), lines[at + 1:])][2:]
    assert len(rows) >= 3
    directory = RESULTS / "ensemble-fmnist"
    for name, images, best, best_acr, acr, gain in rows:
        name = name.strip("`")
        runs = {m: read_certification_tsv(directory / f"{m}.tsv") for m in _members(name)}
        ensemble = read_certification_tsv(directory / f"{name}.tsv")
        top = max(runs, key=lambda m: runs[m].average_certified_radius)
        assert best.strip("`") == top, name
        assert _number(images) == str(len(ensemble.idx))
        assert all(np.array_equal(run.idx, ensemble.idx) for run in runs.values())
        assert best_acr == f"{runs[top].average_certified_radius:.3f}"
        assert acr == f"{ensemble.average_certified_radius:.3f}"
        diff = ensemble.radius * ensemble.correct - runs[top].radius * runs[top].correct
        relative = diff.mean() / runs[top].average_certified_radius
        se = diff.std(ddof=1) / np.sqrt(len(diff))
        assert gain == f"{diff.mean():+.3f} ± {se:.3f} ({relative:+.1%})", name


DIFFERENCES_MARKER = re.compile(r"<!-- checked differences: (\S+) sigma=([0-9.]+) "
                                r"reference=(\S+) labels=([^,\s]+),(\S+) -->")


def _grid_hits(directory: Path, method: str, sigma: float, radii):
    run = read_certification_tsv(directory / f"{method}-sigma{sigma:g}-radii.tsv")
    hits = run.correct.astype(bool)[:, None] & (run.radius[:, None] >= np.asarray(radii))
    return run.idx, 100.0 * hits


def test_every_checked_differences_table_matches_its_files():
    # a row "A − B" (both in the directory) or "A label − A reference-label" (the same
    # method in the directory and in the reference directory): mean ± sample SD / √k of
    # the per-image differences of "correct and certified at r", over the k shared images
    text = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    checked = 0
    for at, line in enumerate(lines):
        match = DIFFERENCES_MARKER.search(line)
        if not match:
            continue
        directory, sigma, reference = match.group(1), float(match.group(2)), match.group(3)
        label, reference_label = match.group(4), match.group(5)
        table = [[c.strip() for c in row.strip("|").split("|")]
                 for row in itertools.takewhile(lambda r: r.startswith("|"), lines[at + 1:])]
        header, rows = table[0], table[2:]
        radii = [float(c.removeprefix("r=")) for c in header[2:]]
        assert rows, f"no rows after the marker on line {at + 1}"
        for name, images, *cells in rows:
            sides = re.sub(r" \(.*\)$", "", name).split(" − ")
            assert len(sides) == 2, name
            (first, second) = [side.split() for side in sides]
            where = [RESULTS / (reference if side[1:] == [reference_label] else directory)
                     for side in (first, second)]
            assert all(side[1:] in ([], [label], [reference_label]) for side in (first, second))
            idx_a, hits_a = _grid_hits(where[0], METHODS[first[0].lower()], sigma, radii)
            idx_b, hits_b = _grid_hits(where[1], METHODS[second[0].lower()], sigma, radii)
            shared, ia, ib = np.intersect1d(idx_a, idx_b, return_indices=True)
            assert _number(images) == str(len(shared)), name
            diff = hits_a[ia] - hits_b[ib]
            mean, se = diff.mean(0), diff.std(0, ddof=1) / np.sqrt(len(shared))
            for cell, m, e in zip(cells, mean, se):
                assert cell.replace("−", "-") == f"{m:+.2f} ± {e:.2f}", (name, cell)
                checked += 1
    assert checked >= 30  # the whole-test-set differences table as committed: 5 rows × 6 radii
