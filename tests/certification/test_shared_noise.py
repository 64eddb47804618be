"""Shared noise blocks: the same draws for every input, the same per-input guarantee."""

import json

import numpy as np
import pytest
import torch
from conftest import LinearBinary, points_at_radii
from scipy.stats import binom, norm

from smoothsk import (
    ABSTAIN,
    GaussianAugClassifier,
    certify,
    certify_radius,
    class_counts,
    predict,
)
from smoothsk.certification import sampling
from smoothsk.io.runs import RunMismatchError, certify_to_tsv


@pytest.mark.slow
def test_each_input_keeps_cohens_guarantee():
    rng = np.random.default_rng(11)
    sigma, alpha, n, trials = 0.5, 0.05, 400, 1000
    model = LinearBinary(rng.normal(size=5), rng.normal())
    radii = sigma * norm.ppf(rng.uniform(0.55, 0.98, size=trials))
    X = points_at_radii(model, radii, rng)
    wrong = certified = 0
    # Inputs of one call share their draws, so their failures are not independent; one
    # input per call with its own seed makes the trials independent again.
    for t in range(trials):
        cert = certify(model, X[t : t + 1], sigma, n0=50, n=n, alpha=alpha,
                       random_state=t, shared_noise=True)
        ok = cert.prediction[0] != ABSTAIN
        certified += ok
        wrong += ok and (cert.prediction[0] != model.true_class(X[t : t + 1])[0]
                         or cert.radius[0] > radii[t])
    # Every input's selection and estimation draws are still i.i.d. N(0, σ²I) and
    # independent of each other, so each trial fails with probability <= alpha (Cohen et
    # al., Thm 1): failures <= Bin(trials, alpha), exceeded with probability < 1e-4.
    assert wrong <= binom.ppf(1 - 1e-4, trials, alpha)
    assert certified > trials / 2


def test_every_input_sees_the_same_draws(small_net, small_X):
    twins = np.concatenate([small_X[:5], small_X[:5]])
    shared = class_counts(small_net, twins, 0.5, 700, random_state=0, shared_noise=True)
    np.testing.assert_array_equal(shared[:5], shared[5:])
    own = class_counts(small_net, twins, 0.5, 700, random_state=0)
    assert not np.array_equal(own[:5], own[5:])  # independent noise differs per index
    cert = certify(small_net, small_X, 1.0, n0=500, n=500, random_state=0, shared_noise=True)
    assert cert.shared_noise and not np.array_equal(cert.selection_counts, cert.counts)


@pytest.mark.slow
def test_shared_certificates_do_not_depend_on_batching_chunking_or_workers(small_net, small_X):
    kw = dict(n0=37, n=2500, alpha=0.01, random_state=7, shared_noise=True)
    ref = certify(small_net, small_X, 0.5, batch_size=1000, **kw)
    for batch_size in (1, 64, 999, 4096):
        other = certify(small_net, small_X, 0.5, batch_size=batch_size, **kw)
        np.testing.assert_array_equal(other.counts, ref.counts)
        np.testing.assert_array_equal(other.selection_counts, ref.selection_counts)
    parts = [certify(small_net, small_X[s : s + 5], 0.5, index_offset=s, batch_size=300, **kw)
             for s in range(0, len(small_X), 5)]
    np.testing.assert_array_equal(np.concatenate([p.counts for p in parts]), ref.counts)
    workers = certify(small_net, small_X, 0.5, n_jobs=2, chunk_size=4, **kw)
    np.testing.assert_array_equal(workers.counts, ref.counts)
    picked = np.arange(1, len(small_X), 3)
    subset = certify(small_net, small_X[picked], 0.5, index_offset=picked, **kw)
    np.testing.assert_array_equal(subset.counts, ref.counts[picked])
    # the adaptive test and PREDICT share the same machinery
    y = ref.selection_counts.argmax(1)
    first = certify_radius(small_net, small_X, 0.5, 0.1, y=y, n=2000, random_state=3,
                           shared_noise=True)
    again = certify_radius(small_net, small_X, 0.5, 0.1, y=y, n=2000, random_state=3,
                           shared_noise=True, batch_size=77)
    np.testing.assert_array_equal(first.certified, again.certified)
    np.testing.assert_array_equal(
        predict(small_net, small_X, 0.5, n=500, random_state=0, shared_noise=True),
        predict(small_net, small_X, 0.5, n=500, random_state=0, shared_noise=True,
                batch_size=50))


@pytest.mark.parametrize("tile_bytes", [1, 7 * 48, 2**40])
def test_the_order_of_rows_within_a_block_changes_no_count(monkeypatch, small_net, small_X,
                                                           tile_bytes):
    # Rows of 12 float32 (48 bytes): tiles of 1 draw, of 7 (not dividing a block), of a
    # whole block (input-major), against the default (341 draws, last tile of one)
    kw = dict(n0=37, n=2500, random_state=7, shared_noise=True, batch_size=250)
    ref = certify(small_net, small_X, 0.5, **kw)
    monkeypatch.setattr(sampling, "SHARED_NOISE_TILE_BYTES", tile_bytes)
    other = certify(small_net, small_X, 0.5, **kw)
    np.testing.assert_array_equal(other.counts, ref.counts)
    np.testing.assert_array_equal(other.selection_counts, ref.selection_counts)


def test_shared_noise_tiles_fit_the_budget():
    assert sampling.shared_noise_tile(256) == sampling.SHARED_NOISE_TILE_BYTES // 256
    assert sampling.shared_noise_tile(10**9) == 1  # a row larger than the budget
    assert sampling.shared_noise_tile(1) == sampling.NOISE_BLOCK


def test_memory_stays_bounded_by_the_batch():
    class Recorder(torch.nn.Module):
        largest = 0

        def forward(self, x):
            Recorder.largest = max(Recorder.largest, len(x))
            return torch.stack([x.sum(1), -x.sum(1)], 1)

    X = np.zeros((200, 4), dtype=np.float32)
    certify(Recorder(), X, 0.5, n0=10, n=5000, batch_size=333, random_state=0,
            shared_noise=True)
    assert Recorder.largest <= 333


def test_estimators_and_runs_record_it(tmp_path, digits):
    X, y = digits
    clf = GaussianAugClassifier(sigma=0.25, max_epochs=2, n=300, random_state=0,
                                shared_noise=True).fit(X[:300], y[:300])
    assert clf.certify(X[300:310]).shared_noise
    out = tmp_path / "run.tsv"
    certify_to_tsv(clf, X[300:310], y[300:310], np.arange(10), out, run_info={}, n0=50,
                   n=300, alpha=0.001, batch_size=500, random_state=0)
    assert json.loads((tmp_path / "run.tsv.run.json").read_text())["shared_noise"] is True
    clf.set_params(shared_noise=False)
    with pytest.raises(RunMismatchError, match="shared_noise"):
        certify_to_tsv(clf, X[300:320], y[300:320], np.arange(20), out, run_info={}, n0=50,
                       n=300, alpha=0.001, batch_size=500, random_state=0)
    with pytest.raises(ValueError, match="The .shared_noise. parameter of class_counts must be"):
        class_counts(torch.nn.Linear(64, 2), X[:2], 0.5, 10, shared_noise="yes")
