import numpy as np
import pytest
import torch
from conftest import LinearBinary, points_at_radii
from scipy.stats import binom

from smoothsk import GaussianAugClassifier, certify, certify_radius, round_sizes
from smoothsk.testing import tiny_estimator_params


class _CountingModule(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.rows = 0

    def forward(self, x):
        self.rows += len(x)
        return self.inner(x)


@pytest.fixture
def linear():
    return LinearBinary(w=[0.6, -0.8, 0.0], b=0.1)


def test_round_sizes_are_cumulative_and_end_at_n():
    np.testing.assert_array_equal(round_sizes(64, 2.0, 1000), [64, 128, 256, 512, 1000])
    np.testing.assert_array_equal(round_sizes(100, 4.0, 100), [100])
    assert len(round_sizes(64, 2.0, 100_000)) == 12
    for bad in (dict(first_round=0), dict(growth=1.0), dict(n=0)):
        args = dict(first_round=64, growth=2.0, n=10) | bad
        with pytest.raises(ValueError, match=next(iter(bad))):
            round_sizes(**args)


@pytest.mark.slow
@pytest.mark.parametrize("sigma,radius", [(0.25, 0.25), (0.5, 0.2)])
def test_never_certifies_below_the_threshold_beyond_the_alpha_rate(linear, sigma, radius):
    # True radius 0.97 r: p_A = Φ(0.97 r/σ) < Φ(r/σ), so every "certified" is a false claim.
    # With alpha = 0.05 the claims are at most Bin(1500, 0.05); its 1 − 1e-4 quantile bounds them.
    rng = np.random.default_rng(1)
    trials, alpha = 1500, 0.05
    X = points_at_radii(linear, np.full(trials, 0.97 * radius), rng)
    result = certify_radius(linear, X, sigma, radius, n0=50, n=4000, alpha=alpha,
                            random_state=2, test="rounds")
    selected_true = result.prediction == linear.true_class(X)
    false_claims = int((result.certified & selected_true).sum())
    assert false_claims <= binom.ppf(1 - 1e-4, trials, alpha)
    # A wrong selected class has p < 1/2 <= Φ(r/σ): certifying it is also a false claim.
    assert int((result.certified & ~selected_true).sum()) <= binom.ppf(1 - 1e-4, trials, alpha)
    # The sampling really stopped near the threshold: most inputs used the whole budget.
    assert np.median(result.samples) == 4000


@pytest.mark.slow
def test_agrees_with_fixed_n_certify_on_clear_cut_inputs_with_far_fewer_samples(linear):
    rng = np.random.default_rng(3)
    sigma, radius, n = 0.5, 0.25, 20_000
    true_radii = np.concatenate([rng.uniform(0.0, 0.15, 150), rng.uniform(0.4, 1.5, 150)])
    X = points_at_radii(linear, true_radii, rng)
    fixed = certify(linear, X, sigma, n0=100, n=n, alpha=0.001, random_state=4)
    adaptive = certify_radius(linear, X, sigma, radius, n0=100, n=n, alpha=0.001,
                              random_state=4, test="rounds")
    # Same selection noise as CERTIFY for the same seed
    np.testing.assert_array_equal(adaptive.selection_counts, fixed.selection_counts)
    np.testing.assert_array_equal(adaptive.certified, (fixed.prediction >= 0) &
                                  (fixed.radius >= radius))
    np.testing.assert_array_equal(adaptive.certified, true_radii > radius)
    assert adaptive.samples.mean() < n / 20
    assert np.all(adaptive.samples <= n) and np.all(adaptive.rounds >= 1)


def test_reported_samples_are_the_draws_the_network_saw(linear):
    rng = np.random.default_rng(5)
    X = points_at_radii(linear, rng.uniform(0, 1, 40), rng)
    counting = _CountingModule(linear)
    result = certify_radius(counting, X, 0.5, 0.3, n0=30, n=5000, random_state=0,
                            batch_size=333)
    assert counting.rows == 30 * len(X) + result.samples.sum()
    bounds_known = result.samples > 0
    assert np.all(result.pa_lower[bounds_known] <= result.pa_upper[bounds_known])
    assert np.all(np.isin(result.samples, np.concatenate([[0], result.round_sizes])))


def test_wrong_selected_class_and_unreachable_radius_draw_nothing(linear):
    rng = np.random.default_rng(6)
    X = points_at_radii(linear, rng.uniform(0.5, 1.0, 30), rng)
    truth = linear.true_class(X)
    y = truth.copy()
    y[:10] = 1 - y[:10]  # labels the smoothed classifier gets wrong
    counting = _CountingModule(linear)
    result = certify_radius(counting, X, 0.5, 0.2, y=y, n0=50, n=5000, random_state=0)
    assert np.all(result.samples[:10] == 0) and not result.is_correct(y)[:10].any()
    assert np.all(result.samples[10:] > 0) and result.is_correct(y)[10:].all()
    # n = 100 draws at alpha = 0.001 certify at most σ Φ⁻¹(0.001^(1/100)) ≈ 1.3σ
    far = certify_radius(counting, X, 0.5, 2.0, n0=50, n=100, random_state=0)
    assert np.all(far.samples == 0) and not far.certified.any()


def test_batch_size_and_offsets_do_not_change_decisions(linear):
    rng = np.random.default_rng(7)
    X = points_at_radii(linear, rng.uniform(0, 0.6, 60), rng)
    one = certify_radius(linear, X, 0.5, 0.25, n=3000, random_state=9, batch_size=4096)
    two = certify_radius(linear, X, 0.5, 0.25, n=3000, random_state=9, batch_size=97)
    head = certify_radius(linear, X[:25], 0.5, 0.25, n=3000, random_state=9)
    tail = certify_radius(linear, X[25:], 0.5, 0.25, n=3000, random_state=9, index_offset=25)
    for field in ("certified", "samples", "pa_lower", "prediction"):
        np.testing.assert_array_equal(getattr(one, field), getattr(two, field))
        np.testing.assert_array_equal(getattr(one, field),
                                      np.concatenate([getattr(head, field), getattr(tail, field)]))


@pytest.mark.parametrize("kwargs,match", [
    (dict(radius=-1.0), "radius"), (dict(radius=float("nan")), "radius"),
    (dict(radius=0.1, n0=0), "n0"), (dict(radius=0.1, alpha=1.5), "alpha"),
    (dict(radius=0.1, growth=0.5), "growth"), (dict(radius=0.1, y=[0, 1]), "y has shape"),
])
def test_bad_arguments(linear, kwargs, match):
    with pytest.raises(ValueError, match=match):
        certify_radius(linear, np.zeros((3, 3), np.float32), 0.5, **kwargs)


def test_estimator_method_takes_labels(digits):
    X, y = digits
    names = np.array(list("abcdefghij"))[y]
    clf = GaussianAugClassifier(**tiny_estimator_params(max_epochs=10, sigma=0.25)).fit(
        X[:300], names[:300])
    result = clf.certify_radius(X[300:360], 0.1, y=names[300:360], n=500)
    assert result.classes is clf.classes_
    assert result.is_correct(names[300:360]).mean() > 0.5
    # an unseen label can never be certified-correct and costs no draws
    odd = names[300:360].copy()
    odd[0] = "zz"
    assert clf.certify_radius(X[300:360], 0.1, y=odd, n=500).samples[0] == 0


def test_adaptive_rounds_return_the_free_heap_once_per_trim_interval(linear, monkeypatch):
    """The rounds trim glibc's heap like CERTIFY does (oneDNN's buffers otherwise grow the
    resident memory with every input): once per ``TRIM_EVERY_BYTES`` of noisy inputs, and
    once more when the call ends."""
    from smoothsk.certification import heap

    calls = []
    monkeypatch.setattr(heap, "_MALLOC_TRIM", lambda pad: calls.append(pad))
    # p_A = Φ(0.1 / 0.5) is the threshold of r = 0.1 itself: inputs stay undecided for rounds
    X = np.zeros((4, 3), np.float32)
    kwargs = dict(n0=10, n=400, first_round=50, growth=2.0, random_state=0, batch_size=1000)
    first = certify_radius(linear, X, 0.5, 0.1, **kwargs)
    # the selection's final trim and each round's final trim (one sampling loop per round)
    baseline = len(calls)
    assert baseline == 1 + first.rounds.max()
    calls.clear()
    # each input is 12 bytes; with a 1-byte interval every evaluated chunk of a round is due
    monkeypatch.setattr(heap, "TRIM_EVERY_BYTES", 1)
    result = certify_radius(linear, X, 0.5, 0.1, **kwargs)
    assert result.rounds.max() > 1
    assert len(calls) > baseline + result.rounds.max()
