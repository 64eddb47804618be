"""The two-class bound and the randomized interval: sound where the runner-up-only bound
is not, never much below the binary bound, exact coverage for the randomized bounds."""

import itertools
import json

import numpy as np
import pytest
import torch
from scipy.stats import binom, multinomial, norm

from smoothsk import certify
from smoothsk.certification.bounds import (
    lower_confidence_bound,
    randomized_lower_bound,
    randomized_upper_bound,
    upper_confidence_bound,
)
from smoothsk.certification.radius import certified_radius, uniform_variates


def _all_outcomes(n: int, classes: int = 3) -> np.ndarray:
    return np.array([c for c in itertools.product(range(n + 1), repeat=classes)
                     if sum(c) == n])


def test_delattre_counterexample_exactly_our_bound_covers_the_runner_up_only_does_not():
    # Delattre et al. (AISTATS 2025, counter_example.py): p = (0.5, 0.05, 0.45), n = 10,
    # α = 0.05, class 0 selected; every probability below is exact (all 66 outcomes).
    p, n, alpha = np.array([0.5, 0.05, 0.45]), 10, 0.05
    outcomes = _all_outcomes(n)
    weights = multinomial.pmf(outcomes, n, p)
    # Ours: p̲_A and p̄_B ≥ max_{c≠A} p_c hold together with probability ≥ 1 − α.
    top = np.zeros(len(outcomes), dtype=int)
    _, _, pa_lower, pb_upper = certified_radius(top, outcomes, 1.0, alpha, bound="two-class")
    covered = (pa_lower <= p[0]) & (pb_upper >= p[1:].max())
    assert weights[covered].sum() >= 1 - alpha
    # Their event, transcribed: the observed gap to the runner-up exceeds the gap of the
    # bounds.  Bounding the runner-up alone (class 1, the observed runner-up of the
    # likely ordering x0 > x1 > x2) at the unadjusted level covers 0.789; bounding every
    # class with the Bonferroni split covers more than 0.95.  (Their two-sided intervals
    # at level a are our one-sided bounds at a/2.)
    x0, x1, x2 = outcomes.T
    observed_gap = np.minimum(x0 - x1, x0 - x2) / n
    unadjusted = observed_gap > (lower_confidence_bound(x0, n, alpha / 2)
                                 - upper_confidence_bound(x1, n, alpha / 2))
    split = 2 * alpha / 3
    bonferroni = observed_gap > np.minimum(
        lower_confidence_bound(x0, n, split / 2) - upper_confidence_bound(x1, n, split / 2),
        lower_confidence_bound(x0, n, split / 2) - upper_confidence_bound(x2, n, split / 2))
    assert weights[unadjusted].sum() == pytest.approx(0.7890, abs=1e-4)
    assert weights[bonferroni].sum() >= 1 - alpha


def test_the_radius_is_the_transcribed_formula():
    """r = σ/2 (Φ⁻¹(CP_lower(n_A, n, α/2)) − Φ⁻¹(min(CP_upper(max_{c≠A} n_c, n, α/2),
    1 − p̲_A))), on fixed counts where every ingredient matters: a runner-up that is not
    the second index, p̲_A below 1/2, and a row where 1 − p̲_A is the smaller bound."""
    counts = np.array([[410, 100, 290, 200], [700, 5, 290, 5], [460, 440, 60, 40],
                       [300, 320, 200, 180]])
    top = np.array([0, 0, 0, 1])
    n, alpha, sigma = 1000, 0.01, 0.5
    certified, radius, pa_lower, pb_upper = certified_radius(top, counts, sigma, alpha,
                                                             bound="two-class")
    for i in range(len(counts)):
        others = np.delete(counts[i], top[i])
        lower = lower_confidence_bound(counts[i, top[i]], n, alpha / 2)
        upper = min(upper_confidence_bound(others.max(), n, alpha / 2), 1 - lower)
        assert pa_lower[i] == pytest.approx(lower, rel=1e-12)
        assert pb_upper[i] == pytest.approx(upper, rel=1e-12)
        expected = sigma / 2 * (norm.ppf(lower) - norm.ppf(upper)) if lower > upper else 0
        assert radius[i] == pytest.approx(expected, rel=1e-12)
        assert certified[i] == (lower > upper)
    assert certified[0] and pa_lower[0] < 0.5  # certified below one half
    assert not certified[2] and not certified[3]


def test_never_below_the_binary_bound_at_half_alpha_and_certifies_below_one_half():
    rng = np.random.default_rng(0)
    counts = rng.multinomial(2000, [0.46, 0.3, 0.14, 0.1], size=400)
    top = np.zeros(400, dtype=int)
    certified, radius, pa_lower, pb_upper = certified_radius(top, counts, 0.5, 0.001,
                                                             bound="two-class")
    binary_half = certified_radius(top, counts, 0.5, 0.0005)[1]
    assert np.all(radius >= binary_half - 1e-12)
    # p_A ≈ 0.46 < 1/2: the binary bound certifies nothing, the two-class bound most
    assert not certified_radius(top, counts, 0.5, 0.001)[0].any()
    assert certified.mean() > 0.9 and np.all(pa_lower[certified] < 0.5)
    np.testing.assert_allclose(radius[certified], 0.25 * (norm.ppf(pa_lower) -
                                                          norm.ppf(pb_upper))[certified])


def test_violation_rate_of_the_two_class_radius_on_an_analytic_three_class_classifier():
    """f(x + δ) = 0 if u > 0, else 1 if v > 0, else 2, with u, v the coordinates along two
    orthogonal directions: p_0 = Φ(u/σ), p_1 = (1 − p_0) Φ(v/σ), p_2 the rest, in closed
    form.  The two-class radius from the true probabilities is R*; a certificate above R*
    is a failure of the bounds, which the union bound keeps below α.  Failures over 1,000
    inputs are at most Bin(1000, α); its 1 − 1e-4 quantile bounds them."""

    class ThreeWay(torch.nn.Module):
        def forward(self, x):
            u, v = x[:, 0], x[:, 1]
            one_hot = torch.stack([u > 0, (u <= 0) & (v > 0), (u <= 0) & (v <= 0)], dim=1)
            return one_hot.float()

    sigma, alpha, trials = 0.5, 0.05, 1000
    rng = np.random.default_rng(3)
    u = sigma * norm.ppf(rng.uniform(0.40, 0.48, trials))  # p_0 just below 1/2
    v = sigma * norm.ppf(rng.uniform(0.5, 0.6, trials))  # p_1, p_2 in [0.21, 0.36] < p_0
    X = np.stack([u, v, np.zeros(trials)], axis=1).astype(np.float32)
    p0 = norm.cdf(u / sigma)
    p1 = (1 - p0) * norm.cdf(v / sigma)
    p_b = np.maximum(p1, 1 - p0 - p1)
    true_radius = sigma / 2 * (norm.ppf(p0) - norm.ppf(p_b))
    cert = certify(ThreeWay(), X, sigma, n0=100, n=2000, alpha=alpha, random_state=1,
                   bound="two-class", batch_size=4000)
    failed = (cert.prediction == 0) & (cert.radius > true_radius + 1e-9)
    failed |= (cert.prediction > 0)  # class 0 is the smoothed prediction everywhere
    assert failed.sum() <= binom.ppf(1 - 1e-4, trials, alpha)
    assert (cert.prediction == 0).mean() > 0.5  # and it does certify, at p_A < 1/2
    assert cert.bound == "two-class" and cert.pb_upper is not None


def _exact_coverage(bound, k_values, n, p, alpha, lower: bool, grid=4_001):
    """P(bound misses p) over X ~ Bin(n, p) and U ~ Uniform(0, 1), by quadrature in U."""
    u = (np.arange(grid) + 0.5) / grid
    missed = 0.0
    for k in k_values:
        values = bound(np.full(grid, k), n, alpha, u)
        miss = (values > p) if lower else (values < p)
        missed += binom.pmf(k, n, p) * miss.mean()
    return missed


@pytest.mark.parametrize("p", [0.13, 0.5, 0.87])
def test_randomized_bounds_have_exact_coverage_and_are_never_looser(p):
    n, alpha = 20, 0.05
    k = np.arange(n + 1)
    low = _exact_coverage(randomized_lower_bound, k, n, p, alpha, lower=True)
    high = _exact_coverage(randomized_upper_bound, k, n, p, alpha, lower=False)
    # exact up to the midpoint rule in U: at most 1/(2 · 4,001) in all
    assert abs(low - alpha) < 1e-3 and abs(high - alpha) < 1e-3
    plain = binom.pmf(k, n, p)[lower_confidence_bound(k, n, alpha) > p].sum()
    assert plain < alpha - 0.005  # the plain bound is conservative here
    for u in (0.0, 0.3, 1.0):
        assert np.all(randomized_lower_bound(k, n, alpha, u) >= lower_confidence_bound(
            k, n, alpha) - 1e-12)
        assert np.all(randomized_upper_bound(k, n, alpha, u) <= upper_confidence_bound(
            k, n, alpha) + 1e-12)
    np.testing.assert_allclose(randomized_lower_bound(k, n, alpha, 1.0),
                               lower_confidence_bound(k, n, alpha), atol=1e-12)


@pytest.mark.slow
def test_randomized_certificates_are_seeded_by_index_and_recorded(linear_small):
    net, X = linear_small
    whole = certify(net, X, 0.5, n0=20, n=300, random_state=5, interval="randomized")
    head = certify(net, X[:7], 0.5, n0=20, n=300, random_state=5, interval="randomized")
    tail = certify(net, X[7:], 0.5, n0=20, n=300, random_state=5, interval="randomized",
                   index_offset=7)
    np.testing.assert_array_equal(whole.uniforms, np.concatenate([head.uniforms, tail.uniforms]))
    np.testing.assert_array_equal(whole.radius, np.concatenate([head.radius, tail.radius]))
    np.testing.assert_array_equal(whole.uniforms, uniform_variates(5, np.arange(len(X))))
    plain = certify(net, X, 0.5, n0=20, n=300, random_state=5)
    assert np.all(whole.pa_lower >= plain.pa_lower - 1e-12)
    assert whole.interval == "randomized" and plain.uniforms is None
    parallel = certify(net, X, 0.5, n0=20, n=300, random_state=5, interval="randomized",
                       bound="two-class", n_jobs=2, chunk_size=4)
    serial = certify(net, X, 0.5, n0=20, n=300, random_state=5, interval="randomized",
                     bound="two-class")
    np.testing.assert_array_equal(parallel.radius, serial.radius)
    np.testing.assert_array_equal(parallel.pb_upper, serial.pb_upper)


@pytest.fixture
def linear_small():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    X = np.random.default_rng(0).uniform(0, 1, (15, 4)).astype(np.float32)
    return net, X


def test_bad_choices_are_refused(linear_small):
    net, X = linear_small
    with pytest.raises(ValueError, match="The .bound. parameter of certify must be a str among"):
        certify(net, X, 0.5, n=10, bound="three-class")
    with pytest.raises(ValueError, match="The .interval. parameter of certify must be a str among"):
        certify(net, X, 0.5, n=10, interval="wilson")


def test_a_resumed_run_refuses_another_bound(digits, tmp_path):
    from smoothsk import GaussianAugClassifier
    from smoothsk.io.runs import RunMismatchError, certify_to_tsv

    X, y = digits
    clf = GaussianAugClassifier(max_epochs=1, module__hidden_units=(8,), random_state=0)
    clf.fit(X[:60], y[:60])
    out = tmp_path / "c.tsv"
    kwargs = dict(run_info={"dataset": "digits"}, n0=10, n=50, alpha=0.01, batch_size=100,
                  random_state=0)
    certify_to_tsv(clf, X[:4], y[:4], np.arange(4), out, bound="two-class", **kwargs)
    sidecar = json.loads(out.with_name(out.name + ".run.json").read_text())
    assert sidecar["bound"] == "two-class" and sidecar["interval"] == "clopper-pearson"
    with pytest.raises(RunMismatchError, match="bound"):
        certify_to_tsv(clf, X[:6], y[:6], np.arange(6), out, **kwargs)


def test_the_command_line_records_the_bound_and_the_report_names_it(digits, tmp_path, capsys):
    from smoothsk import GaussianAugClassifier
    from smoothsk.cli import main
    from smoothsk.io.model_file import save_model
    from smoothsk.io.report import read_certification_tsv

    X, y = digits
    clf = GaussianAugClassifier(max_epochs=1, module__hidden_units=(8,), random_state=0)
    save_model(clf.fit(X[:60], y[:60]), tmp_path / "m.smoothsk")
    out = tmp_path / "c.tsv"
    threads = torch.get_num_threads()
    try:
        code = main(["certify", str(tmp_path / "m.smoothsk"), "--dataset", "digits", "--max",
                     "3", "--n0", "10", "--n", "60", "--bound", "two-class", "--interval",
                     "randomized", "--quiet", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, capsys.readouterr().err
    sidecar = json.loads(out.with_name(out.name + ".run.json").read_text())
    assert (sidecar["bound"], sidecar["interval"]) == ("two-class", "randomized")
    run = read_certification_tsv(out)
    run.settings["describes"] = {"method": "gaussian", "sigma": 0.25}
    assert run.label == "Gaussian, σ = 0.25, two-class bound"
