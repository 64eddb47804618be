"""Exact binomial confidence bounds behind CERTIFY (Clopper & Pearson, 1934)."""

from __future__ import annotations

import numbers

import numpy as np
from scipy.stats import beta


# --------------------------------------------------------------------------- bounds
def check_alpha(alpha: float) -> float:
    if not isinstance(alpha, numbers.Real) or not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be a float in the open interval (0, 1); got {alpha!r}.")
    return float(alpha)


def _check_counts(successes, trials) -> tuple[np.ndarray, np.ndarray]:
    k, n = np.broadcast_arrays(np.asarray(successes), np.asarray(trials))
    if np.any(n < 1) or np.any(k < 0) or np.any(k > n):
        raise ValueError("successes must lie in [0, trials] and trials must be >= 1.")
    return k.astype(np.float64), n.astype(np.float64)


def lower_confidence_bound(successes, trials, alpha: float) -> np.ndarray:
    """One-sided (1 − α) Clopper–Pearson lower bound on a binomial proportion.

    ``p_lower`` is the α-quantile of ``Beta(k, n − k + 1)`` (Clopper & Pearson, 1934),
    equal to the lower end of the two-sided exact interval at level ``1 − 2α`` that
    Cohen et al. compute with statsmodels' ``proportion_confint(method="beta")``.
    ``P(p_lower > p) ≤ α`` for every true proportion ``p``.  ``k = 0`` gives 0.

    Parameters
    ----------
    successes, trials : array-like of int
        Broadcastable counts ``k`` and ``n`` with ``0 ≤ k ≤ n`` and ``n ≥ 1``.
    alpha : float in (0, 1)
        Probability that the bound exceeds the true proportion.
    """
    alpha = check_alpha(alpha)
    k, n = _check_counts(successes, trials)
    with np.errstate(invalid="ignore", divide="ignore"):
        bound = beta.ppf(alpha, k, n - k + 1)
    return np.where(k == 0, 0.0, bound)


def upper_confidence_bound(successes, trials, alpha: float) -> np.ndarray:
    """One-sided (1 − α) Clopper–Pearson upper bound: the (1 − α)-quantile of
    ``Beta(k + 1, n − k)``; ``k = n`` gives 1.  ``P(p_upper < p) ≤ α``."""
    alpha = check_alpha(alpha)
    k, n = _check_counts(successes, trials)
    with np.errstate(invalid="ignore", divide="ignore"):
        bound = beta.isf(alpha, k + 1, n - k)
    return np.where(k == n, 1.0, bound)


