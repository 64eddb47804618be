import numpy as np
import pytest
import torch
from conftest import LinearBinary, points_at_radii
from scipy.stats import binom, binomtest, norm

from smoothsk import (
    ABSTAIN,
    certify,
    class_counts,
    lower_confidence_bound,
    predict,
    upper_confidence_bound,
)
from smoothsk.certification import heap, sampling

# ----------------------------------------------------------------------------- bounds


def test_lower_bound_all_successes_closed_form():
    # P(Bin(n, p) = n) = p^n = alpha  ->  p_lower = alpha ** (1 / n)
    n = np.array([1, 10, 100, 100_000])
    np.testing.assert_allclose(lower_confidence_bound(n, n, 0.001), 0.001 ** (1 / n), rtol=1e-10)


def test_upper_bound_no_successes_closed_form():
    # P(Bin(n, p) = 0) = (1 - p)^n = alpha  ->  p_upper = 1 - alpha ** (1 / n)
    n = np.array([1, 10, 1000])
    np.testing.assert_allclose(upper_confidence_bound(0, n, 0.01), 1 - 0.01 ** (1 / n), rtol=1e-10)


def test_bounds_at_extremes():
    assert lower_confidence_bound(0, 50, 0.05) == 0.0
    assert upper_confidence_bound(50, 50, 0.05) == 1.0


def test_lower_bound_matches_scipy_exact_interval():
    rng = np.random.default_rng(0)
    n = rng.integers(1, 5000, size=40)
    k = rng.integers(0, n + 1)
    alpha = 0.01
    bounds = lower_confidence_bound(k, n, alpha)  # vectorised
    for ki, ni, lo in zip(k, n, bounds):
        # one-sided (1 - alpha) bound = lower end of the two-sided (1 - 2 alpha) exact interval
        ref = binomtest(int(ki), int(ni)).proportion_ci(1 - 2 * alpha, method="exact").low
        assert lo == pytest.approx(ref, abs=1e-12)
    uppers = upper_confidence_bound(k, n, alpha)
    for ki, ni, hi in zip(k, n, uppers):
        ref = binomtest(int(ki), int(ni)).proportion_ci(1 - 2 * alpha, method="exact").high
        assert hi == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 2, "0.1"])
def test_bound_rejects_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        lower_confidence_bound(1, 2, alpha)


def test_bound_rejects_bad_counts():
    with pytest.raises(ValueError, match="trials"):
        lower_confidence_bound(3, 2, 0.1)


# ----------------------------------------------------------------------------- soundness


@pytest.mark.parametrize("dim,sigma", [(2, 0.25), (20, 0.5), (5, 1.0)])
def test_certified_radius_exceeds_true_radius_at_most_alpha_rate(dim, sigma):
    rng = np.random.default_rng(dim)
    model = LinearBinary(rng.normal(size=dim), rng.normal())
    trials, alpha, n = 1500, 0.05, 400
    # true p_A between 0.55 and 0.98: the region where a wrong bound would show up
    radii = sigma * norm.ppf(rng.uniform(0.55, 0.98, size=trials))
    X = points_at_radii(model, radii, rng)
    np.testing.assert_allclose(model.true_radius(X), radii, rtol=1e-4, atol=1e-5)
    cert = certify(model, X, sigma, n0=50, n=n, alpha=alpha, batch_size=4096, random_state=1)
    certified = cert.prediction != ABSTAIN
    wrong = certified & ((cert.prediction != model.true_class(X)) | (cert.radius > radii))
    # Each trial fails independently with probability <= alpha (Cohen et al., Thm 1 and the
    # Clopper-Pearson guarantee), so failures <= Bin(trials, alpha); a correct implementation
    # exceeds its 1 - 1e-4 quantile with probability < 1e-4.
    assert wrong.sum() <= binom.ppf(1 - 1e-4, trials, alpha)
    assert certified.mean() > 0.5  # and it is not vacuous


def test_certified_radius_is_close_to_true_radius_for_large_n():
    rng = np.random.default_rng(3)
    sigma = 0.5
    model = LinearBinary(rng.normal(size=10), 0.3)
    radii = sigma * np.linspace(0.5, 2.0, 12)  # p_A from 0.69 to 0.98
    X = points_at_radii(model, radii, rng)
    cert = certify(model, X, sigma, n=100_000, alpha=0.001, batch_size=20_000, random_state=0)
    assert np.all(cert.prediction == model.true_class(X))
    ratio = cert.radius / radii
    # With n = 1e5 the Clopper-Pearson slack is about 3.1 sqrt(p(1-p)/n) <= 0.005 in p_A,
    # i.e. a few percent of the radius here; the certificate must be that tight.
    assert np.all(ratio <= 1.0)
    assert np.all(ratio > 0.9) and ratio.mean() > 0.95


# ----------------------------------------------------------------------------- reproducibility


@pytest.mark.slow
def test_certificates_do_not_depend_on_batch_size_or_chunking(small_net, small_X):
    kw = dict(n0=37, n=2500, alpha=0.01, random_state=7)
    ref = certify(small_net, small_X, 0.5, batch_size=1000, **kw)
    for batch_size in (1, 64, 999, 4096):
        other = certify(small_net, small_X, 0.5, batch_size=batch_size, **kw)
        np.testing.assert_array_equal(other.counts, ref.counts)
        np.testing.assert_array_equal(other.selection_counts, ref.selection_counts)
        np.testing.assert_array_equal(other.radius, ref.radius)
    parts = [certify(small_net, small_X[s:s + 5], 0.5, index_offset=s, batch_size=300, **kw)
             for s in range(0, len(small_X), 5)]
    np.testing.assert_array_equal(np.concatenate([p.counts for p in parts]), ref.counts)
    np.testing.assert_array_equal(np.concatenate([p.prediction for p in parts]), ref.prediction)
    # an array of global indices picks out any subset (every 3rd input) with its own noise
    picked = np.arange(1, len(small_X), 3)
    subset = certify(small_net, small_X[picked], 0.5, index_offset=picked, batch_size=77, **kw)
    np.testing.assert_array_equal(subset.counts, ref.counts[picked])
    with pytest.raises(ValueError, match="indices"):
        certify(small_net, small_X[:4], 0.5, index_offset=np.arange(3), **kw)


def test_datasets_and_loaders_give_the_same_certificates(small_net, small_X):
    kw = dict(n0=20, n=300, random_state=3, batch_size=128)
    ref = certify(small_net, small_X, 0.25, **kw)
    labels = torch.zeros(len(small_X), dtype=torch.long)
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(small_X), labels)
    loader = torch.utils.data.DataLoader(dataset, batch_size=6)
    for X in (torch.from_numpy(small_X), dataset, loader):
        np.testing.assert_array_equal(certify(small_net, X, 0.25, **kw).counts, ref.counts)


def test_different_seeds_give_different_counts(small_net, small_X):
    a = class_counts(small_net, small_X, 0.5, 500, random_state=0)
    b = class_counts(small_net, small_X, 0.5, 500, random_state=1)
    assert not np.array_equal(a, b)
    assert np.all(a.sum(axis=1) == 500)


def test_certify_selection_and_estimation_use_fresh_noise(small_net, small_X):
    cert = certify(small_net, small_X, 1.0, n0=500, n=500, random_state=0)
    assert not np.array_equal(cert.selection_counts, cert.counts)


class _Recorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)
        self.largest_batch = 0
        self.modes = set()

    def forward(self, x):
        self.largest_batch = max(self.largest_batch, len(x))
        self.modes.add((self.training, torch.is_inference_mode_enabled()))
        return self.lin(x)


def test_memory_is_bounded_by_batch_size_and_mode_is_restored():
    net = _Recorder().train()
    X = np.zeros((3, 4), dtype=np.float32)
    certify(net, X, 0.5, n0=10, n=50_000, batch_size=333, random_state=0)
    assert net.largest_batch == 333  # never num copies at once
    assert net.modes == {(False, True)}  # eval mode, inference mode
    assert net.training  # restored
    assert all(p.grad is None for p in net.parameters())


def test_certify_with_gpu_module_if_available(small_net, small_X):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine (the CPU path is tested everywhere else)")
    cert = certify(small_net.cuda(), small_X, 0.5, n0=10, n=100, random_state=0)
    assert cert.counts.sum(axis=1).tolist() == [100] * len(small_X)


# ----------------------------------------------------------------------------- predict


def test_predict_abstains_on_the_boundary_and_answers_far_from_it():
    model = LinearBinary([1.0, 0.0], 0.0)
    far = np.array([[3.0, 0.0], [-3.0, 1.0]], dtype=np.float32)
    on_boundary = np.zeros((40, 2), dtype=np.float32)
    assert predict(model, far, 0.5, n=1000, alpha=0.001, random_state=0).tolist() == [1, 0]
    # at p_A = 1/2 a non-abstaining answer is an error of PREDICT: rate <= alpha = 0.05,
    # so at most Bin(40, 0.05).ppf(1 - 1e-4) = 8 of 40 answer.
    answers = predict(model, on_boundary, 0.5, n=1000, alpha=0.05, random_state=0)
    assert (answers != ABSTAIN).sum() <= binom.ppf(1 - 1e-4, 40, 0.05)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sigma=0.0), "sigma"),
        (dict(sigma=-1.0), "sigma"),
        (dict(sigma=float("nan")), "sigma"),
        (dict(alpha=0.0), "alpha"),
        (dict(alpha=1.5), "alpha"),
        (dict(n0=0), "n0"),
        (dict(n=0), "n"),
        (dict(n=2.5), "n"),
        (dict(batch_size=0), "batch_size"),
        (dict(index_offset=-1), "index_offset"),
    ],
)
def test_certify_rejects_bad_parameters(small_net, small_X, kwargs, match):
    params = dict(sigma=0.5, n0=5, n=10)
    params.update(kwargs)
    sigma = params.pop("sigma")
    with pytest.raises(ValueError, match=match):
        certify(small_net, small_X, sigma, **params)


def test_certify_rejects_bad_inputs(small_net, small_X):
    bad = small_X.copy()
    bad[3, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        certify(small_net, bad, 0.5, n0=5, n=10)
    with pytest.raises(ValueError, match="empty"):
        certify(small_net, small_X[:0], 0.5, n0=5, n=10)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        certify(small_net, small_X[0, 0, 0], 0.5, n0=5, n=10)


def test_certify_rejects_networks_without_batch_by_class_logits(small_X):
    class Scalar(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1).sum(1)

    with pytest.raises(ValueError, match="shape \\(batch, n_classes\\)"):
        certify(Scalar(), small_X, 0.5, n0=5, n=10)


def test_free_heap_is_returned_once_per_trim_interval_and_at_the_end(monkeypatch):
    """Long calls trim glibc's heap (oneDNN convolutions otherwise fragment it and resident
    memory grows with every input), but once per ``TRIM_EVERY_BYTES`` of noisy inputs, not
    after every chunk: each trim costs the next batches their page faults again."""
    from smoothsk.certification import heap, sampling

    calls = []
    monkeypatch.setattr(heap, "_MALLOC_TRIM", lambda pad: calls.append(pad))
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    # batch_size 10 with 5 draws each: chunks of 2 inputs, each 2 · 5 · 4 · 4 = 160 bytes of
    # noisy rows; with a 300-byte interval the 2nd, 4th and 6th chunk are due (320 bytes
    # each time), and the call ends with one more trim
    monkeypatch.setattr(heap, "TRIM_EVERY_BYTES", 300)
    sampling.class_counts(net, np.zeros((12, 4), np.float32), 0.5, 5, batch_size=10,
                          random_state=0)
    assert calls == [0, 0, 0, 0]
    calls.clear()
    # the default interval (64 MiB) is far beyond this call: only the final trim
    monkeypatch.undo()
    monkeypatch.setattr(heap, "_MALLOC_TRIM", lambda pad: calls.append(pad))
    sampling.class_counts(net, np.zeros((12, 4), np.float32), 0.5, 5, batch_size=10,
                          random_state=0)
    assert calls == [0]
    heap.release_free_memory()  # callable on any platform
    assert calls == [0, 0]


_HEAP_SCRIPT = """
import ctypes, resource, sys
from smoothsk.certification import heap, sampling
if sys.argv[1] == "raise":
    heap.raise_heap_thresholds()
_, malloc, free = heap._GLIBC
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    batch = [malloc(2**21) for _ in range(4)]  # a batch's activations: 4 x 2 MiB at once
    for block in batch:
        ctypes.memset(block, 1, 2**21)
    for block in batch:
        free(block)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.slow
@pytest.mark.skipif(heap._GLIBC is None, reason="glibc's allocator only")
def test_raised_heap_thresholds_keep_a_batchs_activations_for_the_next_batch():
    """In a fresh process glibc returns the heap's top to the OS once twice its (still
    low) mmap threshold is free there, so every batch faults its activations in again;
    after ``raise_heap_thresholds`` the next batch reuses them."""
    import subprocess
    import sys

    def faults(mode):
        run = subprocess.run([sys.executable, "-c", _HEAP_SCRIPT, mode], check=True,
                             capture_output=True, text=True)
        return int(run.stdout.split()[-1])

    pages = 4 * 2**21 // 4096  # one batch's 8 MiB
    assert faults("fresh") > 10 * pages  # faulted in again on (nearly) every batch
    assert faults("raise") < 2 * pages  # faulted in once, then reused


def test_sampling_raises_the_heap_thresholds_before_its_batches(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "raise_heap_thresholds", lambda: calls.append(True))
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    sampling.class_counts(net, np.zeros((3, 4), np.float32), 0.5, 5, random_state=0)
    assert calls == [True]


class _OneLogit(torch.nn.Module):
    """Two-class logits ``(x_0, 0)`` with a third logit fixed to ``value``."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x):
        third = torch.full((len(x), 1), self.value)
        return torch.cat([x[:, :1] + 5.0, torch.zeros(len(x), 1), third], dim=1)


@pytest.mark.parametrize("shared_noise", [False, True])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_logit_anywhere_refuses_to_certify(value, shared_noise):
    # NaN in a losing class would still make the row's votes meaningless; +inf wins them
    with pytest.raises(FloatingPointError, match="non-finite logits"):
        certify(_OneLogit(value), np.zeros((3, 2), np.float32), 0.5, n0=10, n=50,
                random_state=0, shared_noise=shared_noise)


@pytest.mark.parametrize("shared_noise", [False, True])
def test_minus_infinity_in_a_losing_class_changes_no_vote(shared_noise):
    cert = certify(_OneLogit(float("-inf")), np.zeros((3, 2), np.float32), 0.5, n0=10, n=50,
                   random_state=0, shared_noise=shared_noise)
    assert np.all(cert.counts[:, 2] == 0) and np.all(cert.prediction == 0)


class _GrowingOutput(torch.nn.Module):
    """Two logits on the first call, three after: no fixed set of classes to vote for."""

    calls = 0

    def forward(self, x):
        self.calls += 1
        return torch.zeros(len(x), 2 if self.calls == 1 else 3)


@pytest.mark.parametrize("shared_noise", [False, True])
def test_a_varying_number_of_classes_is_refused(shared_noise):
    with pytest.raises(ValueError, match="varying number of classes"):
        class_counts(_GrowingOutput(), np.zeros((4, 2), np.float32), 0.5, 100, batch_size=50,
                     random_state=0, shared_noise=shared_noise)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_all_finite_sees_every_kind_of_non_finite_value(dtype):
    from smoothsk.certification.inputs import all_finite

    values = torch.arange(12, dtype=torch.float32).to(dtype)
    assert bool(all_finite(values)) and bool(all_finite(values[:0]))
    for bad in (float("nan"), float("inf"), float("-inf")):
        for where in (0, 5, 11):  # first, middle, last: one pass must miss none
            broken = values.clone()
            broken[where] = bad
            assert not bool(all_finite(broken)), (bad, where)


@pytest.mark.parametrize("shared_noise", [False, True])
def test_a_row_of_minus_infinity_refuses_to_certify(shared_noise):
    # every logit −inf: the row's max is −inf and its "vote" (class 0) means nothing
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 3))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].bias.fill_(float("-inf"))
    with pytest.raises(FloatingPointError, match="non-finite logits"):
        certify(net, np.zeros((3, 2), np.float32), 0.5, n0=10, n=50, random_state=0,
                shared_noise=shared_noise)


def test_the_certification_modules_and_the_certify_function_both_import():
    import importlib

    import smoothsk

    core = importlib.import_module("smoothsk.certification.core")
    assert smoothsk.certify is core.certify and callable(smoothsk.certify)
    for name in ("bounds", "sampling", "parallel", "adaptive", "adapters"):
        importlib.import_module(f"smoothsk.certification.{name}")


def _fixed_networks():
    """Two networks with weights from a seeded numpy generator (not torch's init, which
    may change between versions) and 24 inputs."""
    rng = np.random.default_rng(2024)
    linear = torch.nn.Linear(6, 3)
    mlp = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    for net in (linear, mlp):
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.from_numpy(rng.normal(size=tuple(p.shape)).astype(np.float32)))
    X = rng.uniform(0, 1, size=(24, 6)).astype(np.float32)
    return {"linear": linear, "mlp": mlp}, X


def test_counts_are_bit_identical_to_the_committed_ones_of_0_2_before_the_redesign():
    """``tests/data/certificates-b5d89c5.json`` holds what commit b5d89c5 computed for
    these networks and seeds (CERTIFY's selection and estimation counts, ``class_counts``,
    the rounds test's decisions and draws, with and without shared noise); a change in
    how noise is drawn or votes are counted shows here."""
    import json
    from pathlib import Path

    from smoothsk import certify_radius, class_counts

    expected = json.loads((Path(__file__).parents[1] / "data" / "certificates-b5d89c5.json")
                          .read_text())
    networks, X = _fixed_networks()
    for name, net in networks.items():
        for shared in (False, True):
            want = expected[f"{name}-shared" if shared else name]
            cert = certify(net, X, 0.5, n0=50, n=700, alpha=0.01, random_state=11,
                           batch_size=97, shared_noise=shared)
            np.testing.assert_array_equal(cert.selection_counts, want["selection"])
            np.testing.assert_array_equal(cert.counts, want["estimation"])
            np.testing.assert_array_equal(cert.radius, want["radius"])
            counts = class_counts(net, X, 0.5, 300, random_state=12, shared_noise=shared)
            np.testing.assert_array_equal(counts, want["class_counts"])
            adaptive = certify_radius(net, X, 0.5, 0.2, n0=40, n=3000, alpha=0.01,
                                      random_state=13, shared_noise=shared)
            np.testing.assert_array_equal(adaptive.certified, want["adaptive_certified"])
            np.testing.assert_array_equal(adaptive.samples, want["adaptive_samples"])


@pytest.mark.parametrize("kind", ["array", "dataset", "loader"])
def test_an_active_mask_counts_those_inputs_alone_with_their_own_noise(kind):
    networks, X = _fixed_networks()
    net = networks["mlp"]
    active = np.zeros(len(X), bool)
    active[[1, 2, 7, 20]] = True
    data = {"array": X, "dataset": torch.utils.data.TensorDataset(torch.from_numpy(X)),
            "loader": torch.utils.data.DataLoader(torch.from_numpy(X), batch_size=5)}[kind]
    kwargs = dict(batch_size=64, random_state=3, index_offset=10, streams=[1, (3, 2)])
    full = sampling.sample_counts(net, X, 0.5, [40, 25], **kwargs)
    masked = sampling.sample_counts(net, data, 0.5, [40, 25], active=active, **kwargs)
    for whole, part in zip(full, masked):
        np.testing.assert_array_equal(part[active], whole[active])
        assert not part[~active].any()


def test_labels_are_not_compared_with_the_class_indices_of_a_bare_network(digits):
    import smoothsk
    """certified_accuracy(y_strings, certify(clf.module_, X, σ)) returned 0.0 in silence."""
    from smoothsk import GaussianAugClassifier, certified_accuracy

    X, y = digits
    names = np.array(list("abcdefghij"))[y]
    clf = GaussianAugClassifier(max_epochs=2, module__hidden_units=(16,), random_state=0)
    clf.fit(X[:200], names[:200])
    bare = certify(clf.module_, X[:10], 0.25, n0=10, n=50, random_state=0)
    with pytest.raises(ValueError, match="holds class indices.*y_true holds labels"):
        certified_accuracy(names[:10], bare)
    with pytest.raises(ValueError, match="outside 0 … 9"):
        bare.is_correct(y[:10] + 10)
    with pytest.raises(ValueError, match="holds class indices"):
        smoothsk.certify_radius(clf.module_, X[:10], 0.25, 0.1, n0=10, n=50).is_correct(names[:10])
    # indices with the bare certificate, labels with the estimator's: both fine
    indices = np.searchsorted(clf.classes_, names[:10])
    assert certified_accuracy(indices, bare) == certified_accuracy(
        names[:10], clf.certify(X[:10], n0=10, n=50, random_state=0))


def test_verbose_certification_shows_progress_and_the_time_left(small_net, small_X, capsys):
    plain = certify(small_net, small_X, 0.5, n=200, random_state=0)
    shown = certify(small_net, small_X, 0.5, n=200, random_state=0, verbose=True)
    np.testing.assert_array_equal(shown.counts, plain.counts)  # the same certificate
    err = capsys.readouterr().err
    # off a terminal: a log line with the count, the rate and the time left
    assert f"{len(small_X)}/{len(small_X)}" in err and "left" in err and "certify" in err


@pytest.mark.parametrize("shared_noise", [False, True])
def test_a_network_of_another_input_width_is_refused_with_what_to_do(shared_noise):
    """torch's "mat1 and mat2 shapes cannot be multiplied" used to reach the user."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(5, 3))
    with pytest.raises(ValueError, match=r"cannot process inputs of shape \(4,\).*Pass inputs"):
        certify(net, np.zeros((2, 4), np.float32), 0.5, n0=5, n=10, shared_noise=shared_noise)
