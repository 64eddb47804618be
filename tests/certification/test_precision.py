"""Reduced precision: sound by construction, recorded with the model, refused on resume."""

import json

import numpy as np
import pytest
import torch

from smoothsk import GaussianAugClassifier, certify
from smoothsk.io.model_file import load_model, save_model
from smoothsk.io.runs import RunMismatchError, certify_to_tsv


def _sign_network(d: int) -> torch.nn.Module:
    """logits (x₀, −x₀): the vote is the sign of x₀, which bf16 rounding never changes."""
    net = torch.nn.Linear(d, 2, bias=False)
    with torch.no_grad():
        net.weight.zero_()
        net.weight[0, 0], net.weight[1, 0] = 1.0, -1.0
    return net


def test_bf16_certificate_equals_fp32_where_both_are_exact():
    X = np.random.default_rng(0).normal(scale=0.3, size=(12, 5)).astype(np.float32)
    net = _sign_network(5)
    kw = dict(n0=50, n=2000, alpha=0.001, random_state=1, batch_size=256)
    fp32, bf16 = certify(net, X, 0.5, **kw), certify(net, X, 0.5, precision="bf16", **kw)
    np.testing.assert_array_equal(bf16.counts, fp32.counts)
    np.testing.assert_array_equal(bf16.radius, fp32.radius)
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    # the analytic check still holds: p_A = Φ(|x₀| / σ) for the sign classifier
    assert (fp32.radius <= np.abs(X[:, 0]) + 1e-6).mean() >= 0.99


def test_precision_is_validated():
    X = np.zeros((2, 5), np.float32)
    with pytest.raises(ValueError, match="The .precision. parameter of certify must be a str"):
        certify(_sign_network(5), X, 0.5, n0=5, n=10, precision="int8")
    with pytest.raises(ValueError, match="fp16' needs a CUDA device"):
        certify(_sign_network(5), X, 0.5, n0=5, n=10, precision="fp16")


@pytest.fixture(scope="module")
def trained(digits):
    X, y = digits
    return GaussianAugClassifier(sigma=0.25, random_state=0).fit(X[:1000], y[:1000])


@pytest.mark.slow
def test_bf16_agrees_with_fp32_on_a_trained_model(trained, digits):
    X, _ = digits
    fp32 = trained.predict(X[1000:1300])
    bf16 = trained.set_params(precision="bf16").predict(X[1000:1300])
    trained.set_params(precision="fp32")
    # 1,000 draws per input: the vote changes only where two classes are within bf16's
    # rounding (≈ 0.4 % of a logit) on a large share of draws; ≥ 99 % must agree.
    assert (fp32 == bf16).mean() >= 0.99


def test_precision_round_trips_and_a_resumed_run_refuses_another(trained, digits, tmp_path):
    X, y = digits
    model = trained.set_params(precision="bf16")
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    trained.set_params(precision="fp32")
    assert loaded.precision == "bf16" and loaded.certify(X[:2], n=50).precision == "bf16"
    out = tmp_path / "r.tsv"
    kw = dict(run_info={}, n0=10, n=50, alpha=0.01, batch_size=50, random_state=0)
    certify_to_tsv(loaded, X[:2], y[:2], np.arange(2), out, **kw)
    assert json.loads((tmp_path / "r.tsv.run.json").read_text())["precision"] == "bf16"
    with pytest.raises(RunMismatchError, match="differs in: precision"):
        certify_to_tsv(loaded.set_params(precision="fp32"), X[:4], y[:4], np.arange(4), out,
                       **kw)


@pytest.mark.slow
def test_bf16_training_trains(digits):
    X, y = digits
    clf = GaussianAugClassifier(sigma=0.25, precision="bf16", random_state=0).fit(X[:1000],
                                                                                  y[:1000])
    assert np.isfinite(clf.history[:, "train_loss"]).all()
    assert clf.score(X[1000:1300], y[1000:1300]) >= 0.9


@pytest.mark.slow
def test_channels_last_is_saved_and_changes_only_the_layout(digits, tmp_path):
    from smoothsk.models import LeNet

    X, y = digits
    # LeNet's two 5×5 convolutions and pools need 28×28 inputs: pad the 8×8 digits
    images = np.pad(X.reshape(-1, 1, 8, 8), ((0, 0), (0, 0), (10, 10), (10, 10)))
    params = dict(module=LeNet, sigma=0.25, max_epochs=2, random_state=0)
    plain = GaussianAugClassifier(channels_last=False, **params).fit(images[:300], y[:300])
    last = GaussianAugClassifier(channels_last=True, **params).fit(images[:300], y[:300])
    conv = last.module_.features[3].weight  # 20 input channels: the layouts differ
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert plain.module_.features[3].weight.is_contiguous()
    # same seed, same data: the same training up to the order of sums in convolutions
    agree = (plain.predict(images[300:400]) == last.predict(images[300:400])).mean()
    assert agree >= 0.95
    save_model(last, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.channels_last and loaded.module_.features[3].weight.is_contiguous(
        memory_format=torch.channels_last)


def test_channels_last_auto_where_it_was_measured_faster():
    from smoothsk.models import MLP, LeNet, uses_channels_last

    lenet, mlp = LeNet(), MLP(64, 10)
    assert uses_channels_last(lenet, "auto", "cpu", "fp32")  # oneDNN: 1.4-2.1x at fp32
    assert uses_channels_last(lenet, "auto", "cuda", "bf16")  # tensor cores' layout
    assert not uses_channels_last(lenet, "auto", "cuda", "fp32")  # not measured faster
    assert not uses_channels_last(mlp, "auto", "cpu", "bf16")  # no 4-d weights
    assert uses_channels_last(mlp, True) and not uses_channels_last(lenet, False)
    assert uses_channels_last(lenet, "auto", None)  # device=None: where the network is


def test_default_channels_last_for_images_only_and_validated(digits):
    X, y = digits
    images = np.pad(X.reshape(-1, 1, 8, 8), ((0, 0), (0, 0), (10, 10), (10, 10)))
    clf = GaussianAugClassifier(sigma=0.25, max_epochs=1, random_state=0).fit(images[:200],
                                                                            y[:200])
    assert clf.channels_last == "auto" and clf.default_network_ == "LeNet"
    weight = clf.module_.features[3].weight  # 20 input channels: the layouts differ
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert not weight.is_contiguous()
    flat = GaussianAugClassifier(sigma=0.25, max_epochs=1, random_state=0).fit(X[:200],
                                                                             y[:200])
    assert all(p.is_contiguous() for p in flat.module_.parameters())
    with pytest.raises(ValueError, match="channels_last"):
        GaussianAugClassifier(sigma=0.25, channels_last="yes").fit(X[:50], y[:50])


@pytest.mark.slow
def test_set_params_sets_the_layout_of_a_fitted_network_again(digits):
    X, y = digits
    images = np.pad(X.reshape(-1, 1, 8, 8), ((0, 0), (0, 0), (10, 10), (10, 10)))
    clf = GaussianAugClassifier(sigma=0.25, max_epochs=1, random_state=0).fit(images[:200],
                                                                            y[:200])
    conv = clf.module_.features[3]  # 20 input channels: the two layouts differ
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    before = clf.predict_proba(images[200:230])
    clf.set_params(channels_last=False)
    assert conv.weight.is_contiguous() and not conv.weight.is_contiguous(
        memory_format=torch.channels_last)
    np.testing.assert_allclose(clf.predict_proba(images[200:230]), before)  # same weights
    clf.set_params(precision="bf16", channels_last="auto")  # auto: channels-last again
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_auto_picks_bf16_only_where_it_is_native_and_certificates_record_what_ran(
        monkeypatch):
    from smoothsk.certification import precision as precisions

    X = np.zeros((3, 5), np.float32)
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(precisions, "cpu_has_native_bf16", lambda native=native: native)
        assert precisions.resolve_precision("auto", "cpu") == expected
        cert = certify(_sign_network(5), X, 0.5, n0=5, n=10, precision="auto",
                       random_state=0)
        assert cert.precision == expected  # never "auto": a certificate says what ran
    assert precisions.resolve_precision("fp32", "cuda") == "fp32"  # only "auto" is resolved


def test_emulated_bf16_is_warned_about_with_what_to_use(monkeypatch):
    import warnings

    from smoothsk.certification import precision as precisions

    monkeypatch.setattr(precisions, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(precisions.EmulatedPrecisionWarning, match="precision='fp32', or 'auto'"):
        assert precisions.check_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(precisions, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precisions.check_precision("bf16", "cpu")  # native: nothing to say
        precisions.check_precision("fp32", "cpu")


def test_an_estimator_with_auto_precision_trains_and_certifies(digits, monkeypatch):
    from smoothsk import GaussianAugClassifier
    from smoothsk.certification import precision as precisions

    monkeypatch.setattr(precisions, "cpu_has_native_bf16", lambda: False)
    X, y = digits
    clf = GaussianAugClassifier(sigma=0.25, precision="auto", max_epochs=1,
                                module__hidden_units=(16,), n0=10, n=20, random_state=0)
    clf.fit(X[:100], y[:100])
    assert clf.certify(X[:3]).precision == "fp32"
