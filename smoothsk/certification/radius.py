"""From vote counts to a certified radius: the binary and the two-class bound, with exact
or randomized Clopper–Pearson bounds (the soundness arguments are in
:func:`certified_radius` and docs/certification.md)."""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from smoothsk.certification.bounds import (
    lower_confidence_bound,
    randomized_lower_bound,
    randomized_upper_bound,
    upper_confidence_bound,
)

__all__ = ["BOUNDS", "INTERVALS", "certified_radius", "uniform_variates"]

BOUNDS = ("binary", "two-class")
INTERVALS = ("clopper-pearson", "randomized")
STREAM_UNIFORM = 5  # the randomized interval's variates, keyed like the noise


def uniform_variates(random_state, indices) -> np.ndarray:
    """Two Uniform(0, 1) variates per input, seeded by ``(random_state, index)`` alone.

    They are drawn before, and independently of, the votes: what the randomized bounds
    need.  The same seed and index give the same variates in any call or worker.

    Parameters
    ----------
    random_state : int
        The run's base seed (as :func:`smoothsk.certification.inputs.base_seed` gives).
    indices : array of int
        Global indices of the inputs.
    """
    return np.array([np.random.default_rng([int(random_state), int(i), STREAM_UNIFORM])
                     .random(2) for i in np.asarray(indices)]).reshape(-1, 2)


def certified_radius(top, counts, sigma: float, alpha: float, *, bound: str = "binary",
                     interval: str = "clopper-pearson", uniforms=None):
    """The certified radius of each input from its estimation counts.

    ``bound="binary"`` (Cohen et al.): ``p̲_A`` at level α, certified when
    ``p̲_A ≥ 1/2``, radius ``σ Φ⁻¹(p̲_A)``.

    ``bound="two-class"`` (Cohen et al.'s Theorem 1 before its simplification): ``p̲_A``
    at level α/2 and ``p̄_B = min(max_{c≠A} p̄_c, 1 − p̲_A)``, with ``p̄_c`` the upper
    bound of class ``c`` at level α/2; certified when ``p̲_A > p̄_B``, radius
    ``σ/2 (Φ⁻¹(p̲_A) − Φ⁻¹(p̄_B))``.  *Soundness*: let ``B*`` be the class that truly
    comes second (fixed once the selection has fixed ``A``; the estimation draws are
    independent of the selection).  With probability ≥ 1 − α/2 − α/2 both
    ``p̲_A ≤ p_A`` and ``p̄_{B*} ≥ p_{B*}`` hold, and then
    ``p_A ≥ p̲_A > p̄_B ≥ p̄_{B*} ≥ p_{B*} = max_{c≠A} p_c`` (``1 − p̲_A ≥ 1 − p_A ≥ p_{B*}``
    too), which is what the theorem needs.  The maximum over every other class is what
    makes this hold; as the upper bound grows with the count, it is the bound of the
    class observed second.  Bounding a class fixed in advance, or picked from other
    draws, is not sound: the class truly second may be another (Delattre et al.'s
    counterexample, tests/certification/test_two_class_bound.py).  Since
    ``p̄_B ≤ 1 − p̲_A``, the radius is never below the binary radius at level α/2: the split
    costs at most ``σ (Φ⁻¹(p̲_A(α)) − Φ⁻¹(p̲_A(α/2)))``.

    Parameters
    ----------
    top : array of int, shape (N,)
        The selected class of each input.
    counts : array of int, shape (N, C)
        Estimation votes (independent of the selection).
    sigma, alpha : float
        Noise level and failure probability per input.
    bound : {"binary", "two-class"}
    interval : {"clopper-pearson", "randomized"}
        Exact Clopper–Pearson bounds, or their randomized versions
        (:func:`~smoothsk.certification.bounds.randomized_lower_bound`).
    uniforms : array of float, shape (N, 2), or None
        The randomized bounds' variates (:func:`uniform_variates`).

    Returns
    -------
    certified : array of bool
    radius : array of float (0 where not certified)
    pa_lower : array of float
    pb_upper : array of float or None (``bound="two-class"`` only)
    """
    counts = np.asarray(counts)
    rows = np.arange(len(top))
    n_top = counts[rows, top]
    n = counts.sum(axis=1)  # every draw votes once: the estimation draws
    two_class = bound == "two-class"
    n_classes = counts.shape[1]
    level_a = alpha / 2 if two_class and n_classes > 1 else alpha
    if interval == "randomized":
        if uniforms is None:
            raise ValueError("interval='randomized' needs uniforms (uniform_variates).")
        pa_lower = randomized_lower_bound(n_top, n, level_a, uniforms[:, 0])
    else:
        pa_lower = lower_confidence_bound(n_top, n, level_a)
    if not two_class:
        certified = pa_lower >= 0.5
        radius = np.where(certified, float(sigma) * norm.ppf(np.clip(pa_lower, 0.5, 1.0)), 0.0)
        return certified, radius, pa_lower, None
    pb_upper = 1.0 - pa_lower
    if n_classes > 1:
        level_b = alpha - level_a  # one class's bound matters: see the docstring
        others = np.ones(counts.shape, dtype=bool)
        others[rows, top] = False
        votes = counts[others].reshape(len(top), n_classes - 1)
        trials = np.repeat(n[:, None], n_classes - 1, axis=1)
        if interval == "randomized":
            upper = randomized_upper_bound(votes, trials, level_b, uniforms[:, 1:2])
        else:
            upper = upper_confidence_bound(votes, trials, level_b)
        pb_upper = np.minimum(upper.max(axis=1), pb_upper)
    certified = pa_lower > pb_upper
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = norm.ppf(pa_lower) - norm.ppf(pb_upper)
    radius = np.where(certified, 0.5 * float(sigma) * gap, 0.0)
    return certified, radius, pa_lower, pb_upper
