import numpy as np
import pytest
import torch
from scipy.stats import binom, binomtest, norm
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from smoothsk import GaussianAugClassifier, empirical_robustness
from smoothsk.certification.core import ABSTAIN

SIGMA, N_PREDICT, ALPHA = 0.25, 2000, 0.001
RADII = [0.0, 0.25, 0.5, 1.0]


@pytest.fixture(scope="module")
def trained(digits):
    X, y = digits
    clf = GaussianAugClassifier(sigma=SIGMA, max_epochs=30, lr=0.05,
                                optimizer=torch.optim.SGD, optimizer__momentum=0.9,
                                batch_size=64, random_state=0).fit(X[:1200], y[:1200])
    Xt, yt = X[1200:1400], y[1200:1400]
    certificate = clf.certify(Xt, n0=100, n=N_PREDICT, alpha=ALPHA, random_state=1)
    result = empirical_robustness(clf, Xt, yt, RADII, num_steps=20, num_noise=16,
                                  n=N_PREDICT, alpha=ALPHA, random_state=2)
    return clf, Xt, yt, certificate, result


def _min_votes_to_pass(n, alpha):
    """Smallest n_A with binomtest(n_A, n, 1/2) p-value <= alpha: PREDICT answers at or above it
    whatever n_B <= n − n_A is (fewer trials for the same n_A only lower the p-value)."""
    k = n // 2
    while binomtest(k, n, 0.5).pvalue > alpha:
        k += 1
    return k


def _bernstein_excess(mean, tail=1e-4):
    """t with exp(−t²/(2(μ + t/3))) = tail: a sum of independent Bernoullis with mean μ exceeds
    μ + t with probability at most ``tail`` (Bernstein's inequality)."""
    log_term = np.log(1 / tail)
    return log_term / 3 + np.sqrt((log_term / 3) ** 2 + 2 * mean * log_term)


@pytest.mark.slow
def test_attack_is_sound_against_certificates(trained):
    clf, Xt, yt, certificate, result = trained
    correct = certificate.is_correct(yt)
    k_min = _min_votes_to_pass(N_PREDICT, ALPHA)
    for k, radius in enumerate(RADII):
        assert result.distance[k].max() <= radius + 1e-5
        certified = correct & (certificate.radius >= radius)
        # Where the certificate holds (prob. >= 1 − α), p_A at any point within r is at least
        # p' = Φ(Φ⁻¹(p_A_lower) − r/σ) (Φ⁻¹(p_A) is 1/σ-Lipschitz; Salman et al. 2019, Lemma 2).
        # PREDICT then fails (abstains or errs) with prob. <= P(Bin(n, p') < k_min) + α.
        guaranteed = norm.cdf(norm.ppf(certificate.pa_lower[certified]) - radius / SIGMA)
        failure = binom.cdf(k_min - 1, N_PREDICT, guaranteed) + 2 * ALPHA
        expected = failure.sum()
        lost = int((certified & ~result.correct[k]).sum())
        assert lost <= expected + _bernstein_excess(expected), (radius, lost, expected)
        # so empirical robust accuracy stays above certified accuracy up to that MC error
        tolerance = (expected + _bernstein_excess(expected)) / len(yt)
        assert result.accuracy[k] >= certified.mean() - tolerance
        # A flip (another class, not an abstention) of a certified input needs the certificate
        # or PREDICT to fail: at most Bin(#certified, 2α), bounded by its 1 − 1e-4 quantile.
        flipped = certified & (result.prediction[k] != ABSTAIN) & ~result.correct[k]
        assert flipped.sum() <= binom.ppf(1 - 1e-4, certified.sum(), 2 * ALPHA), (
            radius, np.flatnonzero(flipped), certificate.pa_lower[flipped])


@pytest.mark.slow
def test_attack_is_effective_and_monotone(trained):
    *_, certificate, result = trained
    # clean accuracy is high; a radius-1.0 attack (4σ) breaks almost every input
    assert result.accuracy[0] > 0.9
    assert result.accuracy[-1] < 0.5 * result.accuracy[0]
    assert np.all(np.diff(result.accuracy) <= 0)
    assert result.prediction.shape == result.correct.shape == (len(RADII), 200)


def test_reproducible_and_pipeline_aware(trained, digits):
    clf, Xt, yt, _, _ = trained
    first = empirical_robustness(clf, Xt[:20], yt[:20], 0.5, num_steps=3, n=200, random_state=7)
    again = empirical_robustness(clf, Xt[:20], yt[:20], 0.5, num_steps=3, n=200, random_state=7)
    np.testing.assert_array_equal(first.prediction, again.prediction)
    np.testing.assert_array_equal(first.distance, again.distance)
    # A pipeline is attacked in the input space of its smoothed step
    pipe = make_pipeline(FunctionTransformer(lambda X: X * 1.0), clf)
    piped = empirical_robustness(pipe, Xt[:20], yt[:20], 0.5, num_steps=3, n=200, random_state=7)
    np.testing.assert_array_equal(piped.prediction, first.prediction)


@pytest.mark.parametrize("kwargs,match", [
    (dict(radii=[-0.1]), "radii"),
    (dict(radii=[0.5], num_steps=0), "num_steps"),
    (dict(radii=[0.5], n=0), "n must"),
    (dict(radii=[0.5], alpha=2.0), "alpha"),
])
def test_bad_arguments(trained, kwargs, match):
    clf, Xt, yt, _, _ = trained
    with pytest.raises(ValueError, match=match):
        empirical_robustness(clf, Xt[:5], yt[:5], **kwargs)


def test_unfitted_and_unknown_labels(trained):
    clf, Xt, yt, _, _ = trained
    with pytest.raises(ValueError, match="not a fitted smoothsk"):
        empirical_robustness(GaussianAugClassifier(), Xt[:5], yt[:5], [0.1])
    with pytest.raises(ValueError, match="not seen in fit"):
        empirical_robustness(clf, Xt[:2], np.array([0, 42]), [0.1])
    with pytest.raises(ValueError, match="labels"):
        empirical_robustness(clf, Xt[:3], yt[:2], [0.1])
    assert torch.is_grad_enabled()
