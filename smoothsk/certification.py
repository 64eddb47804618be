"""Cohen, Rosenfeld & Kolter (ICML 2019): CERTIFY and PREDICT for randomized smoothing.

The smoothed classifier is ``g(x) = argmax_c P(f(x + δ) = c)`` with ``δ ~ N(0, σ² I)``.
If the top class has probability ``p_A ≥ p_A_lower > 1/2`` then ``g`` is constant
within the l2 ball of radius ``σ Φ⁻¹(p_A_lower)`` (Cohen et al., Theorem 1).

Noise for input ``i`` is drawn in fixed blocks of ``_NOISE_BLOCK`` rows, each block
seeded from ``(random_state, i, stream, block)`` alone.  Certificates therefore never
depend on ``batch_size``, on how inputs are grouped in a batch, or on how a data
set is split into calls (pass ``index_offset``); resumable and distributed runs
rely on this.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import beta, binomtest, norm
from sklearn.utils import check_random_state

ABSTAIN = -1
"""Class index returned where the smoothed classifier abstains."""

_NOISE_BLOCK = 1024
_STREAM_SELECTION, _STREAM_ESTIMATION, _STREAM_PREDICTION = 0, 1, 2


# --------------------------------------------------------------------------- bounds
def _check_alpha(alpha: float) -> float:
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
    alpha = _check_alpha(alpha)
    k, n = _check_counts(successes, trials)
    with np.errstate(invalid="ignore", divide="ignore"):
        bound = beta.ppf(alpha, k, n - k + 1)
    return np.where(k == 0, 0.0, bound)


def upper_confidence_bound(successes, trials, alpha: float) -> np.ndarray:
    """One-sided (1 − α) Clopper–Pearson upper bound: the (1 − α)-quantile of
    ``Beta(k + 1, n − k)``; ``k = n`` gives 1.  ``P(p_upper < p) ≤ α``."""
    alpha = _check_alpha(alpha)
    k, n = _check_counts(successes, trials)
    with np.errstate(invalid="ignore", divide="ignore"):
        bound = beta.isf(alpha, k + 1, n - k)
    return np.where(k == n, 1.0, bound)


# --------------------------------------------------------------------------- inputs
def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    return int(value)


def _check_sigma(sigma) -> float:
    if (
        isinstance(sigma, bool)
        or not isinstance(sigma, numbers.Real)
        or not np.isfinite(sigma)
        or sigma <= 0
    ):
        raise ValueError(f"sigma must be a finite float > 0; got {sigma!r}.")
    return float(sigma)


def _base_seed(random_state) -> int:
    """An int that, with an input's index, determines all of its noise."""
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        if random_state < 0:
            raise ValueError(f"random_state must be >= 0; got {random_state!r}.")
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def _module_device_dtype(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def _first_field(batch):
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _take_rows(X, rows):
    """``X[rows]`` for arrays and tensors; a ``Subset`` for a torch Dataset.

    ``rows`` is a slice or a sequence of integer indices.
    """
    if isinstance(X, (np.ndarray, torch.Tensor)):
        return X[rows]
    if isinstance(rows, slice):
        rows = range(len(X))[rows]
    return torch.utils.data.Subset(X, [int(i) for i in rows])


def _input_chunks(X, chunk_size: int) -> Iterator[torch.Tensor]:
    """Yield ``X`` in chunks of inputs: arrays, tensors, Datasets or DataLoaders.

    Dataset items and DataLoader batches may be ``(x, y)`` pairs; only ``x`` is used.
    """
    if isinstance(X, torch.utils.data.DataLoader):
        for batch in X:
            yield torch.as_tensor(_first_field(batch))
        return
    if isinstance(X, torch.utils.data.Dataset) and not isinstance(X, torch.Tensor):
        loader = torch.utils.data.DataLoader(X, batch_size=chunk_size, shuffle=False)
        yield from _input_chunks(loader, chunk_size)
        return
    if isinstance(X, torch.Tensor):
        tensor = X.detach()
    else:
        array = np.asarray(X)
        if array.dtype == object or not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"X must be numeric; got an array of dtype {array.dtype}.")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.ndim < 2:
        raise ValueError(
            f"X must have shape (n_samples, ...) with at least 2 dimensions; got shape "
            f"{tuple(tensor.shape)}. Reshape a single sample with X[None]."
        )
    for start in range(0, len(tensor), chunk_size):
        yield tensor[start : start + chunk_size]


# --------------------------------------------------------------------------- sampling
class _NoiseSampler:
    """Counts the base network's votes on ``x + δ`` for a chunk of inputs."""

    def __init__(self, module, sigma, batch_size, base_seed, stream):
        self.module = module
        self.sigma = sigma
        self.batch_size = batch_size
        self.base_seed = base_seed
        self.stream = stream
        self.device, self.dtype = _module_device_dtype(module)
        self.generator = torch.Generator(device=self.device)

    def _block_seed(self, index: int, block: int) -> int:
        stream = list(self.stream) if isinstance(self.stream, tuple) else [self.stream]
        sequence = np.random.SeedSequence([self.base_seed, int(index), *stream, block])
        return int(sequence.generate_state(1, np.uint64)[0] >> np.uint64(1))

    def _votes(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.module(batch)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or len(logits) != len(batch):
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
            raise ValueError(
                f"The network must return logits of shape (batch, n_classes); for a batch "
                f"of {len(batch)} inputs it returned {shape}."
            )
        return logits.argmax(dim=1), logits.shape[1]

    def counts(self, chunk: torch.Tensor, first_index, num: int) -> torch.Tensor:
        """Vote counts of shape ``(len(chunk), n_classes)`` from ``num`` draws each.

        ``first_index`` is the global index of ``chunk[0]`` (the rest follow), or an
        array holding every row's global index.  At most ``batch_size + _NOISE_BLOCK``
        noisy rows exist at any time, whatever ``num``.
        """
        if np.ndim(first_index) == 0:
            indices = range(first_index, first_index + len(chunk))
        else:
            indices = first_index
        counts = None
        pending, owners, n_pending = [], [], 0

        def run(rows: torch.Tensor, owner: torch.Tensor):
            nonlocal counts
            votes, n_classes = self._votes(rows)
            if counts is None:
                counts = torch.zeros(len(chunk) * n_classes, dtype=torch.int64, device=self.device)
            elif counts.numel() != len(chunk) * n_classes:
                raise ValueError("The network returned a varying number of classes.")
            counts.index_add_(0, owner * n_classes + votes, torch.ones_like(votes))

        def drain(final: bool):
            nonlocal pending, owners, n_pending
            if not pending or (not final and n_pending < self.batch_size):
                return
            rows, owner = torch.cat(pending), torch.cat(owners)
            stop = len(rows) if final else len(rows) - len(rows) % self.batch_size
            for start in range(0, stop, self.batch_size):
                end = min(start + self.batch_size, stop)
                run(rows[start:end], owner[start:end])
            pending, owners = [rows[stop:]], [owner[stop:]]
            n_pending = len(rows) - stop

        for j in range(len(chunk)):
            x = chunk[j]
            for block, start in enumerate(range(0, num, _NOISE_BLOCK)):
                size = min(_NOISE_BLOCK, num - start)
                self.generator.manual_seed(self._block_seed(indices[j], block))
                noise = torch.randn(
                    (size, *x.shape), generator=self.generator, device=self.device, dtype=self.dtype
                )
                pending.append(noise.mul_(self.sigma).add_(x))
                owners.append(torch.full((size,), j, dtype=torch.int64, device=self.device))
                n_pending += size
                drain(final=False)
        drain(final=True)
        return counts.view(len(chunk), -1)


def _check_index_offset(index_offset):
    """An int (global index of the first input) or a 1-D array of every input's index."""
    if np.ndim(index_offset) == 1:
        indices = np.asarray(index_offset)
        if indices.dtype.kind not in "iu" or np.any(indices < 0):
            raise ValueError("index_offset given as an array must hold non-negative integers.")
        return indices.astype(np.int64)
    offset_ok = isinstance(index_offset, numbers.Integral) and not isinstance(index_offset, bool)
    if not offset_ok or index_offset < 0:
        raise ValueError(
            f"index_offset must be a non-negative integer or an array of them; got "
            f"{index_offset!r}."
        )
    return int(index_offset)


def _global_indices(index_offset, count: int) -> np.ndarray:
    """Every input's global index: ``index_offset + arange(count)``, or the array given."""
    offset = _check_index_offset(index_offset)
    if not isinstance(offset, np.ndarray):
        return offset + np.arange(count)
    if len(offset) != count:
        raise ValueError(f"index_offset holds {len(offset)} indices for {count} inputs.")
    return offset


@contextlib.contextmanager
def _evaluating(module: torch.nn.Module):
    """Eval mode and ``torch.inference_mode`` inside; the module's mode restored after."""
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            yield module
    finally:
        module.train(was_training)


def _chunk_indices(index_offset, seen: int, size: int):
    if isinstance(index_offset, np.ndarray):
        if seen + size > len(index_offset):
            raise ValueError(
                f"index_offset holds {len(index_offset)} indices but X has more inputs."
            )
        return index_offset[seen : seen + size]
    return index_offset + seen


def _sample_counts(module, X, sigma, nums, *, batch_size, random_state, index_offset, streams):
    """Per-stream vote counts for all inputs, as numpy arrays of shape (N, C)."""
    sigma = _check_sigma(sigma)
    batch_size = _check_positive_int(batch_size, "batch_size")
    index_offset = _check_index_offset(index_offset)
    base_seed = _base_seed(random_state)
    samplers = [_NoiseSampler(module, sigma, batch_size, base_seed, s) for s in streams]
    device, dtype = samplers[0].device, samplers[0].dtype
    chunk_size = max(1, batch_size // max(1, min(nums)))
    results = [[] for _ in streams]
    seen = 0
    with _evaluating(module):
        for chunk in _input_chunks(X, chunk_size):
            chunk = chunk.to(device=device, dtype=dtype)
            if not torch.isfinite(chunk).all():
                raise ValueError("X contains NaN or infinity; certify needs finite inputs.")
            for sampler, num, out in zip(samplers, nums, results):
                first = _chunk_indices(index_offset, seen, len(chunk))
                out.append(sampler.counts(chunk, first, num).cpu().numpy())
            seen += len(chunk)
    if seen == 0:
        raise ValueError("X is empty; pass at least one input.")
    if isinstance(index_offset, np.ndarray) and seen != len(index_offset):
        raise ValueError(f"index_offset holds {len(index_offset)} indices for {seen} inputs.")
    widths = {part.shape[1] for out in results for part in out}
    if len(widths) != 1:
        raise ValueError("The network returned a varying number of classes.")
    return [np.concatenate(out) for out in results]


def class_counts(
    module: torch.nn.Module,
    X,
    sigma: float,
    num: int,
    *,
    batch_size: int = 1000,
    random_state=None,
    index_offset: int = 0,
) -> np.ndarray:
    """Counts of ``argmax f(x + δ)`` over ``num`` Gaussian draws per input.

    This is the Monte Carlo estimate behind the smoothed classifier:
    ``counts[i, c] / num`` estimates ``P(f(x_i + δ) = c)``.  Uses the prediction
    noise stream (independent of the streams CERTIFY uses).

    Parameters
    ----------
    module : torch.nn.Module
        Base network returning logits of shape ``(batch, n_classes)``.
    X : array, tensor, Dataset or DataLoader
        Inputs of shape ``(N, ...)``; Dataset items may be ``(x, y)`` pairs.
    sigma : float > 0
        Noise level σ.
    num : int >= 1
        Noisy draws per input.
    batch_size : int
        Noisy rows per forward pass (peak memory is proportional to it, not to ``num``).
    random_state : int, RandomState or None
        With ``index_offset + i``, determines the noise of input ``i``.
    index_offset : int or array of int
        Global index of ``X[0]`` (the others follow), so that split calls reproduce one
        big call; or an array with every input's global index (e.g. every 20th image).
    """
    num = _check_positive_int(num, "num")
    (counts,) = _sample_counts(
        module, X, sigma, [num], batch_size=batch_size, random_state=random_state,
        index_offset=index_offset, streams=[_STREAM_PREDICTION],
    )
    return counts


# --------------------------------------------------------------------------- results
@dataclass
class Certificate:
    """Result of :func:`certify` for ``N`` inputs.

    Attributes
    ----------
    prediction : ndarray of int, shape (N,)
        Certified class index, ``ABSTAIN`` (−1) where CERTIFY abstains.
    radius : ndarray of float, shape (N,)
        Certified l2 radius ``σ Φ⁻¹(p_A_lower)``; 0 where abstained.
    pa_lower : ndarray of float, shape (N,)
        One-sided Clopper–Pearson lower bound on ``p_A``.
    selection_counts, counts : ndarray of int, shape (N, n_classes)
        Votes from the ``n0`` selection draws and the ``n`` estimation draws.
    classes : ndarray or None
        Labels of the class indices (set by the estimators' ``certify``).
    """

    prediction: np.ndarray
    radius: np.ndarray
    pa_lower: np.ndarray
    selection_counts: np.ndarray
    counts: np.ndarray
    sigma: float
    n0: int
    n: int
    alpha: float
    classes: np.ndarray | None = field(default=None)

    def __len__(self) -> int:
        return len(self.prediction)

    @property
    def abstained(self) -> np.ndarray:
        return self.prediction == ABSTAIN

    def labels(self, abstain_label=None) -> np.ndarray:
        """Predicted labels from ``classes`` (object array; ``abstain_label`` where abstained)."""
        if self.classes is None:
            raise ValueError("This certificate has no classes; use .prediction (class indices).")
        out = np.empty(len(self), dtype=object)
        out[:] = abstain_label
        keep = ~self.abstained
        out[keep] = np.asarray(self.classes, dtype=object)[self.prediction[keep]]
        return out

    def is_correct(self, y_true) -> np.ndarray:
        """Boolean mask: certified (not abstained) with the true class.

        ``y_true`` holds labels when ``classes`` is set, class indices otherwise.
        """
        y_true = np.asarray(y_true)
        if y_true.shape != self.prediction.shape:
            raise ValueError(
                f"y_true has shape {y_true.shape}; expected {self.prediction.shape} "
                "(one label per certified input)."
            )
        keep = ~self.abstained
        if self.classes is None:
            predicted = self.prediction
        else:
            predicted = np.empty(len(self), dtype=object)
            predicted[keep] = np.asarray(self.classes, dtype=object)[self.prediction[keep]]
        correct = np.zeros(len(self), dtype=bool)
        correct[keep] = predicted[keep] == y_true[keep]
        return correct


# --------------------------------------------------------------------------- algorithms
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
) -> Certificate:
    """Cohen et al.'s CERTIFY for every input in ``X``.

    1. ``ĉ_A`` = most frequent class among ``n0`` noisy copies (selection);
    2. ``n_A`` = votes for ``ĉ_A`` among ``n`` *fresh* copies (estimation);
    3. ``p_A_lower`` = one-sided (1 − α) Clopper–Pearson lower bound on ``n_A / n``;
    4. abstain if ``p_A_lower < 1/2``, else return ``(ĉ_A, σ Φ⁻¹(p_A_lower))``.

    With probability at least ``1 − α`` (per input) a returned class is the smoothed
    classifier's prediction on the whole l2 ball of the returned radius.

    Parameters are as in :func:`class_counts`, plus ``n0`` and ``n`` (draws for
    selection and estimation) and ``alpha`` (failure probability per input).
    ``n_jobs`` (with ``chunk_size`` and ``threads_per_worker``) spreads the inputs over
    joblib workers, local or on a Dask / Ray cluster (see
    :func:`smoothsk.parallel.certify_parallel`); the result equals the serial one.
    """
    n0 = _check_positive_int(n0, "n0")
    n = _check_positive_int(n, "n")
    alpha = _check_alpha(alpha)
    if n_jobs not in (None, 1):
        from smoothsk.parallel import certify_parallel

        return certify_parallel(
            module, X, sigma, n_jobs=n_jobs, chunk_size=chunk_size,
            threads_per_worker=threads_per_worker, random_state=random_state,
            index_offset=index_offset, n0=n0, n=n, alpha=alpha, batch_size=batch_size,
        )
    selection, estimation = _sample_counts(
        module, X, sigma, [n0, n], batch_size=batch_size, random_state=random_state,
        index_offset=index_offset, streams=[_STREAM_SELECTION, _STREAM_ESTIMATION],
    )
    top = selection.argmax(axis=1)  # ties go to the lowest index, as in Cohen's code
    n_top = estimation[np.arange(len(top)), top]
    pa_lower = lower_confidence_bound(n_top, n, alpha)
    certified = pa_lower >= 0.5
    radius = np.where(certified, float(sigma) * norm.ppf(np.clip(pa_lower, 0.5, 1.0)), 0.0)
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
    )


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
) -> np.ndarray:
    """Cohen et al.'s PREDICT: the top class, or ``ABSTAIN`` (−1).

    With top-two counts ``n_A ≥ n_B`` among ``n`` draws, return the top class when the
    two-sided binomial test of ``n_A`` out of ``n_A + n_B`` against ``p = 1/2``
    (``scipy.stats.binomtest``) has p-value ≤ α.  The probability of returning a class
    other than ``g(x)`` is at most α (Cohen et al., Proposition 1).
    """
    n = _check_positive_int(n, "n")
    alpha = _check_alpha(alpha)
    counts = class_counts(
        module, X, sigma, n, batch_size=batch_size, random_state=random_state,
        index_offset=index_offset,
    )
    return _predict_from_counts(counts, alpha)


def _predict_from_counts(counts: np.ndarray, alpha: float) -> np.ndarray:
    order = np.argsort(-counts, axis=1, kind="stable")
    top = order[:, 0]
    n_a = counts[np.arange(len(counts)), top]
    n_b = counts[np.arange(len(counts)), order[:, 1]] if counts.shape[1] > 1 else np.zeros_like(n_a)
    p_values = np.array([binomtest(int(a), int(a + b), 0.5).pvalue for a, b in zip(n_a, n_b)])
    return np.where(p_values <= alpha, top, ABSTAIN)
