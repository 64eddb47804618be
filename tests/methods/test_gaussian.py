import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV

from smoothsk import GaussianAugClassifier, gaussian_augmentation_loss


def _fast(**kw):
    params = dict(sigma=0.25, max_epochs=15, lr=0.1,
                  optimizer=torch.optim.SGD, optimizer__momentum=0.9, batch_size=64,
                  n0=32, n=400, n_predict=200, random_state=0)
    params.update(kw)
    return GaussianAugClassifier(**params)


@pytest.fixture(scope="module")
def fitted(digits):
    X, y = digits
    return _fast().fit(X[:1200], y[:1200])


def test_loss_is_cross_entropy_on_noisy_inputs():
    net = torch.nn.Linear(3, 2)
    X, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    torch.manual_seed(5)
    loss = gaussian_augmentation_loss(net, X, y, 0.5)
    torch.manual_seed(5)
    expected = torch.nn.functional.cross_entropy(net(X + 0.5 * torch.randn_like(X)), y)
    assert torch.allclose(loss, expected)
    assert not torch.allclose(loss, torch.nn.functional.cross_entropy(net(X), y))


@pytest.mark.slow
def test_digits_end_to_end(fitted, digits):
    X, y = digits
    Xte, yte = X[1200:1400], y[1200:1400]
    assert fitted.score(Xte, yte) > 0.85  # chance is 0.1
    cert = fitted.certify(Xte)
    correct = cert.is_correct(yte)
    assert correct.mean() > 0.8
    assert np.all(cert.radius[cert.abstained] == 0)
    assert np.all(cert.radius[~cert.abstained] > 0)
    assert set(cert.labels()[~cert.abstained]) <= set(fitted.classes_)
    proba = fitted.predict_proba(Xte[:20])
    assert proba.shape == (20, 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(fitted.predict(Xte[:20]), fitted.classes_[proba.argmax(1)])


def test_predict_or_abstain_marks_abstentions(fitted, digits):
    X, _ = digits
    # halfway between two digits the smoothed vote is uncertain; with alpha close to 0
    # and few draws PREDICT must abstain on some of them
    mixed = 0.5 * X[1200:1300] + 0.5 * X[1300:1400]
    out = fitted.set_params(alpha=1e-6).predict_or_abstain(mixed)
    fitted.set_params(alpha=0.001)
    assert (out == -1).any() and (out != -1).any()
    votes = fitted.predict(mixed)
    assert np.all((out == -1) | (out == votes))  # same counts: answers agree with the vote
    with pytest.raises(ValueError, match="abstain_label"):
        fitted.predict_or_abstain(mixed[:2], abstain_label=3)


def test_string_labels(digits):
    X, y = digits
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                      "nine"])
    clf = _fast(max_epochs=5).fit(X[:600], names[y[:600]])
    assert list(clf.classes_) == sorted(names)
    pred = clf.predict(X[600:700])
    assert set(pred) <= set(names) and (pred == names[y[600:700]]).mean() > 0.7
    out = clf.predict_or_abstain(X[600:610], abstain_label="abstain")
    assert out.dtype.kind == "U"  # the labels' dtype, not object
    assert clf.certify(X[600:650]).is_correct(names[y[600:650]]).mean() > 0.6


@pytest.mark.parametrize("labels", ["int", "str"])
def test_abstentions_are_accepted_by_sklearn_metrics(digits, labels):
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix

    X, y = digits
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                      "nine"])
    target = names[y] if labels == "str" else y
    clf = _fast(max_epochs=5).fit(X[:600], target[:600])
    cert = clf.certify(X[600:700], n=200)  # few draws: some abstentions
    truth = target[600:700]
    for predicted in (cert.labels(), clf.set_params(alpha=1e-9).predict_or_abstain(X[600:700])):
        abstained = predicted == (-1 if labels == "int" else "abstain")
        assert abstained.any() and predicted.dtype.kind == np.asarray(truth).dtype.kind
        accuracy = accuracy_score(truth, predicted)  # abstentions count as wrong
        assert accuracy == pytest.approx(np.mean(predicted == truth))
        assert accuracy <= 1 - abstained.mean()
        classification_report(truth, predicted, zero_division=0)
        assert confusion_matrix(truth, predicted).sum() == len(truth)
    assert accuracy_score(truth, cert.labels()) == pytest.approx(cert.is_correct(truth).mean())


def test_clone_and_pickle_round_trip(fitted, digits):
    X, _ = digits
    cloned = clone(fitted)
    assert cloned.get_params()["sigma"] == 0.25 and not hasattr(cloned, "module_")
    restored = pickle.loads(pickle.dumps(fitted))
    a, b = fitted.certify(X[1400:1450]), restored.certify(X[1400:1450])
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(fitted.predict_proba(X[:30]), restored.predict_proba(X[:30]))


def test_same_random_state_same_model(digits):
    X, y = digits
    a = _fast(max_epochs=2).fit(X[:300], y[:300])
    b = _fast(max_epochs=2).fit(X[:300], y[:300])
    for p, q in zip(a.module_.parameters(), b.module_.parameters()):
        assert torch.equal(p, q)
    c = _fast(max_epochs=2, random_state=1).fit(X[:300], y[:300])
    assert not torch.equal(next(a.module_.parameters()), next(c.module_.parameters()))


def test_seeded_fit_leaves_global_torch_stream_alone(digits):
    X, y = digits
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _fast(max_epochs=1).fit(X[:100], y[:100])
    assert torch.equal(torch.rand(3), expected)


def test_image_inputs_with_the_default_network(digits):
    X, y = digits
    images = X.reshape(-1, 1, 8, 8)
    clf = _fast(max_epochs=3).fit(images[:300], y[:300])
    assert clf.input_shape_ == (1, 8, 8)
    assert clf.certify(images[300:310]).counts.shape == (10, 10)
    with pytest.raises(ValueError, match="shape"):
        clf.predict(X[:5].reshape(-1, 1, 4, 16))


def test_grid_search_over_sigma(digits):
    X, y = digits
    search = GridSearchCV(_fast(max_epochs=10, n_predict=50), {"sigma": [0.1, 0.5]}, cv=2)
    search.fit(X[:400], y[:400])
    assert search.best_params_["sigma"] in (0.1, 0.5)
    assert search.cv_results_["mean_test_score"].min() > 0.5


@pytest.mark.parametrize(
    "params,match",
    [
        (dict(sigma=0), "sigma"),
        (dict(alpha=1.0), "alpha"),
        (dict(n0=0), "n0"),
        (dict(n=-5), "n"),
        (dict(n_predict=0), "n_predict"),
    ],
)
def test_bad_parameters_are_reported_at_fit(digits, params, match):
    X, y = digits
    with pytest.raises(ValueError, match=match):
        _fast(**params).fit(X[:50], y[:50])


def test_errors_before_fit_and_on_bad_data(digits):
    X, y = digits
    with pytest.raises(NotFittedError):
        _fast().certify(X[:3])
    with pytest.raises(ValueError, match="one class"):
        _fast().fit(X[:10], np.zeros(10))
    with pytest.raises(ValueError, match="requires y"):
        _fast().fit(X[:10])
    with pytest.raises(TypeError, match="sample_weight"):
        _fast().fit(X[:10], y[:10], sample_weight=np.ones(10))
    bad = X[:20].copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="infinity|NaN"):
        _fast().fit(bad, y[:20])


def test_module_with_wrong_number_of_outputs_is_reported(digits):
    X, y = digits
    clf = _fast(module=torch.nn.Linear, module__in_features=64, module__out_features=4,
                max_epochs=1)
    with pytest.raises(ValueError, match="4 logits but fit saw 10 classes"):
        clf.fit(X[:100], y[:100])  # our error before training, not torch's
    clf = _fast(module=torch.nn.Linear, module__in_features=64, module__out_features=12,
                max_epochs=1)
    with pytest.raises(ValueError, match="12 logits"):
        clf.fit(X[:100], y[:100])


def test_base_class_needs_a_training_loss():
    from smoothsk import SmoothedClassifier

    with pytest.raises(TypeError, match="training_loss"):
        SmoothedClassifier()


def test_every_smoothsk_parameter_has_a_declared_constraint(digits):
    import inspect

    import smoothsk
    from smoothsk.validation import InvalidParameterError

    skorch_owned = {"self", "module", "kwargs", "criterion", "optimizer", "lr", "batch_size",
                    "train_split", "verbose"}
    classes = [getattr(smoothsk, name) for name in smoothsk.__all__
               if isinstance(getattr(smoothsk, name), type)
               and issubclass(getattr(smoothsk, name), smoothsk.SmoothedClassifier)]
    for cls in classes:
        own = {name for klass in cls.__mro__ if "__init__" in vars(klass)
               and klass.__module__.startswith("smoothsk")
               for name in inspect.signature(klass.__init__).parameters} - skorch_owned
        assert own <= set(cls._parameter_constraints), (cls.__name__, own
                                                         - set(cls._parameter_constraints))
    X, y = digits
    with pytest.raises(InvalidParameterError, match=r"The 'sigma' parameter of "
                       r"GaussianAugClassifier must be a finite float in the range "
                       r"\(0.0, 5\.3\d*e\+36\) \(above it float32 noise overflows.*\)\. "
                       r"Got -1 instead\."):
        _fast(sigma=-1).fit(X[:20], y[:20])
    # a bool is no count, though Python's True is an Integral
    with pytest.raises(InvalidParameterError, match=r"The 'n' parameter of "
                       r"GaussianAugClassifier must be an int in the range \[1, inf\)\. "
                       r"Got True instead\."):
        _fast(n=True).fit(X[:20], y[:20])
