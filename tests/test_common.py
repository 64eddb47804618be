"""scikit-learn's estimator checks, over every method of the registry (and the smoothed
classifier of a fitted classifier): one place, so that a new method cannot skip them."""

import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.utils.estimator_checks import parametrize_with_checks

from smoothsk import GaussianAugClassifier, PretrainedSmoothingClassifier
from smoothsk.methods.registry import METHODS
from smoothsk.testing import EXPECTED_FAILED_CHECKS, tiny_estimator_params

pytestmark = pytest.mark.slow

# The smallest settings at which each method runs its own loss (not a degenerate one).
TINY = {
    "gaussian": lambda: {},
    "smoothmix": lambda: dict(num_noise=2, num_steps=1),
    "crt": lambda: dict(teacher=GaussianAugClassifier(**tiny_estimator_params()),
                        **tiny_estimator_params(sigma=None)),
    "smoothadv": lambda: dict(num_noise=2, num_steps=2, epsilon=0.1, clip_range=None),
    "macer": lambda: dict(num_noise=2),
    "consistency": lambda: {},
    "stability": lambda: {},
    "catrs": lambda: dict(num_noise=1, num_steps=1, target_draws=8),
    # prefit=False: the checks fit on data of their own, which no fixed classifier knows
    "denoised": lambda: dict(classifier=LogisticRegression(max_iter=200), prefit=False,
                             **tiny_estimator_params(module__hidden_units=(16,))),
}


def _instance(name):
    params = TINY[name]()
    base = {} if "max_epochs" in params else tiny_estimator_params()
    return METHODS[name](**{**base, **params})


ESTIMATORS = [_instance(name) for name in METHODS] + [
    PretrainedSmoothingClassifier(LogisticRegression(max_iter=200), prefit=False,
                                  **tiny_estimator_params(module__hidden_units=None)),
]


def test_every_registered_method_is_checked():
    assert set(TINY) == set(METHODS)


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_sklearn_compatible(estimator, check):
    check(estimator)
