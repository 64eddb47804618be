"""Exact binomial confidence bounds behind CERTIFY (Clopper & Pearson, 1934), and their
randomized versions (exact coverage; Stevens, 1950)."""

from __future__ import annotations

import numbers

import numpy as np
from scipy.stats import beta, binom


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
    ``Beta(k + 1, n − k)``; ``k = n`` gives 1.  ``P(p_upper < p) ≤ α``.

    Parameters
    ----------
    successes, trials : int or array of int
        ``k`` votes out of ``n`` draws (broadcast together; ``0 <= k <= n``, ``n >= 1``).
    alpha : float in (0, 1)
        The bound's failure probability.

    Returns
    -------
    ndarray of float
        The upper bounds, elementwise.
    """
    alpha = check_alpha(alpha)
    k, n = _check_counts(successes, trials)
    with np.errstate(invalid="ignore", divide="ignore"):
        bound = beta.isf(alpha, k + 1, n - k)
    return np.where(k == n, 1.0, bound)


def _check_uniform(uniform, shape) -> np.ndarray:
    u = np.broadcast_to(np.asarray(uniform, dtype=np.float64), shape)
    if np.any(~(u >= 0) | ~(u <= 1)):
        raise ValueError("uniform must hold numbers in [0, 1] (one Uniform(0, 1) variate "
                         "per bound).")
    return u


def _bisect(decreasing_in_p, shape, steps: int = 60) -> np.ndarray:
    """The ``p`` in [0, 1] where the monotone ``decreasing_in_p(p) - 0`` changes sign,
    per entry (60 halvings: to about 1e-18)."""
    low, high = np.zeros(shape), np.ones(shape)
    for _ in range(steps):
        mid = (low + high) / 2
        above = decreasing_in_p(mid)  # True where the root lies above mid
        low, high = np.where(above, mid, low), np.where(above, high, mid)
    return low


def randomized_lower_bound(successes, trials, alpha: float, uniform) -> np.ndarray:
    """One-sided randomized Clopper–Pearson lower bound: exact ``1 − α`` coverage.

    ``p_lower`` solves ``P_p(X > k) + U · P_p(X = k) = α`` for ``X ~ Bin(n, p)`` and a
    ``U ~ Uniform(0, 1)`` drawn independently of ``k``.  At the true ``p`` the randomized
    p-value ``P_p(X > k) + U P_p(X = k)`` is exactly Uniform(0, 1), and it grows with
    ``p``, so ``P(p_lower > p) = α`` exactly; with ``U = 1`` it is the plain bound
    :func:`lower_confidence_bound`, so it is never below it.

    Parameters
    ----------
    successes, trials : array-like of int
        Counts ``k`` and ``n``, as in :func:`lower_confidence_bound`.
    alpha : float in (0, 1)
        Probability that the bound exceeds the true proportion.
    uniform : array-like of float in [0, 1]
        The variates ``U``, broadcastable to the counts; they must not depend on the
        counts (draw them from a seed fixed beforehand).
    """
    alpha = check_alpha(alpha)
    k, n = _check_counts(successes, trials)
    u = _check_uniform(uniform, k.shape)

    def root_above(p):  # the p-value at p is still below α: the bound lies above p
        return binom.sf(k, n, p) + u * binom.pmf(k, n, p) < alpha

    return _bisect(root_above, k.shape)


def randomized_upper_bound(successes, trials, alpha: float, uniform) -> np.ndarray:
    """One-sided randomized Clopper–Pearson upper bound, ``P(p_upper < p) = α`` exactly:
    ``P_p(X < k) + U · P_p(X = k) = α`` (see :func:`randomized_lower_bound`); never above
    :func:`upper_confidence_bound`.

    Parameters
    ----------
    successes, trials : array-like of int
        Counts ``k`` and ``n``.
    alpha : float in (0, 1)
        Probability that the bound falls below the true proportion.
    uniform : array-like of float in [0, 1]
        Variates independent of the counts.
    """
    alpha = check_alpha(alpha)
    k, n = _check_counts(successes, trials)
    u = _check_uniform(uniform, k.shape)

    def root_above(p):  # the p-value at p is still at least α: the bound lies above p
        return binom.cdf(k - 1, n, p) + u * binom.pmf(k, n, p) >= alpha

    return _bisect(root_above, k.shape)
