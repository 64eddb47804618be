"""Anytime-valid tests of ``p ≥ p*`` for a stream of Bernoulli votes (betting).

A base classifier's votes for the selected class on i.i.d. noisy copies are Bernoulli
with unknown ``p = P(f(x + δ) = c)``.  To certify radius ``r`` one must establish
``p ≥ p* = Φ(r/σ)``.  :class:`BettingTest` does so with a *confidence sequence*: a
bound valid at every number of draws at once, so the draws can stop the moment the
question is settled, however often one looks (Voráček, NeurIPS 2024, after
Waudby-Smith & Ramdas's betting confidence sequences).

Construction.  After ``t`` draws with ``k`` votes, the wealth of a gambler who bets on
``p > p*`` with a Krichevsky–Trofimov mixture of constant bets is the mixture
likelihood ratio

    M_t(k) = ∫_{p*}^1 (q/p*)^k ((1−q)/(1−p*))^{t−k} π(q) dq,

with ``π`` the Beta(1/2, 1/2) density restricted to ``[p*, 1]`` (in closed form through
the regularised incomplete beta function).  *Soundness*: for every ``q ≥ p*`` and every
``p ≤ p*`` one draw multiplies ``(q/p*)^X ((1−q)/(1−p*))^{1−X}`` by a factor of mean
``1 + (p − p*)(q − p*)/(p*(1 − p*)) ≤ 1``, so each constant-bet wealth, and their
mixture ``M_t``, is a non-negative supermartingale with ``M_0 = 1`` under any
``p ≤ p*``.  Ville's inequality gives ``P(∃ t: M_t ≥ 1/α) ≤ α``: declaring
"``p ≥ p*``" the first time ``M_t ≥ 1/α`` is wrong with probability at most ``α``,
whatever the stopping rule and however many times the wealth is inspected.
``M_t(k)`` depends on the draws only through ``(t, k)`` and grows with ``k``, so the
test is a table: certify at ``t`` draws when ``k ≥ k_cert(t)``.

Stopping for futility (``p < p*`` is clear) uses the mirror mixture on ``[0, p*]``;
it can only withhold a certificate, never issue a wrong one, so its level does not
enter the guarantee.
"""

from __future__ import annotations

import numpy as np
from scipy.special import betainc, betaincc, betaln

__all__ = ["BettingTest", "betting_bounds"]


class BettingTest:
    """The betting confidence-sequence test of ``p ≥ threshold`` at level ``alpha``.

    Parameters
    ----------
    threshold : float in (0, 1)
        ``p*``: the test establishes ``p ≥ p*`` (for a radius r, ``Φ(r/σ)``).
    alpha : float in (0, 1)
        Probability of a wrong "``p ≥ p*``" over the whole (unbounded) sequence.
    futility_alpha : float in (0, 1) or None, default=None
        Level of the mirror test that stops for futility; None means ``alpha``.

    Notes
    -----
    The soundness argument is in the module docstring; :meth:`certify_counts` and
    :meth:`futile_counts` are the two tables (smallest and largest vote counts) at
    the draw counts asked, computed once per draw count and cached.
    """

    def __init__(self, threshold: float, alpha: float, futility_alpha: float | None = None):
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must lie in (0, 1); got {threshold!r}.")
        self.threshold = float(threshold)
        self.alpha = float(alpha)
        self.futility_alpha = float(alpha if futility_alpha is None else futility_alpha)
        self._certify: dict[int, int] = {}
        self._futile: dict[int, int] = {}

    def log_wealth(self, k, t) -> np.ndarray:
        """``log M_t(k)``, the certifying gambler's log wealth after ``k`` votes in ``t``."""
        return _log_mixture(np.asarray(k, float), np.asarray(t, float), self.threshold,
                            upper=True)

    def log_futility_wealth(self, k, t) -> np.ndarray:
        """Log wealth of the mirror gambler, who bets on ``p < p*``."""
        return _log_mixture(np.asarray(k, float), np.asarray(t, float), self.threshold,
                            upper=False)

    def certify_counts(self, draws) -> np.ndarray:
        """Smallest vote count that certifies at each of ``draws`` (``t + 1``: none does)."""
        return self._table(draws, self._certify, certify=True)

    def futile_counts(self, draws) -> np.ndarray:
        """Largest vote count at which futility is established (−1: none)."""
        return self._table(draws, self._futile, certify=False)

    def certified(self, votes, draws) -> np.ndarray:
        """Whether ``votes`` out of ``draws`` (arrays) establish ``p ≥ p*``."""
        return np.asarray(votes) >= self.certify_counts(draws)

    def futile(self, votes, draws) -> np.ndarray:
        """Whether ``votes`` out of ``draws`` establish ``p < p*`` (stop drawing)."""
        return np.asarray(votes) <= self.futile_counts(draws)

    def _table(self, draws, cache: dict, certify: bool) -> np.ndarray:
        draws = np.asarray(draws, dtype=np.int64)
        missing = np.array(sorted(set(np.unique(draws).tolist()) - set(cache)), np.int64)
        if len(missing):
            found = _search(missing, self, certify)
            cache.update(zip(missing.tolist(), found.tolist()))
        return np.vectorize(cache.__getitem__, otypes=[np.int64])(draws) if draws.ndim \
            else np.int64(cache[int(draws)])


def _log_mixture(k, t, p, upper: bool) -> np.ndarray:
    """``log ∫ (q/p)^k ((1−q)/(1−p))^{t−k} π(q) dq`` over ``q ∈ [p, 1]`` (``upper``) or
    ``[0, p]``, with π the Beta(1/2, 1/2) density restricted there."""
    a, b = k + 0.5, t - k + 0.5
    tail = betaincc if upper else betainc
    with np.errstate(divide="ignore"):  # an underflowing tail is zero wealth: no decision
        log_mass = betaln(a, b) + np.log(tail(a, b, p))
    log_prior = betaln(0.5, 0.5) + np.log(tail(0.5, 0.5, p))
    return log_mass - log_prior - k * np.log(p) - (t - k) * np.log1p(-p)


def _search(draws: np.ndarray, test: BettingTest, certify: bool) -> np.ndarray:
    """Binary search over vote counts, for every draw count at once.

    Certifying wealth grows with ``k``: find the smallest ``k`` with
    ``log M ≥ log(1/α)`` (``t + 1`` if none).  Futility wealth falls with ``k``: find
    the largest ``k`` with the mirror wealth ``≥ log(1/α_f)`` (−1 if none).
    """
    t = draws.astype(float)
    if certify:
        target, wealth = -np.log(test.alpha), test.log_wealth
        low, high = np.zeros_like(draws), draws + 1  # answer in [low, high]
        while np.any(low < high):
            open_ = low < high  # entries already found keep their answer
            mid = (low + high) // 2
            ok = (wealth(np.minimum(mid, draws), t) >= target) & (mid <= draws)
            high = np.where(open_ & ok, mid, high)
            low = np.where(open_ & ~ok, mid + 1, low)
        return low
    target, wealth = -np.log(test.futility_alpha), test.log_futility_wealth
    low, high = np.full_like(draws, -1), draws.copy()  # answer in [low, high]
    while np.any(low < high):
        open_ = low < high
        mid = (low + high + 1) // 2
        ok = wealth(np.maximum(mid, 0), t) >= target
        low = np.where(open_ & ok, mid, low)
        high = np.where(open_ & ~ok, mid - 1, high)
    return low


def betting_bounds(votes, draws, alpha: float, steps: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """The betting confidence sequence for ``p`` after ``votes`` of ``draws``, at ``alpha``.

    ``lower`` is the largest threshold ``p*`` that :class:`BettingTest` at ``alpha``
    certifies with these counts (its wealth ``M_t ≥ 1/α``), ``upper`` the smallest its
    mirror test refutes; found by bisection on ``p*`` (``steps`` halvings, so to about
    ``2^-steps``).  Both are valid simultaneously at every number of draws.

    Parameters
    ----------
    votes, draws : array-like of int
        Votes for the class and draws made, per input.
    alpha : float in (0, 1)
        Level of each side.
    steps : int, default=40
        Bisection steps.

    Returns
    -------
    lower, upper : ndarray of float
    """
    k, t = np.asarray(votes, float), np.asarray(draws, float)
    target = -np.log(alpha)
    bounds = []
    for upper in (False, True):
        low, high = np.full(k.shape, 1e-12), np.full(k.shape, 1 - 1e-12)
        for _ in range(steps):
            mid = (low + high) / 2
            # certifying wealth for the lower bound, the mirror wealth for the upper
            settled = _log_mixture(k, t, mid, upper=not upper) >= target
            if upper:  # p < mid is established: the bound is at most mid
                high = np.where(settled, mid, high)
                low = np.where(settled, low, mid)
            else:  # p ≥ mid is established: the bound is at least mid
                low = np.where(settled, mid, low)
                high = np.where(settled, high, mid)
        bounds.append(high if upper else low)
    return bounds[0], bounds[1]
