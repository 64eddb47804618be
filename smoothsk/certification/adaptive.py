"""Adaptive fixed-radius certification: is ``g`` certified at radius ``r``?

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

from smoothsk.certification import bounds, sampling
from smoothsk.certification.adapters import as_base_network
from smoothsk.certification.bounds import lower_confidence_bound, upper_confidence_bound
from smoothsk.certification.sampling import STREAM_SELECTION, NoiseSampler, sample_counts

__all__ = ["RadiusCertificate", "certify_radius", "round_sizes"]

STREAM_ADAPTIVE = 3


def round_sizes(first_round: int, growth: float, n: int) -> np.ndarray:
    """Cumulative sample sizes ``n_j = min(n, ⌈first_round · growth^(j−1)⌉)``, ending at ``n``."""
    first_round = sampling.check_positive_int(first_round, "first_round")
    n = sampling.check_positive_int(n, "n")
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
        Final one-sided bounds at level ``α/K`` on ``p_A`` (NaN where no draw was made).
    threshold : float
        ``Φ(radius/σ)``.
    round_sizes : ndarray of int
        Cumulative draws after each round; ``K = len(round_sizes)``.
    selection_counts : ndarray of int, shape (N, n_classes)
        Votes of the ``n0`` selection draws.
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

    def __len__(self) -> int:
        return len(self.prediction)

    def is_correct(self, y_true) -> np.ndarray:
        """Certified at ``radius`` with the true class (labels if ``classes`` is set)."""
        y_true = np.asarray(y_true)
        if y_true.shape != self.prediction.shape:
            raise ValueError(
                f"y_true has shape {y_true.shape}; expected {self.prediction.shape}."
            )
        predicted = self.prediction if self.classes is None else self.classes[self.prediction]
        return self.certified & (predicted == y_true)


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
    first_round: int = 64,
    growth: float = 2.0,
    batch_size: int = 1000,
    random_state=None,
    index_offset: int = 0,
    precision: str = "fp32",
    shared_noise: bool = False,
    progress=None,
) -> RadiusCertificate:
    """Decide per input whether the smoothed classifier is certified at l2 radius ``radius``.

    The selection draw is CERTIFY's (same noise for the same ``random_state``); the
    estimation draws come in rounds of cumulative sizes :func:`round_sizes`
    ``(first_round, growth, n)`` and stop as soon as the one-sided Clopper–Pearson
    bounds at level ``α/K`` settle ``p_A ≥ Φ(r/σ)`` either way.  "Certified" is wrong
    with probability at most ``alpha`` per input (union bound over the K rounds; see the
    module docstring).  It agrees with CERTIFY at ``n`` draws except near the threshold.

    Parameters
    ----------
    module, X, sigma, n0, n, alpha, batch_size, random_state, index_offset, precision, shared_noise
        As in :func:`smoothsk.certify`; ``n`` is the largest number of estimation draws.
    radius : float >= 0
        The l2 radius r to certify.
    y : array-like of int or None
        Class indices.  Inputs whose selected class is not ``y`` draw no estimation
        samples (they cannot be certified-correct) and are reported as not certified.
    first_round, growth : int, float
        Size of the first round and the factor by which the cumulative size grows
        (64 and 2 give K = 12 rounds up to n = 100,000; see docs/model_selection.md for
        the measured trade-off).
    """
    module, _ = as_base_network(module)
    sigma = sampling.check_sigma(sigma)
    if isinstance(radius, bool) or not isinstance(radius, numbers.Real) or not (
        np.isfinite(radius) and radius >= 0
    ):
        raise ValueError(f"radius must be a finite float >= 0; got {radius!r}.")
    n0 = sampling.check_positive_int(n0, "n0")
    alpha = bounds.check_alpha(alpha)
    sizes = round_sizes(first_round, growth, n)
    level = alpha / len(sizes)
    threshold = float(norm.cdf(radius / sigma))

    seed = sampling.base_seed(random_state)  # one seed for both streams
    (selection,) = sample_counts(
        module, X, sigma, [n0], batch_size=batch_size, random_state=seed,
        index_offset=index_offset, streams=[STREAM_SELECTION], precision=precision,
        shared_noise=shared_noise,
    )
    top = selection.argmax(axis=1)
    count = len(top)
    global_index = sampling.global_indices(index_offset, count)
    active = np.ones(count, dtype=bool)
    if y is not None:
        y = np.asarray(y)
        if y.shape != (count,):
            raise ValueError(f"y has shape {y.shape}; expected ({count},) class indices.")
        active &= top == y
    # Even n successes out of n cannot reach the threshold: nothing to draw.
    if lower_confidence_bound(n, n, level) < threshold:
        active[:] = False
    report = progress or (lambda decided: None)  # inputs decided so far, as they are decided
    report(int(count - active.sum()))

    hits = np.zeros(count, dtype=np.int64)
    drawn = np.zeros(count, dtype=np.int64)
    rounds = np.zeros(count, dtype=np.int64)
    lower = np.full(count, np.nan)
    upper = np.full(count, np.nan)
    certified = np.zeros(count, dtype=bool)
    device, dtype = sampling.module_device_dtype(module)
    chunk_size = sampling.noise_chunk_size(batch_size, int(sizes[0]), shared_noise)
    trimmer = sampling.HeapTrimmer()  # (the selection's sample_counts raised the thresholds)
    with sampling.evaluating(module):
        previous = 0
        for j, size in enumerate(sizes):
            if not active.any():
                break
            sampler = NoiseSampler(
                module, sigma, batch_size, seed, (STREAM_ADAPTIVE, j), precision, shared_noise
            )
            start = 0
            for chunk in sampling.input_chunks(X, chunk_size):
                local = np.flatnonzero(active[start : start + len(chunk)])
                if len(local):
                    rows = start + local
                    inputs = chunk[torch.as_tensor(local)].to(device=device, dtype=dtype)
                    votes = sampler.counts(inputs, global_index[rows],
                                           int(size - previous)).cpu().numpy()
                    hits[rows] += votes[np.arange(len(rows)), top[rows]]
                    trimmer.evaluated(inputs, int(size - previous))
                start += len(chunk)
            idx = np.flatnonzero(active)
            drawn[idx], rounds[idx] = size, j + 1
            lower[idx] = lower_confidence_bound(hits[idx], size, level)
            upper[idx] = upper_confidence_bound(hits[idx], size, level)
            best_case = lower_confidence_bound(hits[idx] + (n - size), n, level)
            certified[idx] = lower[idx] >= threshold
            done = certified[idx] | (upper[idx] < threshold) | (best_case < threshold)
            active[idx[done]] = False
            report(int(done.sum()))
            previous = size
    sampling.release_free_memory()
    return RadiusCertificate(
        prediction=top, certified=certified, samples=drawn, rounds=rounds,
        pa_lower=lower, pa_upper=upper, radius=float(radius), threshold=threshold,
        sigma=sigma, n0=n0, n=int(sizes[-1]), alpha=alpha, round_sizes=sizes,
        selection_counts=selection,
    )
