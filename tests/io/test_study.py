"""A reproduction study's reports (``smoothsk.io.study``, which benchmarks/reproduce.py
calls) on synthetic TSVs.

The tables and claims of docs/results.md come from this code, so its arithmetic is checked
against values computed here by hand from the rows written.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from smoothsk.io.report import read_certification_tsv
from smoothsk.io.study import paired_gain, write_grid_report, write_study_report


def _write_tsv(path: Path, idx, radius, correct):
    rows = ["idx\tlabel\tpredict\tradius\tcorrect\ttime"]
    for i, r, c in zip(idx, radius, correct):
        rows.append(f"{i}\t1\t{1 if c else 0}\t{r:.6f}\t{int(c)}\t0:00:01.000000")
    path.write_text("\n".join(rows) + "\n")


def _write_train(out: Path, method: str, sigma: float, seconds: float):
    info = {"method": method, "sigma": sigma, "seconds": seconds, "epochs": 5,
            "train_size": 5000, "batch_size": 64}
    (out / f"train-{method}-sigma{sigma:g}.json").write_text(json.dumps(info))


@pytest.fixture()
def study(tmp_path):
    rng = np.random.default_rng(0)
    idx = np.arange(0, 200, 20)
    runs = {}
    for method, seconds in [("gaussian", 10.0), ("smoothmix", 100.0), ("crt", 5.0)]:
        radius = rng.uniform(0, 1.5, len(idx))
        correct = rng.random(len(idx)) < 0.8
        _write_tsv(tmp_path / f"{method}-sigma0.5-n10000.tsv", idx, radius, correct)
        _write_train(tmp_path, method, 0.5, seconds)
        runs[method] = radius * correct
    for method in ("gaussian", "smoothmix"):
        radius = rng.uniform(0, 1.9, 4)
        _write_tsv(tmp_path / f"{method}-sigma0.5-n100000.tsv", idx[:4], radius,
                   np.ones(4, bool))
        runs[f"{method}-100k"] = radius
    return tmp_path, runs


def test_report_tables_and_claims(study):
    out, runs = study
    written = write_study_report(out, "A study.", 10_000)
    text = (out / "results.md").read_text()
    assert written == text and text.startswith("A study.\n")

    # ACR is the mean of radius · correct; the paired gain is the mean difference on the
    # same images and its standard error the sample sd of the differences over √k.
    diff = runs["smoothmix"] - runs["gaussian"]
    gain, se = diff.mean(), diff.std(ddof=1) / np.sqrt(len(diff))
    assert (f"σ = 0.5, n = 10,000: SmoothMix − Gaussian ACR = {gain:+.3f} ± {se:.3f} "
            f"({gain / se:+.1f} SE, 10 images)") in text
    diff = runs["smoothmix-100k"] - runs["gaussian-100k"]
    gain, se = diff.mean(), diff.std(ddof=1) / np.sqrt(len(diff))
    assert (f"σ = 0.5, n = 100,000: SmoothMix − Gaussian ACR = {gain:+.3f} ± {se:.3f} "
            f"({gain / se:+.1f} SE, 4 images)") in text
    ratio = runs["crt"].mean() / runs["smoothmix"].mean()
    assert f"σ = 0.5, n = 10,000: CRT student / SmoothMix teacher ACR = {ratio:.3f}" in text
    assert "training wall time 5 / 100 s = 0.050 (20× less)" in text

    # The n = 100,000 run covers 4 images: the table puts the n = 10,000 run restricted to
    # those images next to it, and the claim compares the two on them.
    assert f"| Gaussian (n = 10,000, same 4 images, train 10 s) | 4 | " \
           f"{runs['gaussian'][:4].mean():.3f} |" in text
    large = runs["gaussian-100k"] - runs["gaussian"][:4]
    assert f"Gaussian ACR at n = 100,000 − at n = 10,000 = {large.mean():+.3f}" in text

    assert (out / "curves-sigma0.5.png").stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["smoothmix|0.5|10000"][0] == pytest.approx(runs["smoothmix"].mean(), abs=1e-6)
    assert summary["crt|0.5|10000"][1] == 5.0


def test_grid_report_cells_are_mean_and_paired_standard_error(tmp_path):
    rng = np.random.default_rng(1)
    idx = np.arange(12)
    grid = [0.25, 0.5]
    hits = {}
    for method in ("gaussian", "consistency"):
        radius = rng.choice([0.0, 0.25, 0.5], len(idx))
        correct = rng.random(len(idx)) < 0.9
        _write_tsv(tmp_path / f"{method}-sigma0.5-radii.tsv", idx, radius, correct)
        hits[method] = np.stack([correct & (radius >= r) for r in grid], axis=1) * 100.0
    text = write_grid_report(tmp_path, grid, "Grid.")
    assert text == (tmp_path / "radii.md").read_text()
    for method, label in (("gaussian", "Gaussian"), ("consistency", "Consistency")):
        mean, se = hits[method].mean(0), hits[method].std(0, ddof=1) / np.sqrt(len(idx))
        assert (f"| {label} | 12 | {mean[0]:.2f} ± {se[0]:.2f} | {mean[1]:.2f} ± "
                f"{se[1]:.2f} |") in text
    diff = hits["consistency"] - hits["gaussian"]
    mean, se = diff.mean(0), diff.std(0, ddof=1) / np.sqrt(len(idx))
    assert f"| Consistency − Gaussian | 12 | {mean[0]:+.2f} ± {se[0]:.2f} |" in text
    assert write_grid_report(tmp_path / "none", grid, "Grid.") is None


def test_paired_gain_uses_only_the_shared_images(tmp_path):
    _write_tsv(tmp_path / "a.tsv", [0, 1, 2], [1.0, 2.0, 3.0], [True, True, False])
    _write_tsv(tmp_path / "b.tsv", [1, 2, 3], [1.0, 1.0, 9.0], [True, True, True])
    a, b = read_certification_tsv(tmp_path / "a.tsv"), read_certification_tsv(tmp_path / "b.tsv")
    gain, se, k = paired_gain(a, b)
    # images 1 and 2: differences 1 − 2 = −1 and 1 − 0 = +1
    assert k == 2 and gain == pytest.approx(0.0) and se == pytest.approx(np.sqrt(2) / np.sqrt(2))


def test_grid_report_pairs_each_method_with_its_reference_run(tmp_path):
    # the same method in two directories (say bf16 and fp32): one paired row per method
    # both hold, over the images both certified (here the reference stops at image 8)
    rng = np.random.default_rng(2)
    grid = [0.25, 0.5]
    here, there = tmp_path / "bf16", tmp_path / "fp32"
    here.mkdir(), there.mkdir()
    hits = {}
    for directory, images in ((here, 12), (there, 8)):
        radius = rng.choice([0.0, 0.25, 0.5], images)
        correct = rng.random(images) < 0.9
        _write_tsv(directory / "gaussian-sigma0.5-radii.tsv", np.arange(images), radius,
                   correct)
        hits[directory.name] = np.stack([correct & (radius >= r) for r in grid], 1) * 100.0
    _write_tsv(here / "smoothmix-sigma0.5-radii.tsv", np.arange(12), np.zeros(12),
               np.ones(12, bool))  # no reference run: no bf16 − fp32 row
    text = write_grid_report(here, grid, "Grid.", reference=there, labels=("bf16", "fp32"))
    diff = hits["bf16"][:8] - hits["fp32"]
    mean, se = diff.mean(0), diff.std(0, ddof=1) / np.sqrt(8)
    assert (f"| Gaussian bf16 − Gaussian fp32 | 8 | {mean[0]:+.2f} ± {se[0]:.2f} | "
            f"{mean[1]:+.2f} ± {se[1]:.2f} |") in text
    assert "SmoothMix bf16" not in text and "| SmoothMix − Gaussian | 12 |" in text


@pytest.mark.parametrize("kwargs", [{"reference": "elsewhere"}, {"labels": ("a", "b")},
                                    {"reference": "elsewhere", "labels": ("a", "")}])
def test_grid_report_refuses_a_reference_without_names(tmp_path, kwargs):
    _write_tsv(tmp_path / "gaussian-sigma0.5-radii.tsv", [0, 1], [0.5, 0.5], [True, True])
    with pytest.raises(ValueError, match="reference|labels"):
        write_grid_report(tmp_path, [0.25], "Grid.", **kwargs)
    assert not (tmp_path / "radii.md").exists()
