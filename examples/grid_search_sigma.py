"""
Select σ and η of SmoothMix by certified accuracy with scikit-learn's GridSearchCV
==================================================================================

Digits, 3-fold cross-validation over sigma ∈ {0.25, 0.5} × eta ∈ {1, 5}, two joblib
worker processes (each with its share of the CPU threads).  The refit metric is
certified accuracy at l2 radius 0.5, decided per input by the adaptive fixed-radius
test; ACR (from CERTIFY) is reported alongside.  A few minutes on 2 CPU cores.

    python examples/grid_search_sigma.py
"""

import time

import numpy as np
import torch
from sklearn.model_selection import GridSearchCV

from smoothsk import (
    SmoothMixClassifier,
    average_certified_radius_scorer,
    certified_accuracy_scorer,
)
from smoothsk.datasets import load_dataset

X_train, y_train = load_dataset("digits", split="train", flat=True)
X_test, y_test = load_dataset("digits", split="test", flat=True)

estimator = SmoothMixClassifier(
    num_noise=2, num_steps=2, step_size=0.5, warmup=5, max_epochs=20, lr=0.05,
    optimizer=torch.optim.SGD, optimizer__momentum=0.9, batch_size=64, n0=100, n=10_000,
    alpha=0.001, random_state=0,
)
scoring = {
    "ca_0.5": certified_accuracy_scorer(0.5),            # adaptive: stops early per input
    "acr": average_certified_radius_scorer(n=2_000),     # CERTIFY with fewer draws
}
search = GridSearchCV(estimator, {"sigma": [0.25, 0.5], "eta": [1.0, 5.0]}, scoring=scoring,
                      refit="ca_0.5", cv=3, n_jobs=2)
start = time.perf_counter()
search.fit(X_train, y_train)
print(f"grid search: {time.perf_counter() - start:.0f} s\n")

results = search.cv_results_
print(f"{'sigma':>6} {'eta':>5} {'CA@0.5':>14} {'ACR':>14} {'fit s':>6} {'rank':>5}")
for i, params in enumerate(results["params"]):
    print(f"{params['sigma']:>6} {params['eta']:>5} "
          f"{results['mean_test_ca_0.5'][i]:>7.3f} ± {results['std_test_ca_0.5'][i]:.3f} "
          f"{results['mean_test_acr'][i]:>7.3f} ± {results['std_test_acr'][i]:.3f} "
          f"{results['mean_fit_time'][i]:>6.1f} {results['rank_test_ca_0.5'][i]:>5}")

best = search.best_estimator_
print(f"\nbest: {search.best_params_}")
held_out = best.certify_radius(X_test, 0.5, y=y_test)
print(f"held-out certified accuracy at r=0.5: {held_out.is_correct(y_test).mean():.3f} "
      f"({held_out.samples.mean():,.0f} estimation draws per input on average, "
      f"{best.n / max(held_out.samples.mean(), 1):.0f}x fewer than CERTIFY's n={best.n:,})")
assert np.isfinite(results["mean_test_acr"]).all()
