"""What the sampling loop is given: argument checks, seeds, inputs in chunks, indices.

Every input has a global index (``index_offset`` plus its position, or an array of
indices); with the seed it determines all of the input's noise, so these helpers are
what makes counts independent of chunking, batching and the split of a data set into
calls.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterator

import numpy as np
import torch
from sklearn.utils import check_random_state

from smoothsk.certification.noise import NOISES
from smoothsk.certification.precision import PRECISION_CHOICES
from smoothsk.validation import NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, SIGMA, StrOptions

__all__ = [
    "all_finite",
    "SHARED_NOISE_CHUNK",
    "SAMPLING_CONSTRAINTS",
    "base_seed",
    "check_class_indices",
    "check_index_offset",
    "check_positive_int",
    "check_shared_noise",
    "chunk_indices",
    "evaluating",
    "first_field",
    "global_indices",
    "input_chunks",
    "module_device_dtype",
    "noise_chunk_size",
    "take_rows",
]


# Inputs that share each noise block.  Per-chunk costs (drawing the blocks, the heap trim,
# the device round trip) are spread over them; 256 was measured faster than 64 and about
# as fast as 1,024 for a 64-feature MLP (docs/benchmarks.md, shared noise), for 3 MB of
# per-block vote buffers.
SHARED_NOISE_CHUNK = 256


# What every public sampling function accepts (smoothsk.validation: one message per
# mistake, the same as the estimators' for the same parameter); each function adds its own.
SAMPLING_CONSTRAINTS = {
    "sigma": SIGMA,
    "batch_size": POSITIVE_INT,
    "random_state": ["random_state"],
    "index_offset": [*NON_NEGATIVE_INT, "array-like"],
    "precision": [StrOptions(set(PRECISION_CHOICES))],
    "shared_noise": ["boolean"],
    "noise": [StrOptions(set(NOISES))],
    "noise_step": [None, *POSITIVE, str],
    "progress": [callable, None],
}


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    return int(value)


def check_class_indices(y_true: np.ndarray, n_classes: int) -> None:
    """Refuse labels where class indices are expected: compared with indices they would
    count every input as wrong, in silence.

    Parameters
    ----------
    y_true : ndarray
        What the caller compares with a certificate's class indices.
    n_classes : int
        The network's number of outputs.
    """
    if y_true.dtype.kind not in "iub" and not (
            y_true.dtype.kind == "f" and np.all(np.mod(y_true, 1) == 0)):
        raise ValueError(
            f"This certificate holds class indices (it was computed on a bare network), "
            f"but y_true holds labels of dtype {y_true.dtype}. Pass class indices "
            "(0 … C−1, the network's outputs), or certify the fitted estimator "
            "(clf.certify(X)), whose certificates compare with labels.")
    if len(y_true) and (y_true.min() < 0 or y_true.max() >= n_classes):
        raise ValueError(
            f"y_true holds values outside 0 … {n_classes - 1}, but this certificate holds "
            f"class indices of a {n_classes}-class network: pass class indices (e.g. "
            "np.searchsorted(clf.classes_, y)), or certify the fitted estimator.")


def base_seed(random_state) -> int:
    """An int that, with an input's index, determines all of its noise.

    Parameters
    ----------
    random_state : int >= 0, RandomState or None
        The run's seed.
    """
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        if random_state < 0:
            raise ValueError(f"random_state must be >= 0; got {random_state!r}.")
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def module_device_dtype(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def first_field(batch):
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def take_rows(X, rows):
    """``X[rows]`` for arrays and tensors; a ``Subset`` for a torch Dataset.

    ``rows`` is a slice or a sequence of integer indices.

    Parameters
    ----------
    X : array, tensor or Dataset
        The inputs.
    rows : slice or sequence of int
        Which.
    """
    if isinstance(X, (np.ndarray, torch.Tensor)):
        return X[rows]
    if isinstance(rows, slice):
        rows = range(len(X))[rows]
    return torch.utils.data.Subset(X, [int(i) for i in rows])


def input_chunks(X, chunk_size: int) -> Iterator[torch.Tensor]:
    """Yield ``X`` in chunks of inputs: arrays, tensors, Datasets or DataLoaders.

    Dataset items and DataLoader batches may be ``(x, y)`` pairs; only ``x`` is used.

    Parameters
    ----------
    X : array, tensor, Dataset or DataLoader
        The inputs.
    chunk_size : int
        Inputs per chunk (a DataLoader keeps its own batches).
    """
    if isinstance(X, torch.utils.data.DataLoader):
        for batch in X:
            yield torch.as_tensor(first_field(batch))
        return
    if isinstance(X, torch.utils.data.Dataset) and not isinstance(X, torch.Tensor):
        loader = torch.utils.data.DataLoader(X, batch_size=chunk_size, shuffle=False)
        yield from input_chunks(loader, chunk_size)
        return
    if isinstance(X, torch.Tensor):
        tensor = X.detach()
    else:
        array = np.asarray(X)
        if array.dtype == object or not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"X must be numeric; got an array of dtype {array.dtype}.")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.is_complex():  # casting to the network's dtype would drop the imaginary part
        raise ValueError(f"X is complex ({tensor.dtype}); pass real inputs (e.g. X.real or "
                         "np.abs(X), whichever your classifier expects).")
    if tensor.ndim < 2:
        raise ValueError(
            f"X must have shape (n_samples, ...) with at least 2 dimensions; got shape "
            f"{tuple(tensor.shape)}. Reshape a single sample with X[None]."
        )
    for start in range(0, len(tensor), chunk_size):
        yield tensor[start : start + chunk_size]


def check_shared_noise(shared_noise) -> bool:
    if not isinstance(shared_noise, (bool, np.bool_)):
        raise ValueError(f"shared_noise must be True or False; got {shared_noise!r}.")
    return bool(shared_noise)


def check_index_offset(index_offset):
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


def global_indices(index_offset, count: int) -> np.ndarray:
    """Every input's global index: ``index_offset + arange(count)``, or the array given.

    Parameters
    ----------
    index_offset : int or array of int
        The first input's global index, or every input's.
    count : int
        The number of inputs.
    """
    offset = check_index_offset(index_offset)
    if not isinstance(offset, np.ndarray):
        return offset + np.arange(count)
    if len(offset) != count:
        raise ValueError(f"index_offset holds {len(offset)} indices for {count} inputs.")
    return offset


@contextlib.contextmanager
def evaluating(module: torch.nn.Module):
    """Eval mode and ``torch.inference_mode`` inside; the module's mode restored after."""
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            yield module
    finally:
        module.train(was_training)


def chunk_indices(index_offset, seen: int, size: int):
    if isinstance(index_offset, np.ndarray):
        if seen + size > len(index_offset):
            raise ValueError(
                f"index_offset holds {len(index_offset)} indices but X has more inputs."
            )
        return index_offset[seen : seen + size]
    return index_offset + seen


def noise_chunk_size(batch_size: int, num: int, shared_noise: bool) -> int:
    """Inputs per chunk: about one forward batch of ``num`` draws each; with shared noise
    at least ``SHARED_NOISE_CHUNK``, over which each noise block's cost is spread (memory
    stays ``batch_size + NOISE_BLOCK`` noisy rows: inputs join the batch one by one)."""
    size = max(1, batch_size // max(1, num))
    return max(size, SHARED_NOISE_CHUNK) if shared_noise else size


def all_finite(values: torch.Tensor) -> torch.Tensor:
    """A device bool: no NaN or ±inf in ``values``.  One reduction pass (``aminmax``
    propagates NaN, and ±inf shows in the max or the min) where ``isfinite(...).all()``
    makes several over the whole tensor."""
    if values.numel() == 0:
        return torch.ones((), dtype=torch.bool, device=values.device)
    low, high = torch.aminmax(values)
    return torch.isfinite(low) & torch.isfinite(high)
