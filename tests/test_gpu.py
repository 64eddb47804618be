"""The certification core and the estimators on a CUDA device.

Everything here needs a GPU and is skipped without one: the CPU path of the same
functions is tested everywhere else.  Run on a GPU machine with ``pytest tests/test_gpu.py``.
"""

import warnings

import numpy as np
import pytest
import torch

from smoothsk import GaussianAugClassifier, certify, class_counts
from smoothsk.io.model_file import load_model, save_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device (the CPU path is tested elsewhere)")


def _mlp(features=8, classes=3):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(features, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, classes)).cuda().eval()


def _points(count=6, features=8):
    return np.random.default_rng(0).normal(size=(count, features)).astype(np.float32)


def _host_syncs(function) -> int:
    """How many synchronising CUDA operations ``function`` performs (torch's sync debug mode)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # count every occurrence, not one per call site
        torch.cuda.set_sync_debug_mode("warn")
        try:
            function()
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(item.message) for item in caught)


@pytest.mark.parametrize("shared_noise", [False, True])
def test_host_syncs_do_not_grow_with_noise_blocks_or_batches(shared_noise):
    # Ten times the draws is ten times the noise blocks (per-block manual_seed on the CUDA
    # generator) and the forward batches; the host waits for the device only per chunk of
    # inputs: the chunk's copy to the device, its finiteness check, the network's
    # finiteness flag and the counts' copy back.  Two inputs of 2,000+ draws at batch 500
    # are two chunks with independent noise, one chunk with shared noise.
    net, X = _mlp(), _points(2)

    def run(num):
        return lambda: class_counts(net, X, 0.5, num, batch_size=500, random_state=0,
                                    shared_noise=shared_noise)

    _host_syncs(run(2_000))  # a process's first counted call shows one sync more (set-up)
    chunks = 1 if shared_noise else 2
    assert _host_syncs(run(2_000)) == _host_syncs(run(20_000)) == 4 * chunks


@pytest.mark.parametrize("shared_noise", [False, True])
def test_cuda_counts_do_not_depend_on_batching_or_splitting(shared_noise):
    net, X = _mlp(), _points(6)
    kw = dict(random_state=3, shared_noise=shared_noise)
    whole = class_counts(net, X, 0.5, 3_000, batch_size=4096, **kw)
    assert whole.sum(axis=1).tolist() == [3_000] * len(X)
    np.testing.assert_array_equal(whole, class_counts(net, X, 0.5, 3_000, batch_size=333, **kw))
    if not shared_noise:  # shared blocks belong to a chunk, so only whole calls compare
        parts = [class_counts(net, X[:2], 0.5, 3_000, batch_size=700, **kw),
                 class_counts(net, X[2:], 0.5, 3_000, batch_size=700, index_offset=2, **kw)]
        np.testing.assert_array_equal(whole, np.concatenate(parts))


def test_cuda_certificate_is_reproducible_and_sound_on_the_analytic_classifier():
    # f(x) = 1[x_0 > 0]: the smoothed classifier's radius at x is σ·|x_0|/σ = |x_0|, and a
    # CERTIFY radius exceeds the true one with probability ≤ α = 0.001 per input.
    class Sign(torch.nn.Module):
        def forward(self, x):
            return torch.stack([-x[:, 0], x[:, 0]], 1)

    X = np.zeros((20, 2), np.float32)
    X[:, 0] = np.linspace(0.1, 1.0, 20)
    first = certify(Sign().cuda(), X, 0.5, n0=100, n=10_000, random_state=0)
    again = certify(Sign().cuda(), X, 0.5, n0=100, n=10_000, random_state=0, batch_size=999)
    np.testing.assert_array_equal(first.counts, again.counts)
    assert np.all(first.prediction == 1) and np.all(first.radius <= X[:, 0])


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_estimator_trains_and_certifies_on_cuda_and_its_file_loads_anywhere(
        precision, digits, tmp_path):
    X, y = digits
    clf = GaussianAugClassifier(sigma=0.25, device="cuda", precision=precision,
                                max_epochs=5, random_state=0).fit(X[:1000], y[:1000])
    assert next(clf.module_.parameters()).is_cuda
    cert = clf.certify(X[1000:1100], n=1000)
    # a digits MLP trained for 5 epochs at σ = 0.25 is right on most test digits
    assert np.mean(cert.is_correct(y[1000:1100])) > 0.8
    assert cert.precision == precision
    save_model(clf, tmp_path / "m.smoothsk")
    loaded = load_model(tmp_path / "m.smoothsk")  # read onto the CPU, as without a GPU
    assert loaded.precision == precision
    loaded.set_params(device="cuda")
    np.testing.assert_array_equal(loaded.certify(X[1000:1100], n=1000).counts, cert.counts)
