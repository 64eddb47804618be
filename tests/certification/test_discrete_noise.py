"""Float-sound noise: the Gaussian rounded to the inputs' lattice (Voráček & Hein, ICLR 2023)."""

import decimal
import json
from fractions import Fraction

import numpy as np
import pytest
import torch
from conftest import LinearBinary
from scipy.stats import binom, chi2, norm

import smoothsk
from smoothsk import ABSTAIN, certify, certify_radius, class_counts, predict
from smoothsk.certification.noise import (
    GUIDE_BITS,
    UNIFORM_BITS,
    LatticeGaussian,
    exact_normal_cdf,
    lattice_step,
    lattice_thresholds,
)
from smoothsk.io.model_file import load_model, save_model
from smoothsk.io.runs import RunMismatchError, certify_to_tsv

STEP = Fraction(1, 255)


class Recorder(torch.nn.Module):
    """A two-class network that keeps every batch it is given."""

    def __init__(self):
        super().__init__()
        self.seen = []
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        self.seen.append(x.detach().clone())
        s = x.flatten(1).sum(1) * self.scale - 0.5 * x[0].numel()
        return torch.stack([-s, s], 1)


class FloatArtifact(torch.nn.Module):
    """Class 0 when every entry is a multiple of 2⁻²⁴, else class 1.

    A float32 ``fl(x + δ)`` is always such a multiple when every ``x`` entry is 1 (the
    sum is a multiple of 2⁻²⁴ or coarser, and representable or rounded to a coarser
    grid), but only about half the time per entry when ``x`` is 64/255, whose noisy
    copies land where floats are finer.  The network sees nothing but rounding: the
    idea of Voráček & Hein's counterexample.
    """

    def forward(self, z):
        z = z.float() * 2.0**24
        on = torch.all(z == torch.round(z), dim=1)
        return torch.stack([on.float(), (~on).float()], 1)


def lattice_points(rng, shape, top=255):
    return (rng.integers(0, top + 1, size=shape).astype(np.float32) / 255).astype(np.float32)


# ----------------------------------------------------------------------------- thresholds


def test_the_exact_normal_cdf_has_the_known_digits():
    # Φ(1) and Φ(3) to 30 digits (as mpmath.ncdf computes them at 40 digits)
    one, three = exact_normal_cdf([Fraction(1), Fraction(3)])
    assert abs(one - decimal.Decimal("0.841344746068542948585232545632")) < 1e-29
    assert abs(three - decimal.Decimal("0.998650101968369905473348185232")) < 1e-29
    assert exact_normal_cdf([Fraction(0)])[0] == decimal.Decimal("0.5")


@pytest.mark.parametrize("sigma", [0.12, 0.25, 1.0])
def test_thresholds_are_the_rounded_normal_cdf_mirrored_and_nondecreasing(sigma):
    scale = Fraction(sigma) / STEP
    thresholds = lattice_thresholds(scale)
    half = len(thresholds) // 2
    assert half == int(np.ceil(10 * scale))
    assert np.all(np.diff(thresholds) >= 0)
    np.testing.assert_array_equal(thresholds[:half], (1 << 60) - thresholds[::-1][:half])
    reference = norm.cdf((np.arange(-half, half) + 0.5) / float(scale)) * 2.0**60
    large = reference > 2.0**45
    # scipy's float64 Φ is accurate to a few units of 1e-16 where it is not tiny
    np.testing.assert_allclose(thresholds[large], reference[large], rtol=1e-13)
    assert np.all(np.abs(thresholds[~large] - reference[~large]) < 2.0**45 * 1e-13)


def test_the_lattice_step_is_read_as_an_exact_fraction():
    assert lattice_step(None) == Fraction(1, 255)
    assert lattice_step(1 / 255) == Fraction(1, 255)
    assert lattice_step("1/16") == lattice_step(0.0625) == Fraction(1, 16)
    assert lattice_step(0.1) == Fraction(1, 10)
    for bad in (0, -1, "abc", float("nan"), True, [1]):
        with pytest.raises(ValueError, match="noise_step"):
            lattice_step(bad)


# ----------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("sigma", [0.02, 0.5])
def test_the_guide_table_sampler_is_exactly_the_inverse_cdf(sigma):
    noise = LatticeGaussian(sigma, STEP)
    shape, low_bits = (64, 4096), UNIFORM_BITS - GUIDE_BITS
    offsets = noise.sample(shape, torch.Generator().manual_seed(3), torch.float64)
    # The same generator, replayed: the top 16 bits of every U, then the low 44 bits of
    # those whose bucket holds a threshold.
    generator = torch.Generator().manual_seed(3)
    high = torch.randint(0, 1 << GUIDE_BITS, (offsets.numel(),), generator=generator,
                         dtype=torch.int32).long()
    inside = noise.kind[high] != 0
    uniform = high << low_bits
    uniform[inside] |= torch.randint(0, 1 << low_bits, (int(inside.sum()),),
                                     generator=generator, dtype=torch.int64)
    expected = torch.searchsorted(noise.sorted_thresholds, uniform, right=True) - noise.half_width
    assert torch.equal(offsets.view(-1), expected.double())
    # the check covers the three kinds of bucket, the far tails' binary search included
    assert set(noise.kind[high].unique().tolist()) == {0, 1, 2}
    # a bucket of kind 0 holds no threshold: its count is the same at its first and last U
    starts = torch.arange(1 << GUIDE_BITS, dtype=torch.int64) << low_bits
    first = torch.searchsorted(noise.sorted_thresholds, starts, right=True)
    last = torch.searchsorted(noise.sorted_thresholds, starts + (1 << low_bits) - 1, right=True)
    empty = noise.kind == 0
    assert torch.equal(first[empty], last[empty]) and bool((last[~empty] > first[~empty]).all())
    # ... and one of kind 1 has its threshold exactly at start + remainder
    one = noise.kind == 1
    at = starts[one] + noise.remainder[one]
    assert torch.equal(torch.searchsorted(noise.sorted_thresholds, at - 1, right=True), first[one])
    assert torch.equal(torch.searchsorted(noise.sorted_thresholds, at, right=True), first[one] + 1)
    assert torch.equal(noise.base, first)
    assert GUIDE_BITS == 16


@pytest.mark.parametrize("sigma", [0.03, 0.25])
def test_sampled_offsets_follow_the_rounded_gaussian(sigma):
    noise = LatticeGaussian(sigma, STEP)
    draws = noise.sample((400_000,), torch.Generator().manual_seed(0), torch.float64).numpy()
    scale = sigma * 255
    values, counts = np.unique(draws, return_counts=True)
    support = np.arange(-noise.half_width, noise.half_width + 1)
    observed = np.zeros(len(support))
    observed[(values + noise.half_width).astype(int)] = counts
    pmf = norm.cdf((support + 0.5) / scale) - norm.cdf((support - 0.5) / scale)
    expected = pmf / pmf.sum() * len(draws)
    # pool the tails into bins of >= 20 expected draws
    keep = expected >= 20
    lo, hi = np.flatnonzero(keep)[[0, -1]]
    obs = np.r_[observed[:lo].sum(), observed[lo:hi + 1], observed[hi + 1:].sum()]
    exp = np.r_[expected[:lo].sum(), expected[lo:hi + 1], expected[hi + 1:].sum()]
    statistic = ((obs - exp) ** 2 / exp).sum()
    # Pearson's statistic is χ²(bins − 1) under the pmf; exceeded with probability 1e-4
    assert statistic < chi2.ppf(1 - 1e-4, len(obs) - 1)
    # and the test has power: a Gaussian 10 % wider is rejected
    wider = norm.cdf((support + 0.5) / (1.1 * scale)) - norm.cdf((support - 0.5) / (1.1 * scale))
    wrong = np.r_[wider[:lo].sum(), wider[lo:hi + 1], wider[hi + 1:].sum()] * len(draws)
    assert ((obs - wrong) ** 2 / wrong).sum() > chi2.ppf(1 - 1e-4, len(obs) - 1)


@pytest.mark.parametrize("shared_noise", [False, True])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_noisy_inputs_are_exactly_the_float32_values_of_8_bit_images(shared_noise, precision):
    X = lattice_points(np.random.default_rng(0), (7, 3, 4))
    net = Recorder()
    class_counts(net, X, 0.5, 1500, batch_size=500, random_state=0, shared_noise=shared_noise,
                 precision=precision, noise="discrete-gaussian")
    seen = torch.cat(net.seen)
    assert seen.dtype == torch.float32 and len(seen) == 7 * 1500
    integers = torch.round(seen.double() * 255)
    # exactly ToTensor's value of the integer image m: fl32(m / 255), one rounding
    assert torch.equal(seen, integers.float() / 255)
    assert not torch.equal(seen.view(7, 1500, 3, 4)[:, 0], torch.as_tensor(X))  # noise is added


def test_a_float64_network_sees_float64_lattice_points():
    X = lattice_points(np.random.default_rng(1), (3, 5))
    net = Recorder().double()
    class_counts(net, X, 0.25, 200, random_state=0, noise="discrete-gaussian")
    seen = torch.cat(net.seen)
    assert seen.dtype == torch.float64
    assert torch.equal(seen, torch.round(seen * 255) / 255)


def test_another_step_forms_multiples_of_it():
    X = (np.random.default_rng(2).integers(0, 17, size=(4, 6)) / 16).astype(np.float32)
    net = Recorder()
    class_counts(net, X, 0.5, 300, random_state=0, noise="discrete-gaussian", noise_step="1/16")
    seen = torch.cat(net.seen).double() * 16
    assert torch.equal(seen, torch.round(seen))
    with pytest.raises(ValueError, match="lattice of step 1/255"):
        class_counts(net, X + np.float32(0.3 / 255), 0.5, 10, noise="discrete-gaussian")


def test_counts_do_not_depend_on_batch_size_chunking_or_workers():
    X = lattice_points(np.random.default_rng(3), (9, 8))
    model = LinearBinary(np.linspace(-1, 1, 8), 0.1)
    kwargs = dict(n0=50, n=700, random_state=4, noise="discrete-gaussian")
    whole = certify(model, X, 0.5, batch_size=10_000, **kwargs)
    small = certify(model, X, 0.5, batch_size=37, **kwargs)
    parts = [certify(model, X[i:i + 4], 0.5, batch_size=100, index_offset=i, **kwargs)
             for i in range(0, 9, 4)]
    parallel = certify(model, X, 0.5, batch_size=100, n_jobs=2, chunk_size=3, **kwargs)
    for other in (small, smoothsk.Certificate.concatenate(parts), parallel):
        np.testing.assert_array_equal(other.counts, whole.counts)
        np.testing.assert_array_equal(other.selection_counts, whole.selection_counts)
    assert whole.noise == "discrete-gaussian" and whole.noise_step == "1/255"
    floats = certify(model, X, 0.5, batch_size=10_000, n0=50, n=700, random_state=4)
    assert not np.array_equal(floats.counts, whole.counts) and floats.noise == "gaussian"


# ----------------------------------------------------------------------------- soundness


def threshold_model(dim, k):
    """Class 1 iff the first entry exceeds (k + ½)/255, a midpoint between lattice
    values, so that rounding never decides a vote; under the rounded noise
    ``P(class 1) = P(m + J ≥ k + 1) = Φ((x₁ − t)/σ)`` exactly, as without rounding."""
    w = np.zeros(dim)
    w[0] = 1.0
    return LinearBinary(w, -(k + 0.5) / 255)


@pytest.mark.parametrize("sigma", [0.25, 0.5])
def test_discrete_certificates_exceed_the_true_radius_at_most_alpha_rate(sigma):
    rng = np.random.default_rng(7)
    dim, k, trials, alpha = 3, 127, 1500, 0.05
    model = threshold_model(dim, k)
    X = lattice_points(rng, (4 * trials, dim))
    margin = np.abs(X[:, 0].astype(np.float64) - (k + 0.5) / 255)
    p_true = norm.cdf(margin / sigma)
    X = X[(p_true > 0.55) & (p_true < 0.98)][:trials]
    margin = np.abs(X[:, 0].astype(np.float64) - (k + 0.5) / 255)
    assert len(X) == trials
    cert = certify(model, X, sigma, n0=50, n=400, alpha=alpha, batch_size=4096,
                   random_state=1, noise="discrete-gaussian")
    certified = cert.prediction != ABSTAIN
    truth = (X[:, 0] > (k + 0.5) / 255).astype(int)
    wrong = certified & ((cert.prediction != truth) | (cert.radius > margin))
    # failures are independent with probability <= alpha each, so <= Bin(trials, alpha);
    # exceeding its 1 - 1e-4 quantile has probability < 1e-4 for a sound certificate
    assert wrong.sum() <= binom.ppf(1 - 1e-4, trials, alpha)
    assert certified.mean() > 0.5


def test_discrete_sequential_decisions_hold_just_below_and_above_the_threshold():
    rng = np.random.default_rng(8)
    sigma, radius, k, trials, alpha = 0.5, 0.25, 127, 1200, 0.05
    model = threshold_model(2, k)
    threshold = norm.cdf(radius / sigma)
    # true p_A within ±0.03 of the threshold: inputs stop at very different draws
    m = np.arange(0, 256)
    p = norm.cdf(np.abs(m - k - 0.5) / 255 / sigma)
    close = m[np.abs(p - threshold) < 0.03]
    assert (p[close] < threshold).any() and (p[close] > threshold).any()
    X = np.stack([rng.choice(close, trials) / 255, rng.integers(0, 256, trials) / 255],
                 1).astype(np.float32)
    p_true = norm.cdf(np.abs(X[:, 0].astype(np.float64) - (k + 0.5) / 255) / sigma)
    result = certify_radius(model, X, sigma, radius, n=20_000, alpha=alpha, test="betting",
                            batch_size=8192, random_state=2, noise="discrete-gaussian")
    truth = (X[:, 0] > (k + 0.5) / 255).astype(int)
    wrong = result.certified & ((result.prediction != truth) | (p_true < threshold))
    assert wrong.sum() <= binom.ppf(1 - 1e-4, trials, alpha)  # as above
    assert len(np.unique(result.samples[result.samples > 0])) > 3  # stopped at many sizes
    assert result.noise == "discrete-gaussian"


def test_float_noise_certifies_a_float_artifact_falsely_and_discrete_noise_does_not():
    sigma = 1.0
    x1 = np.ones((1, 4), np.float32)
    x0 = np.full((1, 4), 64 / 255, np.float32)
    distance = float(np.linalg.norm(x1 - x0))  # 1.50
    floats = certify(FloatArtifact(), x1, sigma, n=10_000, random_state=0)
    far = predict(FloatArtifact(), x0, sigma, n=10_000, random_state=0)
    # float noise: class 0 certified at 3.2 > 1.5, yet the smoothed classifier says 1 at x0
    assert floats.prediction[0] == 0 and floats.radius[0] > distance and far[0] == 1
    lattice = certify(FloatArtifact(), x1, sigma, n=10_000, random_state=0,
                      noise="discrete-gaussian")
    far = predict(FloatArtifact(), x0, sigma, n=10_000, random_state=0,
                  noise="discrete-gaussian")
    # the discrete noise's certificate is sound: whatever it certifies at x1 holds at x0
    assert not (lattice.prediction[0] != ABSTAIN and lattice.radius[0] > distance
                and far[0] != lattice.prediction[0])
    assert lattice.radius[0] < distance


def test_the_tests_run_below_alpha_by_the_samplers_deviation():
    noise = LatticeGaussian(0.5, STEP)
    tau = noise.coordinate_distance()
    assert 2 * noise.half_width * 2.0**-60 <= tau < 3e-15
    assert noise.test_alpha(0.001, 100_100, 784) == pytest.approx(0.001 - 100_100 * 784 * tau)
    assert 0.001 - noise.test_alpha(0.001, 100_100, 784) < 1e-6
    with pytest.raises(ValueError, match="exceed"):
        noise.test_alpha(1e-12, 10**6, 3 * 224 * 224)


# ----------------------------------------------------------------------------- interfaces


def test_bad_noise_parameters_are_refused_with_what_to_do():
    X = lattice_points(np.random.default_rng(4), (2, 3))
    model = LinearBinary(np.ones(3), 0.0)
    with pytest.raises(ValueError, match="The .noise. parameter of certify must be a str among"):
        certify(model, X, 0.5, n=10, noise="laplace")
    with pytest.raises(ValueError, match="noise_step applies to noise='discrete-gaussian'"):
        certify(model, X, 0.5, n=10, noise_step=1 / 255)
    with pytest.raises(ValueError, match="too many to form exactly"):
        certify(model, np.round(X * 255) * 2e5, 0.5, n=10, noise="discrete-gaussian",
                noise_step=1)


def test_estimators_record_the_noise_in_certificates_model_files_and_runs(digits, tmp_path):
    X, y = digits
    X, y = X[:200], y[:200]
    clf = smoothsk.GaussianAugClassifier(sigma=0.5, max_epochs=1, n=300, n_predict=200,
                                         random_state=0, noise="discrete-gaussian",
                                         noise_step="1/16").fit(X, y)
    cert = clf.certify(X[:10])
    assert (cert.noise, cert.noise_step) == ("discrete-gaussian", "1/16")
    assert clf.certify_radius(X[:10], 0.25).noise == "discrete-gaussian"
    assert len(clf.predict_or_abstain(X[:5])) == 5
    path = tmp_path / "m.smoothsk"
    save_model(clf, path)
    loaded = load_model(path)
    assert (loaded.noise, loaded.noise_step) == ("discrete-gaussian", "1/16")
    np.testing.assert_array_equal(loaded.certify(X[:10]).counts, cert.counts)
    out = tmp_path / "run.tsv"
    run = dict(run_info={}, n0=20, n=200, alpha=0.001, batch_size=500, random_state=0)
    certify_to_tsv(clf, X[:6], y[:6], np.arange(6), out, **run)
    sidecar = json.loads((tmp_path / "run.tsv.run.json").read_text())
    assert (sidecar["noise"], sidecar["noise_step"]) == ("discrete-gaussian", "1/16")
    clf.set_params(noise="gaussian", noise_step=None)
    with pytest.raises(RunMismatchError, match="noise"):
        certify_to_tsv(clf, X[:6], y[:6], np.arange(6), out, **run)
    clf.set_params(noise="discrete-gaussian", noise_step=None)  # 1/255: digits are off it
    with pytest.raises(ValueError, match="noise_step=the spacing"):
        clf.certify(X[:3])
