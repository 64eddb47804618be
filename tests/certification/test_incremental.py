"""certify_incremental: a modified network certified from the original's certificate."""

import numpy as np
import pytest
import torch
from conftest import LinearBinary, points_at_radii
from scipy.stats import binom, norm

from smoothsk import ABSTAIN, RecordedVotes, certify, certify_incremental, record_votes


def modified_pair(rng, dim=6, tilt=0.08):
    """An analytic original and a slightly tilted copy: both smoothed classifiers are
    known in closed form, so the modified one's true radius is too."""
    w = rng.normal(size=dim)
    original = LinearBinary(w, 0.2)
    modified = LinearBinary(w + tilt * rng.normal(size=dim), 0.2 + tilt)
    return original, modified


@pytest.mark.parametrize("recorded", [False, True], ids=["original", "recorded votes"])
def test_incremental_certificates_hold_at_alpha_plus_alpha_zeta(recorded):
    rng = np.random.default_rng(0)
    original, modified = modified_pair(rng)
    sigma, trials, alpha, alpha_zeta = 0.5, 1500, 0.05, 0.05
    X = points_at_radii(original, sigma * norm.ppf(rng.uniform(0.55, 0.995, trials)), rng)
    cert = certify(original, X, sigma, n0=50, n=2000, alpha=alpha, batch_size=8192,
                   random_state=1)
    reference = record_votes(original, X, cert, n_zeta=500, batch_size=8192,
                             random_state=2) if recorded else original
    result = certify_incremental(modified, reference, X, cert, n_zeta=500,
                                 alpha_zeta=alpha_zeta, batch_size=8192, random_state=2)
    assert result.alpha == pytest.approx(alpha + alpha_zeta)
    truth = modified.true_radius(X)
    certified = result.prediction != ABSTAIN
    wrong = certified & ((result.prediction != modified.true_class(X))
                         | (result.radius > truth))
    # per input at most alpha + alpha_zeta (union bound), independently across inputs;
    # the 1 - 1e-4 binomial quantile
    assert wrong.sum() <= binom.ppf(1 - 1e-4, trials, alpha + alpha_zeta)
    # and the failure it guards against: the original's certificate reused as it is
    reused = (cert.prediction != ABSTAIN) & ((cert.prediction != modified.true_class(X))
                                            | (cert.radius > truth))
    assert reused.sum() > 3 * binom.ppf(1 - 1e-4, trials, alpha + alpha_zeta)
    # the cheap path was taken for most inputs
    assert (result.samples == 500).mean() > 0.5


def test_an_unchanged_network_keeps_its_radii_up_to_the_disagreement_bound():
    rng = np.random.default_rng(1)
    original, _ = modified_pair(rng)
    X = points_at_radii(original, 0.5 * norm.ppf(rng.uniform(0.8, 0.99, 40)), rng)
    cert = certify(original, X, 0.5, n=5000, random_state=0)
    same = certify_incremental(original, original, X, cert, n_zeta=2000, alpha_zeta=0.001,
                               recertify_above=None)
    # zero disagreements: p̲_A less Clopper–Pearson's upper bound of 0/2000 at 0.001
    np.testing.assert_allclose(same.pa_lower, cert.pa_lower - (1 - 0.001 ** (1 / 2000)),
                               rtol=1e-9)
    np.testing.assert_array_equal(same.prediction, cert.prediction)
    np.testing.assert_array_equal(same.disagreements, 0)


def test_a_network_that_disagrees_abstains_on_the_cheap_path_and_is_recertified_above():
    rng = np.random.default_rng(2)
    original, _ = modified_pair(rng)
    flipped = LinearBinary(-original.w.detach().numpy(), -float(original.b.detach()))
    X = points_at_radii(original, 0.5 * norm.ppf(rng.uniform(0.8, 0.99, 30)), rng)
    cert = certify(original, X, 0.5, n=2000, random_state=0)
    result = certify_incremental(flipped, original, X, cert, n_zeta=200, random_state=0,
                                 recertify_above=0.9)
    recertified = result.samples > 2000
    assert recertified.any() and not recertified.all()
    np.testing.assert_array_equal(recertified, cert.pa_lower >= 0.9)
    # the negated classifier disagrees on every shared draw: ζ̄ = 1, nothing certified
    np.testing.assert_array_equal(result.disagreements, np.where(recertified, 0, 200))
    assert np.all(result.prediction[~recertified] == ABSTAIN)
    # recertified from scratch: the flipped network's own class
    certified = result.prediction != ABSTAIN
    assert certified[recertified].any()
    np.testing.assert_array_equal(result.prediction[certified],
                                  flipped.true_class(X)[certified])
    with pytest.raises(ValueError, match="holds 30 inputs"):
        certify_incremental(flipped, original, X[:5], cert)
    with pytest.raises(ValueError, match="recertify_above"):
        certify_incremental(flipped, original, X, cert, recertify_above=0.5)


def test_the_path_is_chosen_from_the_original_certificate_alone():
    # The fallback's level is sound only if which inputs fall back is fixed by the
    # original certificate (docs/certification.md): neither the modified network nor the
    # disagreement draws may move an input from one path to the other.
    rng = np.random.default_rng(3)
    original, modified = modified_pair(rng, tilt=0.3)
    flipped = LinearBinary(-original.w.detach().numpy(), -float(original.b.detach()))
    X = points_at_radii(original, 0.5 * norm.ppf(rng.uniform(0.5, 0.999, 60)), rng)
    cert = certify(original, X, 0.5, n=2000, random_state=0)
    paths = [certify_incremental(net, original, X, cert, n_zeta=300, random_state=seed).samples
             for net, seed in ((original, 0), (modified, 1), (flipped, 2))]
    for samples in paths[1:]:
        np.testing.assert_array_equal(samples > 2000, paths[0] > 2000)
    zeta_floor = 1 - 0.001 ** (1 / 300)  # Clopper–Pearson's bound of 0 disagreements in 300
    cheap = (cert.prediction != ABSTAIN) & (cert.pa_lower - zeta_floor > 0.5) & \
        (cert.pa_lower < 0.99)
    np.testing.assert_array_equal(paths[0] == 300, cheap)
    assert cheap.any() and not cheap.all()


def test_the_fallback_draws_fresh_noise_at_level_alpha_zeta():
    rng = np.random.default_rng(4)
    original, _ = modified_pair(rng)
    X = points_at_radii(original, 0.5 * norm.ppf(rng.uniform(0.7, 0.95, 40)), rng)
    cert = certify(original, X, 0.5, n=2000, alpha=0.001, random_state=0)
    # every certified input recertified, the copy identical, at the original's level:
    # on the original's own draws each p̲_A would come back unchanged
    again = certify_incremental(original, original, X, cert, alpha_zeta=0.001,
                                random_state=0, recertify_above=0.51)
    assert np.all(again.samples == cert.n0 + cert.n)
    assert (again.pa_lower != cert.pa_lower).mean() > 0.8
    # the fallback's level is α_ζ, not α + α_ζ: a constant network's n of n votes give
    # Clopper–Pearson's α_ζ^(1/n) exactly
    constant = LinearBinary(np.zeros(X.shape[1]), 1.0)
    cert = certify(constant, X, 0.5, n=2000, alpha=0.2, random_state=0)
    result = certify_incremental(constant, constant, X, cert, alpha_zeta=1e-6)
    assert np.all(result.samples == cert.n0 + cert.n)  # p̲_A = 0.2^(1/2000) > 0.99
    np.testing.assert_allclose(result.pa_lower, 1e-6 ** (1 / 2000), rtol=1e-9)
    assert result.alpha == pytest.approx(0.2 + 1e-6)


@pytest.mark.slow
def test_a_bf16_copy_is_certified_from_the_fp32_certificate(digits):
    from smoothsk import GaussianAugClassifier

    X, y = digits
    clf = GaussianAugClassifier(sigma=0.25, max_epochs=5, lr=0.05,
                                optimizer=torch.optim.SGD, random_state=0).fit(X[:800], y[:800])
    cert = certify(clf.module_, X[800:900], 0.25, n=4000, random_state=0)
    bf16 = certify_incremental(clf.module_, clf.module_, X[800:900], cert, n_zeta=1000,
                               modified_precision="bf16", random_state=0)
    assert bf16.precision == "bf16" and (bf16.samples == 1000).mean() > 0.5
    kept = (bf16.prediction != ABSTAIN) & (bf16.samples == 1000)
    assert np.all(bf16.radius[kept] <= cert.radius[kept] + 1e-12)  # ζ̄ only lowers p̲_A


def test_the_estimator_form_certifies_its_bf16_copy_as_the_function_does(digits):
    import copy

    from smoothsk import GaussianAugClassifier
    from smoothsk.testing import tiny_estimator_params

    X, y = digits
    clf = GaussianAugClassifier(**tiny_estimator_params(input_range=(0, 1), n=400))
    clf.fit(X[:200], y[:200])
    cert = clf.certify(X[:12])
    bf16 = copy.deepcopy(clf).set_params(precision="bf16")
    result = bf16.certify_incremental(X[:12], clf, cert, n_zeta=300, alpha_zeta=0.01)
    direct = certify_incremental(clf, clf, X[:12], cert, n_zeta=300, alpha_zeta=0.01,
                                 modified_precision="bf16", random_state=clf.random_state,
                                 batch_size=clf.certify_batch_size)
    np.testing.assert_array_equal(result.radius, direct.radius)
    np.testing.assert_array_equal(result.prediction, direct.prediction)
    assert result.alpha == pytest.approx(cert.alpha + 0.01)
    # from the original's recorded votes, the estimator's seed not imposed on them
    votes = record_votes(clf, X[:12], cert, n_zeta=300, random_state=clf.random_state)
    replayed = bf16.set_params(random_state=clf.random_state + 1).certify_incremental(
        X[:12], votes, cert, alpha_zeta=0.01)
    np.testing.assert_array_equal(replayed.radius, direct.radius)
    np.testing.assert_array_equal(replayed.disagreements, direct.disagreements)
    # labels, as the estimator's own certificates give them
    assert set(result.labels()) <= set(clf.classes_) | {-1}


class CountingNetwork(torch.nn.Module):
    """A network that counts the noisy rows it classifies."""

    def __init__(self, network):
        super().__init__()
        self.network, self.rows = network, 0

    def forward(self, x):
        self.rows += len(x)
        return self.network(x)


def test_recorded_votes_give_the_certificate_the_original_gives_at_half_the_cost():
    rng = np.random.default_rng(5)
    original, modified = modified_pair(rng, tilt=0.2)
    flipped = LinearBinary(-original.w.detach().numpy(), -float(original.b.detach()))
    X = points_at_radii(original, 0.5 * norm.ppf(rng.uniform(0.3, 0.999, 50)), rng)
    cert = certify(original, X, 0.5, n=2000, random_state=0, index_offset=7)
    counting = CountingNetwork(original)
    votes = record_votes(counting, X, cert, n_zeta=300, batch_size=7, random_state=3,
                         index_offset=7)
    compared = cert.prediction != ABSTAIN
    assert isinstance(votes, RecordedVotes) and votes.n_zeta == 300 and votes.seed == 3
    assert counting.rows == 300 * compared.sum()  # only the inputs it certified
    np.testing.assert_array_equal(votes.classes[~compared], ABSTAIN)
    assert set(np.unique(votes.classes[compared])) <= {0, 1}
    # the votes are the original's own classes, draw by draw: the copy equal to the
    # original never disagrees
    same = certify_incremental(original, votes, X, cert, index_offset=7)
    assert same.disagreements.sum() == 0 and np.all(same.samples[same.samples <= 300] == 300)
    for copy in (modified, flipped):  # one recording serves every copy
        counting.rows = 0
        direct = certify_incremental(copy, counting, X, cert, n_zeta=300, random_state=3,
                                     batch_size=64, index_offset=7)
        assert counting.rows > 0
        counting.rows = 0
        replayed = certify_incremental(copy, votes, X, cert, batch_size=1000, index_offset=7)
        assert counting.rows == 0  # the original is not evaluated again
        for name in ("prediction", "radius", "pa_lower", "samples", "disagreements"):
            np.testing.assert_array_equal(getattr(replayed, name), getattr(direct, name), name)
        assert replayed.alpha == direct.alpha
    assert direct.disagreements.max() > 0  # the flipped copy disagreed


def test_recorded_votes_refuse_other_draws_and_other_certificates():
    rng = np.random.default_rng(6)
    original, modified = modified_pair(rng)
    X = points_at_radii(original, 0.5 * norm.ppf(rng.uniform(0.6, 0.95, 12)), rng)
    cert = certify(original, X, 0.5, n=1000, random_state=0)
    votes = record_votes(original, X, cert, n_zeta=100, random_state=4)
    with pytest.raises(ValueError, match="n_zeta=200 but the votes were recorded on 100"):
        certify_incremental(modified, votes, X, cert, n_zeta=200)
    with pytest.raises(ValueError, match="random_state gives other draws"):
        certify_incremental(modified, votes, X, cert, random_state=5)
    with pytest.raises(ValueError, match="index_offset"):
        certify_incremental(modified, votes, X, cert, index_offset=1)
    other = certify(original, X, 0.5, n=1000, random_state=1)
    with pytest.raises(ValueError, match="belong to another certificate"):
        certify_incremental(modified, votes, X, other)
    # the seed, n_zeta and indices given again are accepted
    again = certify_incremental(modified, votes, X, cert, n_zeta=100, random_state=4)
    assert again.alpha == pytest.approx(cert.alpha + 0.001)
