import numpy as np
import pytest
import torch
from conftest import SGD_FIT
from sklearn.model_selection import GridSearchCV, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from skorch.callbacks import EpochScoring
from skorch.dataset import ValidSplit

from smoothsk import (
    ABSTAIN,
    Certificate,
    GaussianAugClassifier,
    average_certified_radius,
    average_certified_radius_scorer,
    certified_accuracy,
    certified_accuracy_scorer,
)
from smoothsk.lipschitz import UnknownLipschitzError

FAST = SGD_FIT


def _certificate(prediction, radius, classes=None):
    prediction = np.asarray(prediction)
    counts = np.zeros((len(prediction), 3), dtype=int)
    return Certificate(prediction, np.asarray(radius, dtype=float), np.zeros(len(prediction)),
                       counts, counts, 0.5, 10, 10, 0.01, classes)


def test_metrics_on_a_hand_made_certificate():
    cert = _certificate([0, 1, ABSTAIN, 2], [0.3, 1.0, 0.0, 0.6])
    y = np.array([0, 1, 1, 0])  # the last one is certified but wrong
    assert certified_accuracy(y, cert, 0.0) == 0.5
    np.testing.assert_allclose(certified_accuracy(y, cert, [0.0, 0.3, 0.5, 1.0, 1.5]),
                               [0.5, 0.5, 0.25, 0.25, 0.0])
    assert average_certified_radius(y, cert) == pytest.approx((0.3 + 1.0) / 4)
    labelled = _certificate([0, 1, ABSTAIN], [0.3, 1.0, 0.0], classes=np.array(["a", "b", "c"]))
    assert certified_accuracy(np.array(["a", "a", "c"]), labelled) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="radius"):
        certified_accuracy(y, cert, -1.0)
    with pytest.raises(ValueError, match="y_true"):
        certified_accuracy(y[:2], cert)


@pytest.fixture(scope="module")
def fitted(digits):
    X, y = digits
    return GaussianAugClassifier(sigma=0.25, **FAST).fit(X[:600], y[:600])


def test_scorers_equal_metrics_from_certify(fitted, digits):
    X, y = digits
    Xs, ys = X[600:700], y[600:700]
    cert = fitted.certify(Xs, n=500)
    fixed = certified_accuracy_scorer(0.25, adaptive=False, n=500)
    assert fixed(fitted, Xs, ys) == certified_accuracy(ys, cert, 0.25)
    adaptive = fitted.certify_radius(Xs, 0.25, y=ys, n=500)
    assert certified_accuracy_scorer(0.25, n=500)(fitted, Xs, ys) == adaptive.is_correct(ys).mean()
    with pytest.raises(ValueError, match="allowed"):
        certified_accuracy_scorer(0.5, adaptive=False, growth=3.0)
    assert average_certified_radius_scorer(n=500)(fitted, Xs, ys) == average_certified_radius(
        ys, cert)
    with pytest.raises(ValueError, match="allowed"):
        certified_accuracy_scorer(0.5, sigma=1.0)


@pytest.mark.slow
def test_multi_metric_grid_search_refits_on_certified_accuracy(digits):
    X, y = digits
    scoring = {"ca_0.5": certified_accuracy_scorer(0.5), "acr": average_certified_radius_scorer()}
    search = GridSearchCV(GaussianAugClassifier(**dict(FAST, max_epochs=6)),
                          {"sigma": [0.05, 0.5]}, scoring=scoring, refit="ca_0.5", cv=2)
    search.fit(X[:400], y[:400])
    scores = search.cv_results_["mean_test_ca_0.5"]
    assert search.best_params_ == search.cv_results_["params"][int(np.argmax(scores))]
    # sigma = 0.05 cannot certify r = 0.5 (max radius about 3.1 sigma at n = 300)
    assert search.best_params_["sigma"] == 0.5 and scores[0] == 0.0
    result = cross_validate(GaussianAugClassifier(**dict(FAST, max_epochs=3)), X[:200],
                            y[:200], cv=2, scoring=average_certified_radius_scorer(),
                            return_estimator=True, return_indices=True)
    # each fold's score is the ACR of that fold's model certified on that fold's test part
    for fitted, test, score in zip(result["estimator"], result["indices"]["test"],
                                   result["test_score"]):
        direct = average_certified_radius(y[test], fitted.certify(X[test]))
        assert score == pytest.approx(direct) and score > 0


def test_pipeline_is_certified_in_the_smoothed_steps_input_space(digits):
    X, y = digits
    double = FunctionTransformer(lambda Z: 2.0 * Z)
    pipe = make_pipeline(double, GaussianAugClassifier(sigma=0.5, input_range=(0, 2), **FAST)
                         ).fit(X[:600], y[:600])
    with pytest.raises(UnknownLipschitzError, match="FunctionTransformer is unknown"):
        certified_accuracy_scorer(0.25)(pipe, X[600:700], y[600:700])
    score = certified_accuracy_scorer(0.25, radius_space="last_step")(pipe, X[600:700],
                                                                      y[600:700])
    direct = pipe[-1].certify_radius(2.0 * X[600:700], 0.25, y=y[600:700])
    assert score == direct.is_correct(y[600:700]).mean() > 0.5
    fixed = certified_accuracy_scorer(0.25, adaptive=False, radius_space="last_step")(
        pipe, X[600:700], y[600:700])
    assert fixed == certified_accuracy(y[600:700], pipe[-1].certify(2.0 * X[600:700]), 0.25)


def test_epoch_scoring_with_string_labels(digits):
    X, y = digits
    names = np.array(list("abcdefghij"))[y]  # labels that are not class indices
    scoring = EpochScoring(certified_accuracy_scorer(0.25, n=200), use_caching=False,
                           lower_is_better=False, name="valid_ca")
    # four epochs of SGD at a constant rate: enough to be far above chance
    clf = GaussianAugClassifier(sigma=0.25, train_split=ValidSplit(5, stratified=True),
                                callbacks=[scoring],
                                **dict(FAST, max_epochs=4, lr_schedule="constant"))
    clf.fit(X[:500], names[:500])
    scores = clf.history[:, "valid_ca"]
    assert len(scores) == 4 and scores[-1] > 0.5  # labels decoded: chance would be 0.1
    # the last epoch's score is the scorer on the same validation fold after fit
    split = clf.get_split_datasets(X[:500].astype(np.float32),
                                   np.searchsorted(clf.classes_, names[:500]))[1]
    Xv, yv = X[:500][split.indices], names[:500][split.indices]
    assert scores[-1] == certified_accuracy_scorer(0.25, n=200)(clf, Xv, yv)


def _torch_threads(estimator, X, y):

    return float(torch.get_num_threads())


@pytest.mark.slow
def test_grid_search_in_two_worker_processes_does_not_oversubscribe(digits):
    import os

    X, y = digits
    scoring = {"ca": certified_accuracy_scorer(0.25, n=200), "threads": _torch_threads}
    search = GridSearchCV(GaussianAugClassifier(**dict(FAST, max_epochs=2)),
                          {"sigma": [0.25, 0.5]}, scoring=scoring, refit="ca", cv=2, n_jobs=2)
    search.fit(X[:300], y[:300])
    # joblib's process workers get cpu_count // n_jobs OpenMP threads, which torch follows
    expected = max(1, (os.cpu_count() or 1) // 2)
    assert set(search.cv_results_["mean_test_threads"]) == {expected}
    # the same scores as a serial search: results do not depend on the worker
    serial = GridSearchCV(GaussianAugClassifier(**dict(FAST, max_epochs=2)),
                          {"sigma": [0.25, 0.5]}, scoring=scoring, refit="ca", cv=2)
    serial.fit(X[:300], y[:300])
    np.testing.assert_array_equal(search.cv_results_["split0_test_ca"],
                                  serial.cv_results_["split0_test_ca"])


def test_the_curve_helpers_are_the_published_definitions():
    from smoothsk.metrics import accuracy_curve, mean_certified_radius

    correct = np.array([True, True, False, True])
    radius = np.array([0.3, 0.0, 0.9, 0.6])
    # CA(r) = mean(correct & R >= r); ACR = mean(R · correct)
    np.testing.assert_allclose(accuracy_curve(correct, radius, [0, 0.3, 0.5, 1.0]),
                               [0.75, 0.5, 0.25, 0.0])
    assert mean_certified_radius(correct, radius) == pytest.approx(0.9 / 4)
