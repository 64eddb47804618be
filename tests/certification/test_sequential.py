"""The betting confidence sequence behind ``certify_radius(test="betting")``: its wealth
is the mixture martingale of the docs, its tables are the wealth's thresholds, and it
certifies falsely at most at rate α however often it looks, where peeking at a fixed
Clopper–Pearson bound does not."""

import numpy as np
import pytest
from conftest import LinearBinary, points_at_radii
from scipy.integrate import quad
from scipy.stats import beta, binom, norm

from smoothsk import certify, certify_radius
from smoothsk.certification.bounds import lower_confidence_bound
from smoothsk.certification.sequential import BettingTest, betting_bounds


@pytest.fixture
def linear():
    return LinearBinary(w=[0.6, -0.8, 0.0], b=0.1)


@pytest.mark.parametrize("threshold", [0.5, norm.cdf(0.5), norm.cdf(2.0)])
def test_wealth_is_the_mixture_integral_and_a_martingale_at_the_threshold(threshold):
    test = BettingTest(threshold, 0.01)
    prior_mass = beta(0.5, 0.5).sf(threshold)
    for k, t in [(0, 0), (3, 5), (40, 50), (170, 200)]:
        # the integral of the module docstring, by quadrature
        def integrand(q, k=k, t=t):
            return ((q / threshold) ** k * ((1 - q) / (1 - threshold)) ** (t - k)
                    * beta(0.5, 0.5).pdf(q) / prior_mass)

        expected = quad(integrand, threshold, 1, limit=200)[0]
        np.testing.assert_allclose(np.exp(test.log_wealth(k, t)), expected, rtol=1e-6)
    # at p = p* one draw leaves the expected wealth unchanged (a martingale): the
    # supermartingale property for p ≤ p* follows as the docstring says
    for t in (1, 10, 100, 1000):
        k = np.arange(t)
        before = np.exp(test.log_wealth(k, t - 1 + 0 * k))
        after = threshold * np.exp(test.log_wealth(k + 1, t)) + \
            (1 - threshold) * np.exp(test.log_wealth(k, t))
        # where decisions are made (wealth between 1e-2 and 1e6, so any α ≥ 1e-6); far
        # below, the incomplete beta's tail underflows, which can only lose certificates
        relevant = (before > 1e-2) & (before < 1e6)
        assert relevant.sum() > 0
        np.testing.assert_allclose(after[relevant], before[relevant], rtol=1e-8)


def test_tables_are_the_wealth_thresholds():
    test = BettingTest(norm.cdf(1.0), 0.001)
    target = np.log(1000)
    for t in (1, 47, 100, 1000, 5000):
        wealth = test.log_wealth(np.arange(t + 1), t)
        mirror = test.log_futility_wealth(np.arange(t + 1), t)
        above = np.flatnonzero(wealth >= target)
        assert test.certify_counts(t) == (above[0] if len(above) else t + 1)
        below = np.flatnonzero(mirror >= target)
        assert test.futile_counts(t) == (below[-1] if len(below) else -1)
    # certifying r = σ needs at least 47 draws even if all vote for the class: Φ(1)^47
    # ≈ 3e-4 < α, but the mixture pays for its prior
    assert test.certify_counts(46) == 47 and test.certify_counts(47) == 47


def _first_claims(p, threshold, looks, trials, rng, claim):
    """Whether each of ``trials`` Bernoulli(p) streams is ever claimed ``p ≥ threshold``
    by ``claim(votes, draws)`` at the draw counts ``looks``."""
    claimed = np.zeros(trials, dtype=bool)
    votes = np.zeros(trials, dtype=np.int64)
    previous = 0
    for t in looks:
        votes += rng.binomial(t - previous, p, size=trials)
        claimed |= claim(votes, t)
        previous = t
    return claimed


@pytest.mark.slow
def test_false_claims_stay_below_alpha_however_often_it_looks_and_peeking_does_not():
    # p just below the threshold: every claim "p ≥ p*" is false.  Claims of a sound test
    # are at most Binomial(trials, α); its 1 − 1e-6 quantile bounds them.
    rng = np.random.default_rng(0)
    threshold, alpha, trials = norm.cdf(0.5), 0.05, 20_000
    p = threshold - 0.005
    looks = np.arange(10, 3001, 10)  # 300 looks
    test = BettingTest(threshold, alpha)
    claims = _first_claims(p, threshold, looks, trials, rng, test.certified)
    assert claims.sum() <= binom.ppf(1 - 1e-6, trials, alpha)
    # The failure it guards against: a (1 − α) Clopper–Pearson bound checked at every look
    # is not a confidence sequence; its false claims are several times α.
    peeking = _first_claims(p, threshold, looks, trials, rng,
                            lambda k, t: lower_confidence_bound(k, t, alpha) >= threshold)
    assert peeking.mean() > 3 * alpha


@pytest.mark.slow
@pytest.mark.parametrize("sigma,radius", [(0.25, 0.25), (0.5, 0.2)])
def test_violation_rate_on_the_analytic_linear_classifier(linear, sigma, radius):
    # True radii 0.9 r … 0.99 r: p_A < Φ(r/σ), so every "certified" is false, and the
    # inputs stop at different times.  Claims ≤ Bin(1500, α) at its 1 − 1e-4 quantile.
    rng = np.random.default_rng(1)
    trials, alpha = 1500, 0.05
    X = points_at_radii(linear, radius * rng.uniform(0.9, 0.99, trials), rng)
    result = certify_radius(linear, X, sigma, radius, n0=50, n=4000, alpha=alpha,
                            random_state=2, test="betting")
    assert result.test == "betting"
    assert int(result.certified.sum()) <= binom.ppf(1 - 1e-4, trials, alpha)
    assert len(np.unique(result.samples)) > 3  # stops spread over the rounds


@pytest.mark.slow
def test_agrees_with_certify_and_the_rounds_on_clear_cut_inputs(linear):
    rng = np.random.default_rng(3)
    sigma, radius, n = 0.5, 0.25, 20_000
    true_radii = np.concatenate([rng.uniform(0.0, 0.15, 150), rng.uniform(0.4, 1.5, 150)])
    X = points_at_radii(linear, true_radii, rng)
    fixed = certify(linear, X, sigma, n0=100, n=n, alpha=0.001, random_state=4)
    betting = certify_radius(linear, X, sigma, radius, n0=100, n=n, alpha=0.001,
                             random_state=4, test="betting")
    rounds = certify_radius(linear, X, sigma, radius, n0=100, n=n, alpha=0.001,
                            random_state=4, test="rounds")
    np.testing.assert_array_equal(betting.selection_counts, fixed.selection_counts)
    np.testing.assert_array_equal(betting.certified, true_radii > radius)
    np.testing.assert_array_equal(betting.certified, rounds.certified)
    # (their draws are compared in benchmarks/sequential_tests.py)


def test_bounds_are_the_sequence_and_agree_with_the_decision(linear):
    rng = np.random.default_rng(5)
    X = points_at_radii(linear, rng.uniform(0, 1, 60), rng)
    result = certify_radius(linear, X, 0.5, 0.3, n0=30, n=5000, random_state=0,
                            test="betting")
    made = result.samples > 0
    assert np.all(result.pa_lower[made] <= result.pa_upper[made])
    # certified exactly where the sequence's lower bound clears the threshold (to the
    # bisection's precision)
    clear = np.abs(result.pa_lower - result.threshold) > 1e-9
    np.testing.assert_array_equal(result.certified[made & clear],
                                  (result.pa_lower >= result.threshold)[made & clear])
    lower, upper = betting_bounds([90], [100], 0.001)
    test = BettingTest(float(lower[0]) - 1e-6, 0.001)
    assert test.certified(90, 100) and not BettingTest(float(lower[0]) + 1e-6,
                                                       0.001).certified(90, 100)


def test_betting_is_reproducible_across_batch_sizes_and_offsets(linear):
    rng = np.random.default_rng(7)
    X = points_at_radii(linear, rng.uniform(0, 0.6, 60), rng)
    kwargs = dict(n=3000, random_state=9, test="betting")
    one = certify_radius(linear, X, 0.5, 0.25, batch_size=4096, **kwargs)
    two = certify_radius(linear, X, 0.5, 0.25, batch_size=97, **kwargs)
    head = certify_radius(linear, X[:25], 0.5, 0.25, **kwargs)
    tail = certify_radius(linear, X[25:], 0.5, 0.25, index_offset=25, **kwargs)
    for field in ("certified", "samples", "prediction"):
        np.testing.assert_array_equal(getattr(one, field), getattr(two, field))
        np.testing.assert_array_equal(getattr(one, field),
                                      np.concatenate([getattr(head, field), getattr(tail, field)]))


def test_unknown_test_is_refused(linear):
    with pytest.raises(ValueError, match="The .test. parameter of certify_radius must be a str"):
        certify_radius(linear, np.zeros((2, 3), np.float32), 0.5, 0.1, test="bayes")


def test_tables_for_many_draw_counts_at_once_match_one_at_a_time():
    """The vectorised search gives every draw count its own answer (entries found early
    are not moved by later iterations)."""
    draws = np.array([1, 2, 5, 46, 47, 300, 4000])
    together = BettingTest(norm.cdf(1.0), 0.001).certify_counts(draws)
    alone = [BettingTest(norm.cdf(1.0), 0.001).certify_counts(t) for t in draws]
    np.testing.assert_array_equal(together, alone)
    assert together[0] == 2 and together[3] == 47  # none at 1 draw: t + 1
    futile = BettingTest(norm.cdf(1.0), 0.001).futile_counts(draws)
    np.testing.assert_array_equal(
        futile, [BettingTest(norm.cdf(1.0), 0.001).futile_counts(t) for t in draws])
