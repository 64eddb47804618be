"""Adaptive fixed-radius certification: is ``g`` certified at radius ``r``?

Two sequential tests share the selection draw and the sampling loop:
``test="rounds"`` (the default), Clopper–Pearson bounds over K fixed rounds with a union
bound, described and proved below, and ``test="betting"``, a confidence sequence valid
at every number of draws (:class:`~smoothsk.certification.sequential.BettingTest`,
whose docstring has its proof).  docs/benchmarks.md compares their draws.

CERTIFY spends ``n`` draws on every input even where a few hundred settle the
question.  When only "radius ≥ r" matters (certified accuracy at one radius, the
quantity model selection optimises) a sequential test can stop early with the same
guarantee.  After CERTIFY's selection draw, estimation draws come in rounds of
growing size ``n_1 < n_2 < ... < n_K = n`` (cumulative); after round ``j`` the
one-sided Clopper–Pearson bounds at level ``α/K`` are compared with ``Φ(r/σ)``:

- lower bound ``≥ Φ(r/σ)``: certified (CERTIFY's radius would be ``≥ r``), stop;
- upper bound ``< Φ(r/σ)``, or even all remaining draws could not lift the lower
  bound at ``n`` to it: not certifiable within the budget, stop;
- otherwise draw the next round.  After round ``K`` the lower bound decides.

Soundness (union bound).  Fix the selected class ``c`` (its noise is independent of
the estimation noise) and ``p = P(f(x + δ) = c)``.  Think of the estimation draws as
one i.i.d. sequence of which round ``j`` sees the first ``n_j``; the ``n_j`` are fixed
in advance.  Let ``L_j`` be the lower bound after round ``j``; Clopper–Pearson gives
``P(L_j > p) ≤ α/K`` for each ``j``.  A false claim "radius ≥ r" means
``p < Φ(r/σ) ≤ L_J`` at the stopping round ``J``, hence the event ``∪_j {L_j > p}``,
whose probability is at most ``Σ_j α/K = α``, exactly CERTIFY's guarantee.  Early
stops for futility can only withhold a certificate, never issue a wrong one.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import norm

from smoothsk.certification import bounds, inputs, sampling
from smoothsk.certification.adapters import as_base_network
from smoothsk.certification.bounds import lower_confidence_bound, upper_confidence_bound
from smoothsk.certification.noise import noise_test_alpha, recorded_step
from smoothsk.certification.precision import check_precision
from smoothsk.certification.sampling import SAMPLING_CONSTRAINTS, STREAM_SELECTION, sample_counts
from smoothsk.certification.sequential import BettingTest, betting_bounds
from smoothsk.validation import (
    NON_NEGATIVE,
    POSITIVE_INT,
    PROBABILITY,
    Float,
    StrOptions,
    validate_params,
)

__all__ = ["RadiusCertificate", "certify_radius", "decision_rule", "round_sizes"]

STREAM_ADAPTIVE = 3
STREAM_BETTING = 4
TESTS = ("rounds", "betting")
# Cumulative round sizes grow by this factor unless ``growth`` is given: the rounds test
# pays α/K for every look, the betting test nothing, so it looks more often.
DEFAULT_GROWTH = {"rounds": 2.0, "betting": 1.25}


def round_sizes(first_round: int, growth: float, n: int) -> np.ndarray:
    """Cumulative sample sizes ``n_j = min(n, ⌈first_round · growth^(j−1)⌉)``, ending at ``n``.

    Parameters
    ----------
    first_round : int
        Draws of the first round.
    growth : float
        Factor between consecutive round sizes (> 1).
    n : int
        The budget: the last cumulative size.
    """
    first_round = inputs.check_positive_int(first_round, "first_round")
    n = inputs.check_positive_int(n, "n")
    if isinstance(growth, bool) or not isinstance(growth, numbers.Real) or not growth > 1:
        raise ValueError(f"growth must be a float > 1; got {growth!r}.")
    sizes, size = [], float(first_round)
    while size < n:
        sizes.append(int(np.ceil(size)))
        size *= growth
    sizes.append(n)
    return np.unique(np.asarray(sizes, dtype=np.int64))


@dataclass
class RadiusCertificate:
    """Result of :func:`certify_radius` for ``N`` inputs at one radius.

    Attributes
    ----------
    prediction : ndarray of int, shape (N,)
        Class selected from the ``n0`` draws (the class CERTIFY would certify).
    certified : ndarray of bool, shape (N,)
        "Radius ≥ ``radius``" established for ``prediction`` (wrong with probability ≤ α).
    samples : ndarray of int, shape (N,)
        Estimation draws used per input (0 where skipped: a selected class other than
        the label, or a radius beyond reach of ``n`` draws).
    rounds : ndarray of int, shape (N,)
        Rounds drawn per input.
    pa_lower, pa_upper : ndarray of float, shape (N,)
        Final bounds on ``p_A``: one-sided Clopper–Pearson at level ``α/K`` for
        ``test="rounds"``; for ``test="betting"`` the confidence sequence's bounds at the
        stopping time (the thresholds at which the certifying and the mirror wealth
        reach ``1/α``).  NaN where no draw was made.
    radius : float
        The radius tested.
    threshold : float
        ``Φ(radius/σ)``.
    sigma : float
        The noise level.
    n0, n : int
        Selection draws, and the budget of estimation draws per input.
    alpha : float
        Failure probability of each input's decision.
    round_sizes : ndarray of int
        Cumulative draws after each round; ``K = len(round_sizes)``.
    selection_counts : ndarray of int, shape (N, n_classes)
        Votes of the ``n0`` selection draws.
    classes : ndarray or None
        Labels of the class indices (set by the estimators' ``certify_radius``).
    test : {"betting", "rounds"}
        The sequential test that decided.
    noise, noise_step
        As in :class:`~smoothsk.Certificate`.
    """

    prediction: np.ndarray
    certified: np.ndarray
    samples: np.ndarray
    rounds: np.ndarray
    pa_lower: np.ndarray
    pa_upper: np.ndarray
    radius: float
    threshold: float
    sigma: float
    n0: int
    n: int
    alpha: float
    round_sizes: np.ndarray
    selection_counts: np.ndarray
    classes: np.ndarray | None = field(default=None)
    test: str = "rounds"
    noise: str = "gaussian"
    noise_step: str | None = None

    def __len__(self) -> int:
        return len(self.prediction)

    def is_correct(self, y_true) -> np.ndarray:
        """Certified at ``radius`` with the true class (labels if ``classes`` is set)."""
        y_true = np.asarray(y_true)
        if y_true.shape != self.prediction.shape:
            raise ValueError(
                f"y_true has shape {y_true.shape}; expected {self.prediction.shape}."
            )
        if self.classes is None:
            inputs.check_class_indices(y_true, self.selection_counts.shape[1])
        predicted = self.prediction if self.classes is None else self.classes[self.prediction]
        return self.certified & (predicted == y_true)


# What certify_radius accepts (smoothsk.validation: one message per mistake).
CERTIFY_RADIUS_CONSTRAINTS = {
    **SAMPLING_CONSTRAINTS,
    "radius": NON_NEGATIVE,
    "y": ["array-like", None],
    "n0": POSITIVE_INT,
    "n": POSITIVE_INT,
    "alpha": PROBABILITY,
    "test": [StrOptions(set(TESTS))],
    "first_round": POSITIVE_INT,
    "growth": [Float(1, None, closed="neither"), None],
}


@validate_params(CERTIFY_RADIUS_CONSTRAINTS, prefer_skip_nested_validation=True)
def certify_radius(
    module: torch.nn.Module,
    X,
    sigma: float,
    radius: float,
    *,
    y=None,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    test: str = "rounds",
    first_round: int = 64,
    growth: float | None = None,
    batch_size: int = 1000,
    random_state=None,
    index_offset: int = 0,
    precision: str = "fp32",
    shared_noise: bool = False,
    progress=None,
    noise: str = "gaussian",
    noise_step=None,
) -> RadiusCertificate:
    """Decide per input whether the smoothed classifier is certified at l2 radius ``radius``.

    The selection draw is CERTIFY's (same noise for the same ``random_state``); the
    estimation draws come in rounds of cumulative sizes :func:`round_sizes`
    ``(first_round, growth, n)``, and an input stops as soon as its test settles
    ``p_A ≥ Φ(r/σ)`` either way.  "Certified" is wrong with probability at most
    ``alpha`` per input, for both tests (module docstring).

    Parameters
    ----------
    module, X, sigma, n0, n, alpha, batch_size, random_state, index_offset, precision
        As in :func:`smoothsk.certify`; ``n`` is the largest number of estimation draws.
    shared_noise, noise, noise_step
        As in :func:`smoothsk.certify`.
    radius : float >= 0
        The l2 radius r to certify.
    y : array-like of int or None
        Class indices.  Inputs whose selected class is not ``y`` draw no estimation
        samples (they cannot be certified-correct) and are reported as not certified.
    test : {"rounds", "betting"}, default="rounds"
        ``"rounds"``: Clopper–Pearson at ``α/K`` after each of the K rounds (Horváth et
        al.'s scheme).  ``"betting"``: the betting confidence sequence
        (:class:`~smoothsk.certification.sequential.BettingTest`), valid at every look
        and at any number of draws, so its rounds may be finer and its budget extended
        without changing the guarantee; on the committed models it used about as many
        draws as the rounds (docs/benchmarks.md), which is why it is not the default.
    first_round, growth : int, float or None
        Size of the first round and the factor by which the cumulative size grows
        (None: 2 for ``"rounds"``, where every round costs ``α/K``, and 1.25 for
        ``"betting"``, where looking is free; docs/model_selection.md has the measured
        trade-off).
    progress : callable or None
        Called with the number of inputs decided, as they are decided.
    """
    module, _ = as_base_network(module)
    # "auto" resolved once, for the network's device: the certificate records what ran
    precision = check_precision(precision, inputs.module_device_dtype(module)[0])
    sigma = sampling.check_sigma(sigma)
    if isinstance(radius, bool) or not isinstance(radius, numbers.Real) or not (
        np.isfinite(radius) and radius >= 0
    ):
        raise ValueError(f"radius must be a finite float >= 0; got {radius!r}.")
    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}; got {test!r}.")
    n0 = inputs.check_positive_int(n0, "n0")
    alpha = bounds.check_alpha(alpha)
    sizes = round_sizes(first_round, DEFAULT_GROWTH[test] if growth is None else growth, n)
    threshold = float(norm.cdf(radius / sigma))
    level = noise_test_alpha(alpha, n0 + int(sizes[-1]), X, sigma=sigma, noise=noise,
                             noise_step=noise_step)
    decide = decision_rule(test, threshold, level, sizes)
    noise_args = {"noise": noise, "noise_step": noise_step}

    seed = inputs.base_seed(random_state)  # one seed for both streams
    (selection,) = sample_counts(
        module, X, sigma, [n0], batch_size=batch_size, random_state=seed,
        index_offset=index_offset, streams=[STREAM_SELECTION], precision=precision,
        shared_noise=shared_noise, **noise_args,
    )
    top = selection.argmax(axis=1)
    count = len(top)
    active = np.ones(count, dtype=bool)
    if y is not None:
        y = np.asarray(y)
        if y.shape != (count,):
            raise ValueError(f"y has shape {y.shape}; expected ({count},) class indices.")
        active &= top == y
    if not decide.reachable():  # even n votes out of n cannot certify
        active[:] = False
    report = progress or (lambda decided: None)  # inputs decided so far, as they are decided
    report(int(count - active.sum()))

    hits = np.zeros(count, dtype=np.int64)
    drawn = np.zeros(count, dtype=np.int64)
    rounds = np.zeros(count, dtype=np.int64)
    lower = np.full(count, np.nan)
    upper = np.full(count, np.nan)
    certified = np.zeros(count, dtype=bool)
    stream = STREAM_BETTING if test == "betting" else STREAM_ADAPTIVE
    previous = 0
    for j, size in enumerate(sizes):
        if not active.any():
            break
        (votes,) = sample_counts(
            module, X, sigma, [int(size - previous)], batch_size=batch_size,
            random_state=seed, index_offset=index_offset, streams=[(stream, j)],
            precision=precision, shared_noise=shared_noise, active=active, **noise_args)
        idx = np.flatnonzero(active)
        hits[idx] += votes[idx, top[idx]]
        drawn[idx], rounds[idx] = size, j + 1
        certified[idx], stop = decide(hits[idx], int(size))
        active[idx[stop]] = False
        report(int(stop.sum()))
        previous = size
    made = drawn > 0
    lower[made], upper[made] = decide.bounds(hits[made], drawn[made])
    return RadiusCertificate(
        prediction=top, certified=certified, samples=drawn, rounds=rounds,
        pa_lower=lower, pa_upper=upper, radius=float(radius), threshold=threshold,
        sigma=sigma, n0=n0, n=int(sizes[-1]), alpha=alpha, round_sizes=sizes,
        selection_counts=selection, test=test, noise=noise,
        noise_step=recorded_step(noise, noise_step),
    )


def decision_rule(test: str, threshold: float, alpha: float, sizes):
    """The per-round decision of :func:`certify_radius`'s ``test``, as an object.

    ``rule.reachable()`` says whether ``n = sizes[-1]`` draws can certify at all;
    ``rule(votes, draws)`` gives ``(certified, stop)`` for the inputs that have drawn
    ``draws``; ``rule.bounds(votes, draws)`` the bounds reported.  Benchmarks replay
    vote streams through the same object.

    Parameters
    ----------
    test : {"rounds", "betting"}
    threshold : float
        ``Φ(r/σ)``.
    alpha : float
        Failure probability per input.
    sizes : array of int
        The cumulative round sizes (:func:`round_sizes`).
    """
    if test == "betting":
        return _BettingDecision(threshold, alpha, int(sizes[-1]))
    return _RoundsDecision(threshold, alpha / len(sizes), int(sizes[-1]))


class _RoundsDecision:
    """Clopper–Pearson at ``level = α/K`` after each round (proof: module docstring)."""

    def __init__(self, threshold: float, level: float, n: int):
        self.threshold, self.level, self.n = threshold, level, n

    def reachable(self) -> bool:
        return lower_confidence_bound(self.n, self.n, self.level) >= self.threshold

    def __call__(self, hits: np.ndarray, size: int):
        lower = lower_confidence_bound(hits, size, self.level)
        upper = upper_confidence_bound(hits, size, self.level)
        best_case = lower_confidence_bound(hits + (self.n - size), self.n, self.level)
        certified = lower >= self.threshold
        return certified, certified | (upper < self.threshold) | (best_case < self.threshold)

    def bounds(self, hits, drawn):
        return (lower_confidence_bound(hits, drawn, self.level),
                upper_confidence_bound(hits, drawn, self.level))


class _BettingDecision:
    """The betting confidence sequence at ``alpha``: certify when the certifying wealth
    reaches ``1/α``, stop when the mirror wealth does (or the budget cannot certify)."""

    def __init__(self, threshold: float, alpha: float, n: int):
        self.threshold, self.alpha, self.n = threshold, alpha, n
        self.test = BettingTest(threshold, alpha) if 0 < threshold < 1 else None

    def reachable(self) -> bool:
        return self.test is not None and bool(self.test.certified(self.n, self.n))

    def __call__(self, hits: np.ndarray, size: int):
        certified = self.test.certified(hits, size)
        futile = self.test.futile(hits, size)
        # every remaining draw a vote, and still short of the count that certifies at n
        hopeless = hits + (self.n - size) < self.test.certify_counts(self.n)
        return certified, certified | futile | hopeless

    def bounds(self, hits, drawn):
        """The confidence sequence at the stopping time, by bisection on the threshold."""
        return betting_bounds(hits, drawn, self.alpha)
