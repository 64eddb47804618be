"""The certified-accuracy curve at fixed radii, sequentially: ``certify_radii``.

A curve ``CA(r₁), …, CA(r_K)`` needs, per input, only which of the grid radii it is
certified at; CERTIFY's fixed ``n`` draws answer far more than that.  Here every input
draws in rounds (after CERTIFY's selection draw) until each radius of the grid is
decided by its own betting test (:class:`~smoothsk.certification.sequential.BettingTest`
at ``p*_k = Φ(r_k/σ)``, level α), or the budget ``max_n`` is spent: an input far inside
or far outside every threshold stops after a few hundred draws.

Soundness.  Fix the selected class ``c`` (its selection noise is independent of the
estimation draws) and ``p = P(f(x + δ) = c)``.  Test ``k`` is valid at every number of
draws: under ``p < p*_k`` it ever fires with probability at most α (Ville's inequality),
whatever the stopping rule.  An input is reported certified at ``r_k`` only when the
tests of ``r_1, …, r_k`` have *all* fired (at any time up to its stop).  A false claim
"certified at ``r_K``" means ``p < p*_K``; let ``j ≤ K`` be the first radius with
``p < p*_j``.  Its test fired, an event of probability at most α.  So the reported radius
is wrong with probability at most α per input, at every radius of the grid at once, with
no split of α over the radii and no assumption that the tests are nested.  Futility stops
only withhold certificates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import norm

from smoothsk.certification import bounds, inputs, sampling
from smoothsk.certification.adapters import as_base_network
from smoothsk.certification.adaptive import decision_rule, round_sizes
from smoothsk.certification.certificate import ABSTAIN, Certificate, labels_or_marker
from smoothsk.certification.noise import noise_test_alpha, recorded_step
from smoothsk.certification.precision import check_precision
from smoothsk.certification.sampling import SAMPLING_CONSTRAINTS, STREAM_SELECTION, sample_counts
from smoothsk.certification.sequential import betting_bounds
from smoothsk.validation import (
    POSITIVE_INT,
    PROBABILITY,
    Float,
    validate_params,
)

__all__ = ["RadiiCertificate", "certify_radii"]

STREAM_RADII = 5
DEFAULT_RADII_GROWTH = 1.25
MAX_RADII = 1000


@dataclass
class RadiiCertificate:
    """Result of :func:`certify_radii` for ``N`` inputs and a grid of ``K`` radii.

    Attributes
    ----------
    prediction : ndarray of int, shape (N,)
        The selected class index (CERTIFY's selection draw).
    certified : ndarray of bool, shape (N, K)
        Certified at each radius of the grid (downward closed: certified at ``r_k``
        implies certified at every smaller grid radius).
    radius : ndarray of float, shape (N,)
        The largest certified grid radius (0 where none is), so that
        :func:`smoothsk.certified_accuracy` gives the curve: at a grid radius exactly, and
        between grid radii that of the next grid radius up (a lower bound).
    samples : ndarray of int, shape (N,)
        Estimation draws each input used (0: its selected class was not ``y``).
    pa_lower, pa_upper : ndarray of float, shape (N,)
        The betting confidence sequence for ``p_A`` at the input's stop (NaN: no draws).
    radii, thresholds : ndarray of float, shape (K,)
        The grid, ascending, and ``Φ(r_k/σ)``.
    sigma, n0, max_n, alpha : float, int, int, float
        As given to :func:`certify_radii`.
    selection_counts : ndarray of int, shape (N, n_classes)
        Votes of the ``n0`` selection draws.
    classes : ndarray or None
        Labels of the class indices (set by the estimators' ``certify_radii``).
    noise, noise_step
        As in :class:`~smoothsk.Certificate`.
    """

    prediction: np.ndarray
    certified: np.ndarray
    radius: np.ndarray
    samples: np.ndarray
    pa_lower: np.ndarray
    pa_upper: np.ndarray
    radii: np.ndarray
    thresholds: np.ndarray
    sigma: float
    n0: int
    max_n: int
    alpha: float
    selection_counts: np.ndarray
    classes: np.ndarray | None = field(default=None)
    noise: str = "gaussian"
    noise_step: str | None = None

    def __len__(self) -> int:
        return len(self.prediction)

    @property
    def abstained(self) -> np.ndarray:
        """Inputs certified at no radius of the grid."""
        return ~self.certified.any(axis=1)

    def labels(self, abstain_label=None) -> np.ndarray:
        """Selected labels from ``classes``, ``abstain_label`` where no grid radius is
        certified (as :meth:`smoothsk.Certificate.labels`)."""
        if self.classes is None:
            raise ValueError("This certificate has no classes; use .prediction (class indices).")
        index = np.where(self.abstained, ABSTAIN, self.prediction)
        return labels_or_marker(np.asarray(self.classes), index, abstain_label)

    def is_correct(self, y_true) -> np.ndarray:
        """Certified at the smallest grid radius, with the true class (labels if
        ``classes`` is set, class indices otherwise)."""
        y_true = np.asarray(y_true)
        if y_true.shape != self.prediction.shape:
            raise ValueError(f"y_true has shape {y_true.shape}; expected "
                             f"{self.prediction.shape}.")
        if self.classes is None:
            inputs.check_class_indices(y_true, self.selection_counts.shape[1])
            predicted = self.prediction
        else:
            predicted = np.asarray(self.classes)[self.prediction]
        return ~self.abstained & (predicted == y_true)


def check_radii(radii) -> np.ndarray:
    """``radii`` as a sorted, duplicate-free float array of finite values ``≥ 0``.

    Parameters
    ----------
    radii : float or array-like of float
        The grid.
    """
    values = np.asarray(radii, dtype=np.float64).ravel() if not np.isscalar(radii) \
        else np.asarray([radii], dtype=np.float64)
    if not len(values) or not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"radii must be finite values >= 0 (at least one); got {radii!r}.")
    values = np.unique(values)
    if len(values) > MAX_RADII:
        raise ValueError(f"{len(values)} radii: at most {MAX_RADII} (a curve needs tens).")
    return values


def closed_radii(fired: np.ndarray, radii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The grid radii each input is reported certified at: the tests that fired, closed
    downward (the module's proof), and the largest such radius (0 where none).

    Parameters
    ----------
    fired : ndarray of bool, shape (N, R)
        Which radius tests certified each input.
    radii : ndarray of float, shape (R,)
        The sorted grid.
    """
    certified = np.logical_and.accumulate(fired, axis=1)
    radius = np.where(certified.any(axis=1),
                      radii[np.maximum(certified.sum(axis=1) - 1, 0)], 0.0)
    return certified, radius


def grid_run(module, X, sigma, radii, *, y, n0, max_n, alpha, first_round, growth,
             batch_size, random_state, index_offset, precision, shared_noise, noise,
             noise_step, progress, tolerance=None):
    """The sequential loop behind :func:`certify_radii` and ``certify(sequential=True)``.

    Returns ``(top, selection, fired, hits, drawn, level)``: the selected classes and
    counts, which grid tests fired (not yet closed downward), the votes for the selected
    class and the draws of each input, and the level the tests ran at.  ``tolerance``
    also stops an input once the smallest grid radius shown out of reach is within
    ``tolerance`` of its certified one (stopping only: soundness is unchanged).
    """
    n0 = inputs.check_positive_int(n0, "n0")
    max_n = inputs.check_positive_int(max_n, "max_n")
    sizes = round_sizes(first_round, growth, max_n)
    thresholds = norm.cdf(radii / sigma)
    level = noise_test_alpha(alpha, n0 + max_n, X, sigma=sigma, noise=noise,
                             noise_step=noise_step)
    rules = [decision_rule("betting", float(t), level, sizes) for t in thresholds]
    noise_args = {"noise": noise, "noise_step": noise_step, "precision": precision,
                  "shared_noise": shared_noise, "batch_size": batch_size}

    seed = inputs.base_seed(random_state)
    (selection,) = sample_counts(module, X, sigma, [n0], random_state=seed,
                                 index_offset=index_offset, streams=[STREAM_SELECTION],
                                 **noise_args)
    top = selection.argmax(axis=1)
    count = len(top)
    fired = np.zeros((count, len(radii)), dtype=bool)
    decided = np.zeros_like(fired)
    decided[:, [not rule.reachable() for rule in rules]] = True  # max_n cannot certify
    active = ~decided.all(axis=1)
    if y is not None:
        y = np.asarray(y)
        if y.shape != (count,):
            raise ValueError(f"y has shape {y.shape}; expected ({count},) class indices.")
        active &= top == y
    report = progress or (lambda decided_inputs: None)
    report(int(count - active.sum()))

    hits = np.zeros(count, dtype=np.int64)
    drawn = np.zeros(count, dtype=np.int64)
    previous = 0
    for j, size in enumerate(sizes):
        if not active.any():
            break
        (votes,) = sample_counts(module, X, sigma, [int(size - previous)], random_state=seed,
                                 index_offset=index_offset, streams=[(STREAM_RADII, j)],
                                 active=active, **noise_args)
        rows = np.flatnonzero(active)
        hits[rows] += votes[rows, top[rows]]
        drawn[rows] = size
        for k, rule in enumerate(rules):
            open_rows = rows[~decided[rows, k]]
            if not len(open_rows):
                continue
            certified, stop = rule(hits[open_rows], int(size))
            fired[open_rows, k] |= certified
            decided[open_rows, k] |= stop
            # p < p*_k settled: every larger radius is out of reach too
            out_of_reach = open_rows[stop & ~certified]
            decided[out_of_reach, k:] = True
        finished = decided[rows].all(axis=1)
        if tolerance is not None:  # more draws could raise the radius by <= tolerance
            _, best = closed_radii(fired[rows], radii)
            futile = decided[rows] & ~fired[rows]
            reach = np.where(futile.any(1), radii[np.argmax(futile, axis=1)], np.inf)
            finished |= reach - best <= tolerance
        done = rows[finished]
        active[done] = False
        report(len(done))
        previous = size
    return top, selection, fired, hits, drawn, level


# What certify_radii accepts (smoothsk.validation: one message per mistake).
CERTIFY_RADII_CONSTRAINTS = {
    **SAMPLING_CONSTRAINTS,
    "radii": ["array-like"],
    "y": ["array-like", None],
    "n0": POSITIVE_INT,
    "max_n": POSITIVE_INT,
    "alpha": PROBABILITY,
    "first_round": POSITIVE_INT,
    "growth": [Float(1, None, closed="neither")],
}


@validate_params(CERTIFY_RADII_CONSTRAINTS, prefer_skip_nested_validation=True)
def certify_radii(
    module: torch.nn.Module,
    X,
    sigma: float,
    radii,
    *,
    y=None,
    n0: int = 100,
    max_n: int = 100_000,
    alpha: float = 0.001,
    first_round: int = 64,
    growth: float = DEFAULT_RADII_GROWTH,
    batch_size: int = 1000,
    random_state=None,
    index_offset: int = 0,
    precision: str = "fp32",
    shared_noise: bool = False,
    noise: str = "gaussian",
    noise_step=None,
    progress=None,
) -> RadiiCertificate:
    """Decide, per input, at which radii of a grid the smoothed classifier is certified.

    The selection draw is CERTIFY's (same noise for the same ``random_state``); the
    estimation draws come in rounds of cumulative sizes :func:`round_sizes`
    ``(first_round, growth, max_n)`` and an input stops once every radius of the grid is
    decided by its betting test, or at ``max_n`` (module docstring: each reported
    radius is wrong with probability at most ``alpha`` per input, for the whole grid).

    Parameters
    ----------
    module, X, sigma, n0, alpha, batch_size, random_state, index_offset, precision
        As in :func:`smoothsk.certify`.
    shared_noise, noise, noise_step
        As in :func:`smoothsk.certify`.
    radii : float or array-like of float >= 0
        The grid (sorted and deduplicated here).
    y : array-like of int or None
        Class indices: inputs whose selected class is not ``y`` draw no estimation
        samples (they cannot count as certified-correct) and are reported as not
        certified.
    max_n : int
        The largest number of estimation draws per input.
    first_round, growth : int, float
        Size of the first round and the growth factor of the cumulative sizes (looking
        costs the betting test nothing).
    progress : callable or None
        Called with the number of inputs decided, as they are decided.
    """
    module, _ = as_base_network(module)
    # "auto" resolved once, for the network's device: the certificate records what ran
    precision = check_precision(precision, inputs.module_device_dtype(module)[0])
    sigma = sampling.check_sigma(sigma)
    radii = check_radii(radii)
    alpha = bounds.check_alpha(alpha)
    run = grid_run(module, X, sigma, radii, y=y, n0=n0, max_n=max_n, alpha=alpha,
                   first_round=first_round, growth=growth, batch_size=batch_size,
                   random_state=random_state, index_offset=index_offset, precision=precision,
                   shared_noise=shared_noise, noise=noise, noise_step=noise_step,
                   progress=progress)
    top, selection, fired, hits, drawn, level = run
    count = len(top)
    thresholds = norm.cdf(radii / sigma)
    certified, radius = closed_radii(fired, radii)
    lower = np.full(count, np.nan)
    upper = np.full(count, np.nan)
    made = drawn > 0
    lower[made], upper[made] = betting_bounds(hits[made], drawn[made], level)
    return RadiiCertificate(
        prediction=top, certified=certified, radius=radius, samples=drawn, pa_lower=lower,
        pa_upper=upper, radii=radii, thresholds=thresholds, sigma=sigma, n0=n0, max_n=max_n,
        alpha=alpha, selection_counts=selection, noise=noise,
        noise_step=recorded_step(noise, noise_step),
    )


def anytime_certify(module, X, sigma, *, n0, max_n, alpha, tolerance, batch_size,
                    random_state, index_offset, precision, shared_noise, noise, noise_step,
                    progress) -> Certificate:
    """CERTIFY that stops each input once more draws cannot raise its radius by more than
    ``tolerance`` (``certify(..., sequential=True)``; parameters checked there).

    Construction (docs/certification.md): the grid ``0, tolerance/2, …`` up to the largest
    radius ``max_n`` draws can give, decided by :func:`grid_run` at ``α/2`` (reported
    downward closed, so sound at ``α/2`` per input for the whole grid, at any stop); an
    input that draws all ``max_n`` also gets Clopper–Pearson's bound at ``α/2`` on those
    draws, and the larger radius.  Both events together fail with probability at most α.
    """
    half = alpha / 2
    step = tolerance / 2
    top_radius = sigma * norm.ppf(half ** (1 / max_n))
    count_radii = int(np.floor(top_radius / step)) + 1
    if count_radii > MAX_RADII:
        raise ValueError(
            f"tolerance={tolerance:g} needs {count_radii} grid radii up to {top_radius:.3g} "
            f"(at most {MAX_RADII}); use a tolerance of at least "
            f"{2 * top_radius / (MAX_RADII - 1):.3g}.")
    radii = np.arange(count_radii) * step
    top, selection, fired, hits, drawn, level = grid_run(
        module, X, sigma, radii, y=None, n0=n0, max_n=max_n, alpha=half, first_round=64,
        growth=DEFAULT_RADII_GROWTH, batch_size=batch_size, random_state=random_state,
        index_offset=index_offset, precision=precision, shared_noise=shared_noise,
        noise=noise, noise_step=noise_step, progress=progress, tolerance=tolerance)
    closed, grid_radius = closed_radii(fired, radii)
    grid_certified = closed[:, 0]  # p_A > 1/2 established: the class is g(x)
    pa_lower = np.where(grid_certified, norm.cdf(grid_radius / sigma), 0.0)
    spent = drawn == max_n
    budget_lower = bounds.lower_confidence_bound(hits[spent], max_n, level)
    pa_lower[spent] = np.maximum(pa_lower[spent], budget_lower)
    certified = pa_lower > 0.5
    radius = np.where(certified, np.maximum(grid_radius, sigma * norm.ppf(
        np.clip(pa_lower, 0.5, 1.0))), 0.0)
    counts = np.zeros_like(selection)
    counts[np.arange(len(top)), top] = hits
    return Certificate(
        prediction=np.where(certified, top, ABSTAIN), radius=radius, pa_lower=pa_lower,
        selection_counts=selection, counts=counts, sigma=float(sigma), n0=n0, n=max_n,
        alpha=alpha, precision=precision, shared_noise=bool(shared_noise), noise=noise,
        noise_step=recorded_step(noise, noise_step), samples=drawn,
        sequential=True, tolerance=float(tolerance),
    )
