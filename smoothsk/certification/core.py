"""Cohen, Rosenfeld & Kolter (ICML 2019): CERTIFY and PREDICT for randomized smoothing.

The smoothed classifier is ``g(x) = argmax_c P(f(x + δ) = c)`` with ``δ ~ N(0, σ² I)``.
If the top class has probability ``p_A ≥ p_A_lower > 1/2`` then ``g`` is constant
within the l2 ball of radius ``σ Φ⁻¹(p_A_lower)`` (Cohen et al., Theorem 1).

Noise for input ``i`` is drawn in fixed blocks of ``NOISE_BLOCK`` rows, each block
seeded from ``(random_state, i, stream, block)`` alone.  Certificates therefore never
depend on ``batch_size``, on how inputs are grouped in a batch, or on how a data
set is split into calls (pass ``index_offset``); resumable and distributed runs
rely on this.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import binomtest

from smoothsk.certification.adapters import as_base_network
from smoothsk.certification.bounds import check_alpha
from smoothsk.certification.certificate import ABSTAIN, Certificate
from smoothsk.certification.inputs import (
    base_seed,
    check_positive_int,
    global_indices,
    module_device_dtype,
)
from smoothsk.certification.noise import check_noise_options, noise_test_alpha, recorded_step
from smoothsk.certification.parallel import map_input_chunks, torch_threads
from smoothsk.certification.precision import check_precision
from smoothsk.certification.radius import BOUNDS, INTERVALS, certified_radius, uniform_variates
from smoothsk.certification.sampling import (
    SAMPLING_CONSTRAINTS,
    STREAM_ESTIMATION,
    STREAM_SELECTION,
    class_counts,
    sample_counts,
)
from smoothsk.validation import (
    POSITIVE,
    POSITIVE_INT,
    PROBABILITY,
    Integer,
    StrOptions,
    validate_params,
)

# Every argument of certify and predict, checked once at the door (smoothsk.validation).
CERTIFY_CONSTRAINTS = {
    **SAMPLING_CONSTRAINTS,
    "n0": POSITIVE_INT,
    "n": POSITIVE_INT,
    "alpha": PROBABILITY,
    "n_jobs": [Integer(None, None, closed="neither"), None],
    "chunk_size": [*POSITIVE_INT, None],
    "threads_per_worker": [*POSITIVE_INT, None],
    "bound": [StrOptions(set(BOUNDS))],
    "interval": [StrOptions(set(INTERVALS))],
    "sequential": ["boolean"],
    "max_n": [*POSITIVE_INT, None],
    "tolerance": [*POSITIVE, None],
    "verbose": ["boolean", Integer(0, None, closed="left")],
    "threads": [*POSITIVE_INT, None],
}


@validate_params(CERTIFY_CONSTRAINTS, prefer_skip_nested_validation=True)
def certify(
    module: torch.nn.Module,
    X,
    sigma: float,
    *,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    batch_size: int = 1000,
    random_state=None,
    index_offset: int = 0,
    n_jobs: int | None = None,
    chunk_size: int | None = None,
    threads_per_worker: int | None = None,
    precision: str = "fp32",
    progress=None,
    shared_noise: bool = False,
    bound: str = "binary",
    interval: str = "clopper-pearson",
    noise: str = "gaussian",
    noise_step=None,
    sequential: bool = False,
    max_n: int | None = None,
    tolerance: float | None = None,
    verbose: bool = False,
    threads: int | None = None,
) -> Certificate:
    """Cohen et al.'s CERTIFY for every input in ``X``.

    1. ``ĉ_A`` = most frequent class among ``n0`` noisy copies (selection);
    2. ``n_A`` = votes for ``ĉ_A`` among ``n`` *fresh* copies (estimation);
    3. ``p_A_lower`` = one-sided (1 − α) Clopper–Pearson lower bound on ``n_A / n``;
    4. abstain if ``p_A_lower < 1/2``, else return ``(ĉ_A, σ Φ⁻¹(p_A_lower))``.

    With probability at least ``1 − α`` (per input) a returned class is the smoothed
    classifier's prediction on the whole l2 ball of the returned radius.

    Parameters
    ----------
    module : torch.nn.Module or fitted classifier
        The base network (logits), or any fitted classifier (Notes).
    X : array, tensor, Dataset or DataLoader
        Inputs of shape ``(N, ...)``.
    sigma : float > 0
        Noise level σ, in the inputs' units.
    n0, n : int >= 1
        Selection and estimation draws per input.
    alpha : float in (0, 1)
        Failure probability per input.
    batch_size, random_state, index_offset, precision, progress, shared_noise, noise, noise_step
        As in :func:`class_counts` (``precision="auto"``: bf16 where native, else fp32).
    n_jobs, chunk_size, threads_per_worker
        Spread the inputs over joblib workers (Notes); the result equals the serial one.
    bound : {"binary", "two-class"}
        How the counts bound the radius (:func:`certified_radius`).
    interval : {"clopper-pearson", "randomized"}
        Which confidence bounds.
    sequential : bool
        The anytime CERTIFY (Notes).
    max_n : int or None
        ``sequential=True``: the most estimation draws an input may take (None: ``n``).
    tolerance : float or None
        ``sequential=True``: an input stops once more draws cannot raise its radius by
        more than this (None: σ/10).
    verbose : bool
        A progress bar when ``progress`` is None.
    threads : int or None
        torch's CPU threads for the call, restored after (None: unchanged).

    Returns
    -------
    Certificate
        Per input: the class index (``ABSTAIN`` where it abstains), the radius, the bound
        and the counts, with everything needed to check or resume the run.

    Notes
    -----
    ``n_jobs`` (with ``chunk_size`` and ``threads_per_worker``) spreads the inputs over
    joblib workers, local or on a Dask / Ray cluster (see
    :func:`smoothsk.certification.parallel.map_input_chunks`); the result equals the serial one.
    ``precision`` ("fp32", "bf16", "fp16") is the arithmetic of the network's forward
    pass; noise is drawn and added in fp32, and the guarantee is about the smoothed
    classifier of the network computed at that precision (docs/certification.md).
    ``progress`` is called with the number of inputs finished as they finish;
    ``verbose=True`` (without ``progress``) shows a progress bar with the rate and the
    time left (tqdm in a terminal or notebook, a line every 30 s in a log), for runs at
    the default n = 100,000 that take hours on a CPU (rates in docs/benchmarks.md).
    ``shared_noise=True`` gives every input the same noise draws (each block drawn once
    per chunk of inputs): each input's selection and estimation draws stay i.i.d. and
    independent of each other, so every per-input guarantee is unchanged, and results
    do not depend on chunking, ``n_jobs`` or resuming; only inputs' results become
    correlated (docs/certification.md).  Much faster where noise generation bounds the
    rate (small tabular networks).

    ``bound`` and ``interval`` choose how steps 3–4 turn the same counts into a radius
    (:func:`certified_radius`): ``bound="two-class"`` also bounds every other class and
    certifies ``σ/2 (Φ⁻¹(p̲_A) − Φ⁻¹(p̄_B))``, which certifies inputs with
    ``p̲_A < 1/2`` too; ``interval="randomized"`` uses the randomized Clopper–Pearson
    bounds (exact coverage, never looser), with variates seeded by ``random_state`` and
    each input's index and kept in the certificate.

    ``noise="discrete-gaussian"`` smooths with the Gaussian rounded to the lattice of
    step ``noise_step`` (default 1/255) that the inputs lie on, with every noisy input
    formed exactly, so that the certificate holds in floating point (Voráček & Hein,
    ICLR 2023; :mod:`smoothsk.certification.noise`): the radius is the Gaussian one, for
    perturbations that stay on the lattice, and the tests run at ``α`` less the
    sampler's (tiny) deviation from the exact distribution.

    ``sequential=True`` is the anytime CERTIFY: each input draws in rounds and stops once
    more draws cannot raise its radius by more than ``tolerance`` (default σ/10), or at
    ``max_n`` (default ``n``) estimation draws; the radius comes from a betting
    confidence sequence on a grid at α/2 and, for inputs that spend ``max_n``, also from
    Clopper–Pearson at α/2 (docs/certification.md: sound at α).  ``Certificate.samples``
    holds each input's draws.  ``bound``, ``interval`` and ``n_jobs`` apply to the
    fixed-n CERTIFY only.

    ``module`` may also be any fitted classifier: a skorch or smoothsk estimator (its
    network), or a scikit-learn classifier or Pipeline, whose ``predict`` then votes on
    batches of noisy inputs (:func:`smoothsk.certification.adapters.as_base_network`); the
    certificate's ``classes`` are then the classifier's, so ``labels()`` and
    ``is_correct(y)`` take labels.
    """
    n0 = check_positive_int(n0, "n0")
    n = check_positive_int(n, "n")
    alpha = check_alpha(alpha)
    _check_choice(bound, BOUNDS, "bound")
    _check_choice(interval, INTERVALS, "interval")
    check_noise_options(noise, noise_step)  # refuse a bad noise before any work
    bar = None
    if verbose and progress is None:
        from smoothsk.progress import progress_bar

        bar = progress_bar(_input_count(X), f"certify (n={n:,})")
        progress = bar.update
    with torch_threads(threads):
        try:
            module, classes = as_base_network(module)
            # "auto" resolved once, for the network's device: the certificate records what ran
            precision = check_precision(precision, module_device_dtype(module)[0])
            if sequential:
                certificate = _anytime(
                    module, X, sigma, n0=n0, n=n, max_n=max_n, alpha=alpha, tolerance=tolerance,
                    n_jobs=n_jobs, bound=bound, interval=interval, batch_size=batch_size,
                    random_state=random_state, index_offset=index_offset, precision=precision,
                    shared_noise=shared_noise, noise=noise, noise_step=noise_step,
                    progress=progress)
            elif n_jobs not in (None, 1):
                parts = map_input_chunks(
                    _certify_serial, module, X, sigma, n_jobs=n_jobs, chunk_size=chunk_size,
                    threads_per_worker=threads_per_worker, random_state=random_state,
                    index_offset=index_offset, n0=n0, n=n, alpha=alpha, batch_size=batch_size,
                    precision=precision, progress=progress, shared_noise=shared_noise,
                    bound=bound, interval=interval, noise=noise, noise_step=noise_step,
                )
                certificate = Certificate.concatenate(parts)
            else:
                certificate = _certify_serial(
                    module, X, sigma, n0=n0, n=n, alpha=alpha, batch_size=batch_size,
                    random_state=random_state, index_offset=index_offset, precision=precision,
                    progress=progress, shared_noise=shared_noise, bound=bound,
                    interval=interval, noise=noise, noise_step=noise_step)
        finally:
            if bar is not None:
                bar.close()
        certificate.classes = classes
    return certificate


def _input_count(X) -> int | None:
    try:
        return len(X)
    except TypeError:  # an iterable DataLoader
        return None


def _anytime(module, X, sigma, *, n, max_n, tolerance, n_jobs, bound, interval, **kwargs):
    """``certify(sequential=True)``: checks, then the anytime CERTIFY."""
    from smoothsk.certification.radii import anytime_certify
    from smoothsk.certification.sampling import check_sigma

    if bound != "binary" or interval != "clopper-pearson" or n_jobs not in (None, 1):
        raise ValueError("sequential=True runs in one process with its own bounds; leave "
                         "bound, interval and n_jobs at their defaults.")
    sigma = check_sigma(sigma)
    max_n = n if max_n is None else check_positive_int(max_n, "max_n")
    tolerance = sigma / 10 if tolerance is None else tolerance
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, np.floating)) \
            or not np.isfinite(tolerance) or tolerance <= 0:
        raise ValueError(f"tolerance must be a radius > 0; got {tolerance!r}.")
    return anytime_certify(module, X, sigma, max_n=max_n, tolerance=float(tolerance),
                           **kwargs)


def _check_choice(value, choices, name: str) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}; got {value!r}.")


def _certify_serial(module, X, sigma, *, n0, n, alpha, batch_size, random_state,
                    index_offset, precision="fp32", progress=None, shared_noise=False,
                    bound="binary", interval="clopper-pearson", noise="gaussian",
                    noise_step=None) -> Certificate:
    """CERTIFY in this process (parameters checked by :func:`certify`)."""
    seed = base_seed(random_state)  # one seed for the noise and the uniform variates
    selection, estimation = sample_counts(
        module, X, sigma, [n0, n], batch_size=batch_size, random_state=seed,
        index_offset=index_offset, streams=[STREAM_SELECTION, STREAM_ESTIMATION],
        precision=precision, progress=progress, shared_noise=shared_noise, noise=noise,
        noise_step=noise_step,
    )
    level = noise_test_alpha(alpha, n0 + n, X, sigma=sigma, noise=noise,
                             noise_step=noise_step)
    top = selection.argmax(axis=1)  # ties go to the lowest index, as in Cohen's code
    uniforms = None
    if interval == "randomized":
        uniforms = uniform_variates(seed, global_indices(index_offset, len(top)))
    certified, radius, pa_lower, pb_upper = certified_radius(
        top, estimation, sigma, level, bound=bound, interval=interval, uniforms=uniforms)
    return Certificate(
        prediction=np.where(certified, top, ABSTAIN),
        radius=radius,
        pa_lower=pa_lower,
        selection_counts=selection,
        counts=estimation,
        sigma=float(sigma),
        n0=n0,
        n=n,
        alpha=alpha,
        precision=precision,
        shared_noise=bool(shared_noise),
        bound=bound,
        interval=interval,
        pb_upper=pb_upper,
        uniforms=uniforms,
        noise=noise,
        noise_step=recorded_step(noise, noise_step),
    )


@validate_params(CERTIFY_CONSTRAINTS, prefer_skip_nested_validation=True)
def predict(
    module: torch.nn.Module,
    X,
    sigma: float,
    *,
    n: int = 100_000,
    alpha: float = 0.001,
    batch_size: int = 1000,
    random_state=None,
    index_offset: int = 0,
    precision: str = "fp32",
    progress=None,
    shared_noise: bool = False,
    noise: str = "gaussian",
    noise_step=None,
) -> np.ndarray:
    """Cohen et al.'s PREDICT: the top class, or ``ABSTAIN`` (−1).

    With top-two counts ``n_A ≥ n_B`` among ``n`` draws, return the top class when the
    two-sided binomial test of ``n_A`` out of ``n_A + n_B`` against ``p = 1/2``
    (``scipy.stats.binomtest``) has p-value ≤ α.  The probability of returning a class
    other than ``g(x)`` is at most α (Cohen et al., Proposition 1).

    Parameters
    ----------
    module, X, sigma
        As in :func:`certify`.
    n : int >= 1
        Draws per input.
    alpha : float in (0, 1)
        The test's level: the probability of returning a class other than ``g(x)``.
    batch_size, random_state, index_offset, precision, progress, shared_noise, noise, noise_step
        As in :func:`class_counts`.

    Returns
    -------
    ndarray of int, shape (N,)
        The predicted class index per input, ``ABSTAIN`` where the test is not significant.
    """
    n = check_positive_int(n, "n")
    alpha = check_alpha(alpha)
    counts = class_counts(
        module, X, sigma, n, batch_size=batch_size, random_state=random_state,
        index_offset=index_offset, precision=precision, progress=progress,
        shared_noise=shared_noise, noise=noise, noise_step=noise_step,
    )
    alpha = noise_test_alpha(alpha, n, X, sigma=sigma, noise=noise, noise_step=noise_step)
    return predict_from_counts(counts, alpha)


def predict_from_counts(counts: np.ndarray, alpha: float) -> np.ndarray:
    """PREDICT's decision from vote counts ``(N, C)``: the top class where the two-sided
    binomial test of the top two counts against 1/2 has p-value ≤ ``alpha``, else
    ``ABSTAIN``.

    Parameters
    ----------
    counts : ndarray of int, shape (N, C)
        Votes per class.
    alpha : float
        The test's level.
    """
    order = np.argsort(-counts, axis=1, kind="stable")
    top = order[:, 0]
    n_a = counts[np.arange(len(counts)), top]
    n_b = counts[np.arange(len(counts)), order[:, 1]] if counts.shape[1] > 1 else np.zeros_like(n_a)
    p_values = np.array([binomtest(int(a), int(a + b), 0.5).pvalue for a, b in zip(n_a, n_b)])
    return np.where(p_values <= alpha, top, ABSTAIN)
