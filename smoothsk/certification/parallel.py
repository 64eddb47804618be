"""Per-input computations over a joblib backend: local processes, a Dask or a Ray cluster.

The noise of input ``i`` depends only on ``(random_state, i)``, so inputs can be
certified in any grouping, on any worker, and the results equal a serial run's.
``certify(..., n_jobs=k)`` cuts the inputs into chunks and runs them through
``joblib.Parallel``; inside ``joblib.parallel_config(backend="dask")`` (with a
``dask.distributed.Client``) or Ray's joblib backend the same call runs on a cluster.

This module knows nothing of CERTIFY: :func:`map_input_chunks` runs any per-chunk
function (``core`` passes its serial CERTIFY), so ``core`` imports ``parallel`` and
never the other way round.
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading
import time
from collections.abc import Callable

import torch
from joblib import Parallel, delayed, effective_n_jobs
from joblib.parallel import LokyBackend, get_active_backend

from smoothsk.certification.inputs import (
    base_seed,
    check_positive_int,
    global_indices,
    module_device_dtype,
    take_rows,
)

__all__ = ["map_input_chunks", "torch_threads"]


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """torch's intra-op CPU threads set to ``threads`` inside the block, restored after.

    ``None`` changes nothing.  A parallel grid search or ``n_jobs`` certification runs
    several such processes on one machine; one thread each (or ``cores // jobs``) keeps
    them from oversubscribing the cores (docs/scaling.md).

    Parameters
    ----------
    threads : int or None
        Threads inside the block (None: unchanged).
    """
    if threads is None:
        yield
        return
    threads = check_positive_int(threads, "threads")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _worker_device(on_gpu: bool) -> torch.device:
    """The worker's own GPU (its current CUDA device) when the caller's network was on a
    GPU and this worker has one; the CPU otherwise."""
    if on_gpu and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


_watching_parent = threading.Event()


def _watch_parent(parent_pid: int) -> None:
    if _watching_parent.is_set():
        return
    _watching_parent.set()

    def watch():
        while os.getppid() == parent_pid:  # a dead parent's children are adopted elsewhere
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="smoothsk-exit-with-parent", daemon=True).start()


def _start_worker(parent_pid: int) -> None:
    """Loky's worker initializer: a worker exits as soon as the caller is gone (it is the
    caller's child, so a parent other than ``parent_pid`` means the caller died while the
    worker started).  A SIGKILLed caller runs no clean-up, and joblib's workers would go on
    computing (and holding the caller's stderr open) long after it."""
    if os.getppid() != parent_pid:
        os._exit(1)
    _watch_parent(parent_pid)


def _exit_with_parent(parent_pid: int) -> None:
    """The same, from a task: in workers of another process backend that are the caller's
    children.  Dask and Ray workers are not, and are left to their cluster; the threading
    backend runs in the caller."""
    if os.getpid() != parent_pid and os.getppid() == parent_pid:
        _watch_parent(parent_pid)


def _run_chunk(function, module, X, sigma, indices, threads, on_gpu, parent_pid, kwargs):
    _exit_with_parent(parent_pid)
    if threads:
        torch.set_num_threads(threads)
    # Every task works on its own copy in eval mode: with the threading backend the
    # workers share the caller's object, and one task switching it to eval and back
    # (or BatchNorm updating its statistics in training mode) would change the others.
    module = copy.deepcopy(module).to(_worker_device(on_gpu)).eval()
    return function(module, X, sigma, index_offset=indices, **kwargs)


def map_input_chunks(function: Callable, module, X, sigma, *, n_jobs, chunk_size=None,
                     threads_per_worker=None, random_state=None, index_offset=0,
                     progress=None, **kwargs) -> list:
    """``function(module, X[chunk], sigma, index_offset=..., **kwargs)`` per chunk of inputs.

    Parameters
    ----------
    function : callable
        A top-level (picklable) function of one chunk, e.g. serial CERTIFY.
    module, X, sigma
        The network, all inputs and the noise level, passed on to ``function``.
    n_jobs : int
        Workers (joblib semantics: −1 = all cores, or the cluster's workers under a
        Dask / Ray backend).
    chunk_size : int or None
        Inputs per task; default: about four tasks per worker.
    threads_per_worker : int or None
        Torch CPU threads in each worker; default ``cpu_count // n_jobs`` (at least 1),
        so that local workers do not oversubscribe the cores.
    random_state, index_offset, **kwargs
        As in :func:`smoothsk.certify`; the seed is fixed once here so that every worker
        draws from the same streams.
    progress : callable or None
        Called in this process with the number of inputs of each chunk as it finishes.

    Returns
    -------
    list
        The chunks' results, in input order.
    """
    if isinstance(X, torch.utils.data.DataLoader):
        raise ValueError("certify with n_jobs needs X as an array, tensor or Dataset, "
                         "not a DataLoader (workers split the inputs themselves).")
    total = len(X)
    if total == 0:
        raise ValueError("X is empty; pass at least one input.")
    jobs = effective_n_jobs(n_jobs)
    if chunk_size is None:
        chunk_size = max(1, -(-total // (4 * jobs)))
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    if threads_per_worker is None:
        threads_per_worker = max(1, (os.cpu_count() or 1) // jobs)
    threads_per_worker = check_positive_int(threads_per_worker, "threads_per_worker")
    seed = base_seed(random_state)
    indices = global_indices(index_offset, total)
    device, _ = module_device_dtype(module)
    portable = copy.deepcopy(module).cpu() if device.type != "cpu" else module
    kwargs = dict(kwargs, random_state=seed)
    chunks = [slice(start, start + chunk_size) for start in range(0, total, chunk_size)]
    tasks = (
        delayed(_run_chunk)(function, portable, take_rows(X, rows), sigma, indices[rows],
                            threads_per_worker, device.type == "cuda", os.getpid(), kwargs)
        for rows in chunks
    )
    # loky's workers watch the caller from the moment they start, not from their first task
    watch = ({"initializer": _start_worker, "initargs": (os.getpid(),)}
             if isinstance(get_active_backend()[0], LokyBackend) else {})
    try:
        parallel = Parallel(n_jobs=n_jobs, return_as="generator", **watch)
    except ValueError as exc:  # joblib's multiprocessing backend cannot stream results
        raise ValueError(f"certify with n_jobs needs a joblib backend that returns results "
                         f"as they finish: loky (the default), threading, dask or ray "
                         f"({exc}).") from exc
    results = []
    # under the threading backend the workers set this process's thread count: restore it
    with torch_threads(torch.get_num_threads()):
        for rows, result in zip(chunks, parallel(tasks)):
            results.append(result)
            if progress is not None:
                progress(len(range(total)[rows]))
    return results
