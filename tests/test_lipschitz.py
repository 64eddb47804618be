"""Radii in a Pipeline's input space: exact Lipschitz constants, scorers, grid search."""

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, Normalizer, StandardScaler

from smoothsk import GaussianAugClassifier, certified_accuracy_scorer
from smoothsk.lipschitz import UnknownLipschitzError, lipschitz_constant
from smoothsk.metrics import certify_pipeline

TRANSFORMERS = {
    "standard": [StandardScaler()],
    "minmax": [MinMaxScaler(feature_range=(-3, 5))],
    "maxabs": [MaxAbsScaler()],
    "pca": [PCA(n_components=6)],
    "pca-whiten": [PCA(n_components=6, whiten=True)],
    "chain": [StandardScaler(), PCA(n_components=8, whiten=True), MinMaxScaler()],
    "passthrough": ["passthrough"],
}


def _transform(steps, X):
    for step in steps:
        X = X if step == "passthrough" else step.transform(X)
    return X


@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
def test_constant_is_exact_against_brute_force(name):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 10)) * rng.uniform(0.1, 5.0, size=10)
    steps = TRANSFORMERS[name]
    fitted = []
    Z = X
    for step in steps:
        if step != "passthrough":
            step.fit(Z)
            Z = step.transform(Z)
        fitted.append(step)
    constant = lipschitz_constant(fitted, 10)
    # Upper bound: no random direction stretches more than L (affine: ratio is exact
    # ‖A d‖ / ‖d‖ for every base point), up to float rounding.
    x = X[:1]
    ratios = []
    for _ in range(2000):
        d = rng.normal(size=(1, 10))
        d *= 10.0 ** rng.uniform(-3, 1) / np.linalg.norm(d)
        ratios.append(np.linalg.norm(_transform(fitted, x + d) - _transform(fitted, x))
                      / np.linalg.norm(d))
    assert max(ratios) <= constant * (1 + 1e-9)
    # Attained: the direction of the largest singular value reaches L.
    A = np.stack([_transform(fitted, x + e[None]) - _transform(fitted, x)
                  for e in np.eye(10)], axis=-1)[0]
    top = np.linalg.svd(A)[2][0]
    reached = np.linalg.norm(_transform(fitted, x + top[None]) - _transform(fitted, x))
    assert reached == pytest.approx(constant, rel=1e-9)


def test_unknown_transformer_is_refused():
    with pytest.raises(UnknownLipschitzError, match="Normalizer is unknown.*last_step"):
        lipschitz_constant([Normalizer().fit(np.ones((2, 3)))], 3)


@pytest.fixture(scope="module")
def pipes(digits):
    X, y = digits
    fast = dict(sigma=0.5, max_epochs=10, batch_size=64, n0=32, n=400, random_state=0)
    plain = make_pipeline("passthrough", GaussianAugClassifier(**fast)).fit(X[:800], y[:800])
    # standardized features take any values: the range is declared open
    scaled = make_pipeline(StandardScaler(), GaussianAugClassifier(**fast, input_range=None)
                           ).fit(X[:800], y[:800])
    return plain, scaled


def test_certify_pipeline_divides_radii_by_the_constant(pipes, digits):
    X, _ = digits
    _, scaled = pipes
    constant = lipschitz_constant(scaled, X.shape[1])
    assert constant > 1  # digits pixels have small standard deviations
    direct = scaled[-1].certify(scaled[0].transform(X[800:830]))
    inputs = certify_pipeline(scaled, X[800:830])
    np.testing.assert_allclose(inputs.radius, direct.radius / constant)
    same = certify_pipeline(scaled, X[800:830], radius_space="last_step")
    np.testing.assert_allclose(same.radius, direct.radius)


@pytest.mark.slow
def test_grid_search_ranks_by_input_space_radius(digits):
    X, y = digits
    pipe = Pipeline([("scale", "passthrough"),
                     ("clf", GaussianAugClassifier(sigma=0.5, n0=32, n=1000,
                                                   random_state=0, input_range=None))])
    grid = {"scale": ["passthrough", StandardScaler()]}
    search = GridSearchCV(pipe, grid, scoring=certified_accuracy_scorer(0.25), cv=2)
    search.fit(X[:800], y[:800])
    scores = search.cv_results_["mean_test_score"]
    assert search.best_params_["scale"] == "passthrough"
    # the scaler's radius in raw pixels is the scaled radius divided by L ≫ 1
    assert scores[0] > 0.4 and scores[1] < 0.1
