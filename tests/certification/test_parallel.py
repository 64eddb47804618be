"""Certification on joblib workers and Dask, and training through Accelerate."""

import numpy as np
import pytest
import torch
from joblib import parallel_config

from smoothsk import GaussianAugClassifier, SmoothMixClassifier, certify
from smoothsk.testing import tiny_estimator_params


@pytest.fixture(scope="module")
def net_and_inputs():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 16), torch.nn.ReLU(),
                              torch.nn.Linear(16, 4))
    X = np.random.default_rng(0).uniform(size=(23, 3, 2, 2)).astype(np.float32)
    return net, X


def _assert_same(a, b):
    for field in ("prediction", "radius", "pa_lower", "counts", "selection_counts"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_joblib_workers_and_chunk_sizes_give_the_serial_certificate(net_and_inputs):
    net, X = net_and_inputs
    kw = dict(n0=20, n=700, alpha=0.01, random_state=5)
    serial = certify(net, X, 0.5, **kw)
    for chunk_size in (1, 4, 50):
        _assert_same(certify(net, X, 0.5, n_jobs=2, chunk_size=chunk_size, **kw), serial)
    with parallel_config(backend="threading"):
        _assert_same(certify(net, X, 0.5, n_jobs=3, chunk_size=5, **kw), serial)
    # any subset with its global indices, and random_state=None fixed once for all workers
    picked = np.arange(0, 23, 4)
    _assert_same(certify(net, X[picked], 0.5, n_jobs=2, index_offset=picked, **kw),
                 certify(net, X[picked], 0.5, index_offset=picked, **kw))
    unseeded = certify(net, X, 0.5, n0=20, n=700, n_jobs=2, chunk_size=3)
    assert unseeded.counts.sum() == 23 * 700
    with pytest.raises(ValueError, match="chunk_size"):
        certify(net, X, 0.5, n_jobs=2, chunk_size=0, **kw)


@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_batchnorm_network_in_training_mode_gives_the_serial_result_on_every_backend(backend):
    """Workers use their own eval-mode copy; the caller's network, statistics and mode stay."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 16),
                              torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    net(torch.randn(64, 12))  # non-trivial running statistics
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    X = np.random.default_rng(2).uniform(size=(40, 3, 2, 2)).astype(np.float32)
    kw = dict(n0=20, n=500, alpha=0.01, random_state=3, batch_size=64)
    serial = certify(net, X, 0.5, **kw)
    assert net.training
    with parallel_config(backend=backend):
        parallel = certify(net, X, 0.5, n_jobs=4, chunk_size=3, **kw)
    _assert_same(parallel, serial)
    assert net.training
    for name, value in net.state_dict().items():
        torch.testing.assert_close(value, before[name])


@pytest.mark.slow
def test_estimator_certify_with_n_jobs(digits):
    X, y = digits
    clf = GaussianAugClassifier(**tiny_estimator_params(max_epochs=2)).fit(X[:200], y[:200])
    _assert_same(clf.certify(X[200:230], n_jobs=2), clf.certify(X[200:230]))


@pytest.mark.slow
def test_dask_local_cluster_equals_serial(net_and_inputs):
    distributed = pytest.importorskip("dask.distributed")
    net, X = net_and_inputs
    kw = dict(n0=20, n=500, alpha=0.01, random_state=8)
    serial = certify(net, X, 0.25, **kw)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster), parallel_config(backend="dask"):
        clustered = certify(net, X, 0.25, n_jobs=-1, chunk_size=4, **kw)
    _assert_same(clustered, serial)


def test_accelerate_composition_trains_and_certifies(digits):
    accelerate = pytest.importorskip("accelerate")
    from smoothsk.hf import SmoothedAccelerateMixin

    class AcceleratedSmoothMix(SmoothedAccelerateMixin, SmoothMixClassifier):
        pass

    X, y = digits
    clf = AcceleratedSmoothMix(
        accelerator=accelerate.Accelerator(cpu=True), device=None, num_noise=2, num_steps=1,
        **tiny_estimator_params(max_epochs=8, sigma=0.25, module__hidden_units=(64,)))
    clf.fit(X[:400], y[:400])
    losses = clf.history[:, "train_loss"]
    assert losses[-1] < losses[0]
    assert clf.certify(X[400:460], n=200).is_correct(y[400:460]).mean() > 0.5


def test_accelerate_training_stops_on_a_non_finite_loss(digits):
    """The Accelerate step keeps the plain step's divergence check: a NaN loss stops fit
    with what to do instead of training on."""
    accelerate = pytest.importorskip("accelerate")
    from smoothsk.hf import SmoothedAccelerateMixin

    class Diverging(SmoothedAccelerateMixin, GaussianAugClassifier):
        def training_loss(self, X, y):
            return super().training_loss(X, y) * float("nan")

    X, y = digits
    clf = Diverging(accelerator=accelerate.Accelerator(cpu=True), device=None,
                    **tiny_estimator_params(max_epochs=1))
    with pytest.raises(FloatingPointError, match="diverged. Lower the learning rate"):
        clf.fit(X[:64], y[:64])


def test_accelerate_refuses_the_estimators_own_fp16_scaler(digits):
    """fp16 under Accelerate is the accelerator's: the estimator's GradScaler would
    unscale gradients that accelerator.backward never scaled."""
    accelerate = pytest.importorskip("accelerate")
    from smoothsk.hf import SmoothedAccelerateMixin

    class Accelerated(SmoothedAccelerateMixin, GaussianAugClassifier):
        pass

    X, y = digits
    clf = Accelerated(accelerator=accelerate.Accelerator(cpu=True), device=None,
                      **tiny_estimator_params(max_epochs=1, precision="fp16"))
    with pytest.raises(ValueError, match="mixed_precision"):
        clf.fit(X[:64], y[:64])


class ThreadRecorder(torch.nn.Module):
    """A linear classifier that records torch's thread count at every forward pass."""

    def __init__(self, d: int = 4, k: int = 3):
        super().__init__()
        self.linear = torch.nn.Linear(d, k)
        self.seen: list[int] = []

    def forward(self, x):
        self.seen.append(torch.get_num_threads())
        return self.linear(x.flatten(1))


def test_threads_apply_inside_a_call_and_are_restored_after():
    from smoothsk.certification.parallel import torch_threads

    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    net = ThreadRecorder()
    X = np.zeros((3, 4), np.float32)
    certify(net, X, 0.5, n0=5, n=10, random_state=0, threads=wanted)
    assert set(net.seen) == {wanted} and torch.get_num_threads() == before
    with torch_threads(wanted):
        assert torch.get_num_threads() == wanted
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        certify(net, X, 0.5, n=10, threads=0)


def test_the_threading_backend_leaves_the_callers_thread_count_alone():
    before = torch.get_num_threads()
    other = before + 1
    X = np.zeros((8, 4), np.float32)
    with parallel_config(backend="threading"):
        certify(ThreadRecorder(), X, 0.5, n0=5, n=10, random_state=0, n_jobs=2,
                threads_per_worker=other)
    assert torch.get_num_threads() == before


def test_an_estimators_n_threads_holds_in_fit_predict_and_certify(digits):
    X, y = digits
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    params = tiny_estimator_params(input_range=(0, 1))
    del params["module__hidden_units"]
    clf = GaussianAugClassifier(module=ThreadRecorder, module__d=64, module__k=10,
                                n_threads=wanted, **params)
    clf.fit(X[:60], y[:60])
    clf.predict(X[:2])
    clf.certify(X[:2])
    assert set(clf.module_.seen) == {wanted} and torch.get_num_threads() == before
