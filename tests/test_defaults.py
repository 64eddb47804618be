"""Defaults that train: nothing but σ gives a useful model (numbers in docs/estimators.md)."""

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

import smoothsk
from smoothsk.datasets import load_digits_images


@pytest.fixture(scope="module")
def split():
    X, y = load_digits_images(flat=True)
    return train_test_split(X, y, test_size=0.3, random_state=0)


# Measured with seeds 0, 1, 2 (docs/estimators.md): Gaussian 0.965 / 0.959 / 0.965,
# SmoothMix(σ=0.5) 0.922 / 0.919 / 0.922 smoothed accuracy on the 540 test digits. The
# bounds sit 2–3 binomial standard errors (√(p(1−p)/540) ≈ 0.009–0.012) below the lowest.
@pytest.mark.parametrize("cls,params,bound", [
    (smoothsk.GaussianAugClassifier, {}, 0.93),
    (smoothsk.SmoothMixClassifier, dict(sigma=0.5), 0.89),
])
@pytest.mark.slow
def test_defaults_train_a_useful_model_on_digits(split, cls, params, bound):
    X_train, X_test, y_train, y_test = split
    clf = cls(random_state=0, **params).fit(X_train, y_train)
    assert clf.score(X_test, y_test) >= bound


@pytest.mark.parametrize("cls", [smoothsk.SmoothMixClassifier, smoothsk.SmoothAdvClassifier])
def test_warmups_fit_inside_the_default_epochs(cls):
    clf = cls()
    factors = [smoothsk.warmup_factor(epoch, clf.warmup) for epoch in range(clf.max_epochs)]
    # the term ramps up (epoch e weighs (e + 1) / warmup) ...
    np.testing.assert_allclose(factors[: clf.warmup],
                               (np.arange(clf.warmup) + 1) / clf.warmup)
    # ... and then trains at full weight for the rest of the default epochs
    assert factors[0] < 1 and factors[clf.warmup - 1:] == [1.0] * (clf.max_epochs - clf.warmup + 1)
    assert clf.max_epochs - clf.warmup >= 10


def test_the_default_network_follows_the_inputs_and_survives_the_model_file(tmp_path):
    from smoothsk.io.model_file import load_model, save_model

    rng = np.random.default_rng(0)
    images = rng.random((40, 1, 28, 28)).astype(np.float32)
    y = np.arange(40) % 3
    fast = dict(max_epochs=1, n_predict=10, random_state=0)
    lenet = smoothsk.GaussianAugClassifier(**fast).fit(images, y)
    assert lenet.default_network_ == "LeNet" and isinstance(lenet.module_, smoothsk.models.LeNet)
    # small images, flat inputs and explicit MLP widths keep the MLP
    for X, params in [(images[:, :, :8, :8], {}), (images.reshape(40, -1), {}),
                      (images, {"module__hidden_units": (16,)})]:
        clf = smoothsk.GaussianAugClassifier(**fast, **params).fit(X, y)
        assert clf.default_network_ == "MLP"
    # a new fit on other data chooses again
    assert lenet.fit(images.reshape(40, -1), y).default_network_ == "MLP"
    lenet.fit(images, y)
    save_model(lenet, tmp_path / "m.smoothsk")
    loaded = load_model(tmp_path / "m.smoothsk")
    assert loaded.default_network_ == "LeNet"
    np.testing.assert_array_equal(loaded.predict(images[:5]), lenet.predict(images[:5]))


def test_model_files_from_before_the_lenet_default_still_load_their_mlp(tmp_path):
    import json

    import torch

    from smoothsk.io.model_file import load_model, save_model

    rng = np.random.default_rng(1)
    images = rng.random((30, 1, 28, 28)).astype(np.float32)
    y = np.arange(30) % 2
    mlp = smoothsk.GaussianAugClassifier(module__hidden_units=(256, 256), max_epochs=1,
                                         n_predict=10, random_state=0).fit(images, y)
    save_model(mlp, tmp_path / "m.smoothsk")
    # what an older smoothsk wrote: the default MLP on images, no network name
    archive = torch.load(tmp_path / "m.smoothsk", weights_only=True)
    document = json.loads(archive["document"])
    del document["params"]["module__hidden_units"], document["fitted"]["default_network"]
    archive["document"] = json.dumps(document)
    torch.save(archive, tmp_path / "old.smoothsk")
    old = load_model(tmp_path / "old.smoothsk")
    assert old.default_network_ == "MLP"
    np.testing.assert_array_equal(old.predict(images[:5]), mlp.predict(images[:5]))


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    X = rng.random((60, 4)).astype(np.float32)
    return X, (X[:, 0] > 0.5).astype(int)


def test_the_default_learning_rate_anneals_to_zero_over_max_epochs(tiny):
    clf = smoothsk.GaussianAugClassifier(max_epochs=4, random_state=0).fit(*tiny)
    used = [group["lr"] for group in clf.optimizer_.param_groups]
    assert used == [0.0]  # cos(π) after the last epoch's step
    # epoch e trained at lr·(1 + cos(π e / 4)) / 2; the scheduler logs the lr of each
    expected = [1e-3 * (1 + np.cos(np.pi * e / 4)) / 2 for e in range(4)]
    np.testing.assert_allclose(clf.history[:, "event_lr"], expected, rtol=1e-9)


def test_constant_or_a_users_own_scheduler_replaces_the_cosine(tiny):
    from skorch.callbacks import LRScheduler

    constant = smoothsk.GaussianAugClassifier(max_epochs=3, lr_schedule="constant",
                                              random_state=0).fit(*tiny)
    assert [g["lr"] for g in constant.optimizer_.param_groups] == [1e-3]
    step = LRScheduler(policy="StepLR", step_size=1, gamma=0.5)
    own = smoothsk.GaussianAugClassifier(max_epochs=3, callbacks=[("lr_scheduler", step)],
                                         random_state=0).fit(*tiny)
    assert "lr_schedule" not in dict(own.callbacks_)
    assert own.history[:, "event_lr"] == [1e-3, 5e-4, 2.5e-4]
    with pytest.raises(ValueError, match="lr_schedule"):
        smoothsk.GaussianAugClassifier(lr_schedule="linear").fit(*tiny)


def test_inputs_outside_the_declared_range_are_refused_with_what_to_do(digits):
    """Raw digits counts (0…16) where [0, 1] is meant certified 100 % at r = 1.0 before:
    radii in the wrong units. Now fit, predict and certify refuse them."""
    from sklearn.datasets import load_digits

    from smoothsk import GaussianAugClassifier

    raw, y = load_digits(return_X_y=True)
    clf = GaussianAugClassifier(sigma=0.5, max_epochs=1)
    with pytest.raises(ValueError, match=r"values in \[0, 16\].*X / 16.*input_range="):
        clf.fit(raw, y)
    X, y = digits
    clf.fit(X[:200], y[:200])
    pixels = np.round(X[:5] * 255)  # a 0…255 test set for a model trained on [0, 1]
    for call in (clf.predict, clf.certify, lambda Z: clf.certify_radius(Z, 0.25)):
        with pytest.raises(ValueError, match=r"X / 255 for 8-bit images"):
            call(pixels)
    with pytest.raises(ValueError, match="outside"):
        clf.predict(X[:5] - 0.5)
    # declared otherwise: the model's own range, or none
    GaussianAugClassifier(sigma=0.5, max_epochs=1, input_range=(0, 16)).fit(raw, y)
    GaussianAugClassifier(sigma=0.5, max_epochs=1, input_range=None).fit(raw - 8, y)
    for bad in [(1, 0), (0, float("inf")), (0,), "01"]:
        with pytest.raises(ValueError, match="input_range"):
            GaussianAugClassifier(sigma=0.5, max_epochs=1, input_range=bad).fit(X[:50], y[:50])


def test_properties_that_exist_before_fit_have_no_trailing_underscore():
    from smoothsk import CRTStudent, GaussianAugClassifier

    clf = GaussianAugClassifier(sigma=0.5)
    assert clf.noise_level == 0.5 and clf.epoch_index == 0
    # the former names still answer, for code written against 0.2
    assert clf.noise_level_ == 0.5 and clf.epoch_index_ == 0
    assert CRTStudent(sigma=0.25).noise_level_ == 0.25
