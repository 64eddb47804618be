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


@pytest.mark.parametrize("cls", [*METHODS.values(), PretrainedSmoothingClassifier,
                                 __import__("smoothsk").SmoothedEnsembleClassifier],
                         ids=lambda cls: cls.__name__)
def test_signature_lists_every_base_parameter_with_its_default(cls):
    """help(), IDEs and the API reference see σ, n, lr, ... instead of ``**kwargs``;
    the method's own parameters (and defaults) come first and win."""
    import inspect

    from smoothsk import SmoothedClassifier

    keyword_only = inspect.Parameter.KEYWORD_ONLY
    base = {name: p.default for name, p in
            inspect.signature(SmoothedClassifier.__init__).parameters.items()
            if p.kind is keyword_only}
    shown = inspect.signature(cls).parameters
    assert set(base) <= set(shown)
    assert list(shown)[-1] == "kwargs"  # skorch's module__*, optimizer__*, ... still pass
    code = cls.__init__.__code__  # the names this class's own __init__ declares
    declared = set(code.co_varnames[:code.co_argcount + code.co_kwonlyargcount])
    for name, default in base.items():
        if name not in declared:  # passed through **kwargs: the base's default applies
            assert shown[name].default == default, name
    assert "sigma" not in declared or shown["sigma"].default == \
        inspect.signature(cls.__init__).parameters["sigma"].default
