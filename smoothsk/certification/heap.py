"""glibc heap tuning for long certification runs (a no-op under other allocators).

CPU convolutions (oneDNN) interleave large transient buffers with small long-lived ones;
left alone, glibc keeps freed space and page-faults activations in anew, so a long call's
resident memory grows and a fresh process runs slower.  The sampling loop
(:func:`smoothsk.certification.sampling.sample_counts`) calls these helpers; nothing
else needs them.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import torch

__all__ = ["HeapTrimmer", "raise_heap_thresholds", "release_free_memory"]


def _load_glibc():
    """glibc's ``malloc``, ``free`` and ``malloc_trim``, or None elsewhere (musl, macOS,
    Windows): the heap helpers below are for glibc's allocator and do nothing elsewhere."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim, malloc, free = libc.malloc_trim, libc.malloc, libc.free
    except (OSError, AttributeError, TypeError):
        return None
    malloc.restype, malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    free.restype, free.argtypes = None, [ctypes.c_void_p]
    return trim, malloc, free


_GLIBC = _load_glibc()
_MALLOC_TRIM = _GLIBC[0] if _GLIBC else None


def release_free_memory() -> None:
    """Return the C heap's free pages to the OS (glibc ``malloc_trim(0)``; else nothing).

    CPU convolutions (oneDNN) interleave large transient buffers with small long-lived
    ones; glibc then keeps the freed space, and a long call's resident memory grows with
    every input, by gigabytes over a data set.  :func:`sample_counts` trims once per
    ``TRIM_EVERY_BYTES`` of noisy inputs and at the end of the call, which keeps it flat
    (docs/benchmarks.md, "the C heap").
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


# Trimming costs the batches after it their page faults again (and at large n a chunk is
# one input), so the heap is trimmed once per this many bytes of noisy inputs evaluated,
# and at the end of a call.
TRIM_EVERY_BYTES = 64 * 2**20


class HeapTrimmer:
    """Calls :func:`release_free_memory` once per ``TRIM_EVERY_BYTES`` of noisy inputs."""

    def __init__(self):
        self.untrimmed = 0

    def evaluated(self, chunk: torch.Tensor, draws: int) -> None:
        """``draws`` noisy copies of every input of ``chunk`` went through the network."""
        self.untrimmed += chunk.numel() * chunk.element_size() * draws
        if self.untrimmed >= TRIM_EVERY_BYTES:
            release_free_memory()
            self.untrimmed = 0


# Under glibc's 32 MiB cap on its dynamic mmap threshold (mallopt(3)).
HEAP_THRESHOLD_BYTES = 31 * 2**20


def raise_heap_thresholds() -> None:
    """Let glibc keep freed blocks of up to ``HEAP_THRESHOLD_BYTES`` for reuse.

    glibc serves blocks above its mmap threshold (128 KiB in a fresh process) with fresh
    mmaps, and gives the heap's top back to the OS once twice that threshold is free
    there; both thresholds rise only when a larger mmapped block is freed (mallopt(3)).
    Until then a network's per-batch activations, megabytes each, are page-faulted in
    anew on every batch: thousands of faults per batch of a bf16 channels-last LeNet,
    which certified markedly slower in a fresh process than after any large allocation
    (``benchmarks/heap.py``; docs/benchmarks.md, "the C heap").  Freeing one mmapped
    block of ``HEAP_THRESHOLD_BYTES`` raises the thresholds as such a block would, without
    a setting of our own: glibc keeps adjusting them, and ``malloc_trim``
    (:func:`release_free_memory`) still returns the free heap.  Nothing is touched, so
    nothing is faulted in; elsewhere a no-op.
    """
    if _GLIBC is not None:
        _, malloc, free = _GLIBC
        free(malloc(HEAP_THRESHOLD_BYTES))
