"""certify_radii: the certified-accuracy curve at fixed radii, one sequential run per input."""

import numpy as np
import pytest
from conftest import LinearBinary, points_at_radii
from scipy.stats import binom, norm

from smoothsk import (
    GaussianAugClassifier,
    certified_accuracy,
    certify,
    certify_radii,
    lower_confidence_bound,
)
from smoothsk.certification.adaptive import round_sizes

GRID = np.array([0.25, 0.5, 0.75, 1.0, 1.25])


@pytest.fixture(scope="module")
def linear():
    rng = np.random.default_rng(5)
    return LinearBinary(rng.normal(size=6), 0.2), rng


def test_no_radius_of_the_grid_is_certified_beyond_the_truth_more_than_alpha(linear):
    model, rng = linear
    sigma, alpha, trials = 0.5, 0.05, 1500
    # true radii just below each grid radius (p within 0.01 of its threshold) and spread
    near = np.repeat(GRID, trials // (2 * len(GRID)))
    p_near = norm.cdf(near / sigma) - rng.uniform(0.0, 0.01, size=len(near))
    p_spread = rng.uniform(0.55, 0.995, size=trials - len(near))
    truth = sigma * norm.ppf(np.r_[p_near, p_spread])
    X = points_at_radii(model, truth, rng)
    result = certify_radii(model, X, sigma, GRID, max_n=4000, alpha=alpha, batch_size=8192,
                           random_state=3)
    wrong = (result.radius > truth + 1e-9) | (~result.abstained
                                               & (result.prediction != model.true_class(X)))
    # Each input's reported radius is wrong with probability <= alpha (module docstring),
    # independently across inputs: failures <= Bin(trials, alpha), whose 1 - 1e-4 quantile
    # a sound procedure exceeds with probability < 1e-4.
    assert wrong.sum() <= binom.ppf(1 - 1e-4, trials, alpha)
    assert (~result.abstained).mean() > 0.5 and len(np.unique(result.samples)) > 5
    # downward closed, and the radius is the largest certified grid radius
    assert np.all(result.certified[:, 1:] <= result.certified[:, :-1])
    expected = np.where(result.certified.any(1),
                        GRID[np.maximum(result.certified.sum(1) - 1, 0)], 0.0)
    np.testing.assert_array_equal(result.radius, expected)


def test_peeking_at_clopper_pearson_on_the_same_rounds_fails_where_betting_holds():
    """The failure a multi-radius sequential run invites: checking CERTIFY's bound at α
    after every round.  With p just below a threshold, over the same 30 looks, it claims
    the radius in far more than α of the streams."""
    rng = np.random.default_rng(0)
    alpha, streams, threshold = 0.05, 20_000, 0.8
    sizes = round_sizes(16, 1.25, 4000)
    p = threshold - 0.01
    draws = np.diff(np.r_[0, sizes])
    hits = np.cumsum(rng.binomial(draws, p, size=(streams, len(sizes))), axis=1)
    peeked = (lower_confidence_bound(hits, sizes, alpha) >= threshold).any(axis=1)
    assert peeked.mean() > 2 * alpha
    from smoothsk.certification.adaptive import decision_rule

    rule = decision_rule("betting", threshold, alpha, sizes)
    claimed = np.zeros(streams, dtype=bool)
    for j, size in enumerate(sizes):
        claimed |= rule(hits[:, j], int(size))[0]
    # Ville: at most alpha of the streams ever claim; 1 - 1e-4 binomial quantile
    assert claimed.sum() <= binom.ppf(1 - 1e-4, streams, alpha)


def test_the_curve_matches_certify_with_far_fewer_draws(linear):
    model, rng = linear
    sigma = 0.5
    truth = sigma * norm.ppf(rng.uniform(0.4, 0.999, size=300))
    X = points_at_radii(model, np.abs(truth), rng)
    y = model.true_class(X)
    curve = certify_radii(model, X, sigma, GRID, max_n=20_000, random_state=0,
                          batch_size=20_000)
    full = certify(model, X, sigma, n=20_000, random_state=0, batch_size=20_000)
    ours, theirs = certified_accuracy(y, curve, GRID), certified_accuracy(y, full, GRID)
    # CA differences are within 3 binomial SEs of CERTIFY's (sqrt(p(1-p)/300) <= 0.029)
    assert np.all(np.abs(ours - theirs) <= 3 * 0.029)
    assert curve.samples.mean() < 0.4 * 20_000


def test_results_do_not_depend_on_batch_size_or_splitting(linear):
    model, rng = linear
    X = rng.normal(size=(12, 6))
    kwargs = dict(max_n=2000, random_state=7)
    whole = certify_radii(model, X, 0.5, GRID, batch_size=10_000, **kwargs)
    small = certify_radii(model, X, 0.5, GRID, batch_size=33, **kwargs)
    later = certify_radii(model, X[5:], 0.5, GRID, batch_size=500, index_offset=5, **kwargs)
    np.testing.assert_array_equal(small.certified, whole.certified)
    np.testing.assert_array_equal(small.samples, whole.samples)
    np.testing.assert_array_equal(later.certified, whole.certified[5:])


def test_bad_grids_are_refused(linear):
    model, rng = linear
    X = rng.normal(size=(2, 6))
    for bad in ([], [-0.1, 0.5], [np.nan], np.linspace(0, 1, 1001)):
        with pytest.raises(ValueError, match="radii|at most"):
            certify_radii(model, X, 0.5, bad, max_n=10)
    result = certify_radii(model, X, 0.5, [0.5, 0.25, 0.5], max_n=100)
    np.testing.assert_array_equal(result.radii, [0.25, 0.5])  # sorted, deduplicated


def test_estimator_certify_radii_takes_labels(digits):
    X, y = digits
    labels = np.array(list("abcdefghij"))[y]
    clf = GaussianAugClassifier(sigma=0.25, max_epochs=5, n=2000, random_state=0)
    clf.fit(X[:800], labels[:800])
    result = clf.certify_radii(X[800:900], [0.0, 0.25, 0.5], y=labels[800:900])
    accuracy = certified_accuracy(labels[800:900], result, [0.0, 0.25, 0.5])
    assert accuracy[0] > 0.6 and np.all(np.diff(accuracy) <= 0)
    wrong = result.classes[result.prediction] != labels[800:900]
    assert np.all(result.samples[wrong] == 0)  # inputs predicted wrong drew nothing more


# ----------------------------------------------------------------------------- anytime CERTIFY
def test_anytime_certify_is_wrong_at_most_alpha_rate(linear):
    model, rng = linear
    sigma, alpha, trials = 0.5, 0.05, 1500
    truth = sigma * norm.ppf(rng.uniform(0.55, 0.995, size=trials))
    X = points_at_radii(model, truth, rng)
    cert = certify(model, X, sigma, n=3000, alpha=alpha, batch_size=8192, random_state=2,
                   sequential=True, tolerance=0.05)
    certified = cert.prediction != -1
    wrong = certified & ((cert.prediction != model.true_class(X)) | (cert.radius > truth))
    # each input fails with probability <= alpha (grid CS at α/2 + Clopper–Pearson at α/2
    # at the budget): failures <= Bin(trials, alpha), 1 - 1e-4 quantile
    assert wrong.sum() <= binom.ppf(1 - 1e-4, trials, alpha)
    assert certified.mean() > 0.5 and cert.sequential and cert.samples.max() <= 3000
    assert (cert.samples < 3000).mean() > 0.2  # some inputs stopped early


def test_anytime_certify_trades_draws_for_radius_through_tolerance(linear):
    from smoothsk import average_certified_radius

    model, rng = linear
    sigma = 0.5
    X = points_at_radii(model, sigma * norm.ppf(rng.uniform(0.45, 0.999, size=200)), rng)
    y = model.true_class(X)
    full = certify(model, X, sigma, n=20_000, random_state=0, batch_size=20_000)
    loose = certify(model, X, sigma, n=20_000, random_state=0, batch_size=20_000,
                    sequential=True, tolerance=0.2)
    tight = certify(model, X, sigma, n=20_000, random_state=0, batch_size=20_000,
                    sequential=True, tolerance=0.02)
    assert loose.samples.mean() < tight.samples.mean()
    assert average_certified_radius(y, loose) < average_certified_radius(y, tight)
    # a tight tolerance comes within a few percent of CERTIFY's ACR at the same budget
    assert average_certified_radius(y, tight) > 0.95 * average_certified_radius(y, full)
    with pytest.raises(ValueError, match="tolerance"):
        certify(model, X[:2], sigma, n=100, sequential=True, tolerance=0.0)
    with pytest.raises(ValueError, match="sequential=True"):
        certify(model, X[:2], sigma, n=100, sequential=True, bound="two-class")
