"""Tables and curves (smoothsk.io.report) as matplotlib and scikit-learn users expect."""

import numpy as np
import pytest
import torch

from smoothsk import certify
from smoothsk.io.report import (
    CertificationRun,
    markdown_table,
    plot_certified_accuracy,
    run_labels,
)


def _run(name, radius, correct, **settings):
    radius = np.asarray(radius, float)
    return CertificationRun(name, np.arange(len(radius)), radius, np.asarray(correct, bool),
                            settings or None)


def test_plotting_draws_into_a_given_axes_and_leaves_the_backend_alone(tmp_path):
    import matplotlib
    from matplotlib.figure import Figure

    backend = matplotlib.get_backend()
    figure = Figure()
    ax = figure.add_subplot()
    run = _run("a", [0.1, 0.5, 0.0], [True, True, False])
    assert plot_certified_accuracy([run], ax=ax) is ax
    assert len(ax.lines) == 1 and ax.get_ylabel() == "certified accuracy (%)"
    # the curve is the run's certified accuracy
    x, y = ax.lines[0].get_data()
    np.testing.assert_allclose(y, 100 * run.certified_accuracy(x))
    assert matplotlib.get_backend() == backend  # never matplotlib.use(...)
    written = plot_certified_accuracy([run], tmp_path / "c.svg")
    assert (tmp_path / "c.svg").read_text().count("<svg") == 1 and written.lines


def test_a_certificate_plots_with_its_true_labels():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        net[1].bias.zero_()
    X = np.array([[2.0, 0.0], [-2.0, 0.0], [1.0, 0.0]], np.float32)
    cert = certify(net, X, 0.5, n0=20, n=200, random_state=0)
    y = np.array([0, 1, 1])  # the third is certified as class 0: wrong
    with pytest.raises(ValueError, match="y_true"):
        plot_certified_accuracy([cert])
    ax = plot_certified_accuracy([cert], y_true=y)
    x, curve = ax.lines[0].get_data()
    correct = cert.is_correct(y)
    expected = [100 * np.mean(correct & (cert.radius >= r)) for r in x]
    np.testing.assert_allclose(curve, expected)
    assert "n = 200" in ax.get_title()


def test_tables_and_legends_name_runs_alike_and_name_the_data_sets_when_they_differ():
    a = _run("gaussian-sigma0.5", [0.1], [True], method="gaussian", sigma=0.5,
             dataset="fashion-mnist")
    b = _run("smoothmix-sigma0.5", [0.2], [True], method="smoothmix", sigma=0.5,
             dataset="cifar10")
    assert run_labels([a, b]) == ["Gaussian, σ = 0.5 (fashion-mnist)",
                                  "SmoothMix, σ = 0.5 (cifar10)"]
    assert run_labels([a]) == ["Gaussian, σ = 0.5"]
    assert "| Gaussian, σ = 0.5 (fashion-mnist) |" in markdown_table([a, b], [0.0])
    twin = _run("gaussian-seed2", [0.3], [True], method="gaussian", sigma=0.5,
                dataset="fashion-mnist")
    # two runs of one method and σ stay apart by their file names
    assert run_labels([a, twin]) == ["Gaussian, σ = 0.5 [gaussian-sigma0.5]",
                                     "Gaussian, σ = 0.5 [gaussian-seed2]"]


HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"


def test_crafted_tsvs_and_sidecars_give_one_clear_error_or_lose_only_descriptions(tmp_path):
    import json

    from smoothsk.io.report import read_certification_tsv

    big = tmp_path / "big.tsv"
    big.write_text(HEADER + "0\t" + "x" * 200_000 + "\t1\t0.5\t1\t0:00:01\n")
    with pytest.raises(ValueError, match="big.tsv, line 2: not a certification TSV row"):
        read_certification_tsv(big)
    bad = tmp_path / "bad.tsv"
    bad.write_text(HEADER + "0\t" + "y" * 5000 + "\t1\tabc\t1\t0\n")
    with pytest.raises(ValueError, match="line 2: cannot parse") as error:
        read_certification_tsv(bad)
    assert len(str(error.value)) < 400  # the row is shown shortened
    tsv = tmp_path / "r.tsv"
    tsv.write_text(HEADER + "0\t1\t1\t0.5\t1\t0:00:01\n")
    sidecar = tsv.with_name("r.tsv.run.json")
    for settings in ({"method": "gaussian", "sigma": "abc"}, {"method": 5, "sigma": 0.5},
                     {"n": [1, 2], "alpha": "x", "sigma": 0.5}, {"describes": 7},
                     {"dataset": {"a": 1}, "bound": 3, "noise": []}):
        sidecar.write_text(json.dumps(settings))
        run = read_certification_tsv(tsv)
        assert run.label == "r"  # no method with a valid σ: the file's name
        plot_certified_accuracy([run, run], tmp_path / "p.svg")
        markdown_table([run], [0.0])
    sidecar.write_text(json.dumps({"describes": {"method": "smoothmix", "sigma": 0.5},
                                   "n": 1000, "alpha": 0.001}))
    assert read_certification_tsv(tsv).label == "SmoothMix, σ = 0.5"


def test_dollar_signs_in_names_labels_and_titles_are_text(tmp_path):
    from smoothsk.io.report import read_certification_tsv

    tsv = tmp_path / "a$b^c_{d}.tsv"
    tsv.write_text(HEADER + "0\t1\t1\t0.5\t1\t0:00:01\n")
    ax = plot_certified_accuracy([read_certification_tsv(tsv)], tmp_path / "p.svg",
                                 title="σ = $0.5")
    svg = (tmp_path / "p.svg").read_text()
    assert "a$b^c_{d}" in svg and "σ = $0.5" in svg  # shown as written, not as math
    assert ax.get_legend().get_texts()[0].get_text() == r"a\$b^c_{d}"


def test_a_run_stopped_early_says_so_in_tables(tmp_path):
    import json

    from smoothsk.io.report import read_certification_tsv

    tsv = tmp_path / "r.tsv"
    tsv.write_text(HEADER + "".join(f"{i}\t1\t1\t0.5\t1\t0:00:01\n" for i in range(10)))
    tsv.with_name("r.tsv.run.json").write_text(json.dumps({"indices": 40}))
    run = read_certification_tsv(tsv)
    assert run.planned == 40 and run.size_text == "10 of 40"
    assert "| r | 10 of 40 |" in markdown_table([run], [0.0])
    tsv.with_name("r.tsv.run.json").write_text(json.dumps({"indices": 10}))
    assert read_certification_tsv(tsv).size_text == "10"
