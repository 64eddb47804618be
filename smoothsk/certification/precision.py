"""The arithmetic of the base network's forward pass: fp32, or autocast to bf16 / fp16.

``"auto"`` picks the fastest setting the hardware runs natively: bf16 on a CUDA GPU that
supports it and on a CPU with native bf16 (AVX-512 or AMX bf16 instructions, as oneDNN
reports them), else fp32.  Any choice is sound — a certificate is about the smoothed
classifier of the network computed at the precision it records — but bf16 on a CPU
without native support is emulated and runs several times *slower* than fp32
(docs/benchmarks.md), so it is warned about.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import torch

__all__ = ["PRECISIONS", "PRECISION_CHOICES", "EmulatedPrecisionWarning", "check_precision",
           "cpu_has_native_bf16", "precision_context", "resolve_precision"]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISION_CHOICES = (*PRECISIONS, "auto")


class EmulatedPrecisionWarning(UserWarning):
    """bf16 was asked for on a CPU that has no native bf16 arithmetic."""


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 natively (oneDNN's check: AVX-512 or AMX bf16)."""
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device) -> str:
    """``precision`` itself, or for ``"auto"`` the fastest native one on ``device``.

    Parameters
    ----------
    precision : {"fp32", "bf16", "fp16", "auto"}
        The setting asked for.
    device : str, torch.device or None
        Where the network runs (None: the CPU).
    """
    if precision != "auto":
        return precision
    kind = torch.device("cpu" if device is None else device).type
    if kind == "cuda":
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        native = kind == "cpu" and cpu_has_native_bf16()
    return "bf16" if native else "fp32"


def check_precision(precision, device=None) -> str:
    """``precision`` resolved (:func:`resolve_precision`) and checked.

    fp16 runs only where autocast supports it (CUDA); bf16 on a CPU without native bf16
    gives an :class:`EmulatedPrecisionWarning` with what to use instead.

    Parameters
    ----------
    precision : {"fp32", "bf16", "fp16", "auto"}
        The setting asked for.
    device : str, torch.device or None
        Where the network runs (None: not checked against a device).
    """
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {sorted(PRECISION_CHOICES)}; "
                         f"got {precision!r}.")
    precision = resolve_precision(precision, device)
    kind = None if device is None else torch.device(device).type
    if precision == "fp16" and kind is not None and kind != "cuda":
        raise ValueError("precision='fp16' needs a CUDA device; on a CPU use 'bf16'.")
    if precision == "bf16" and kind == "cpu" and not cpu_has_native_bf16():
        warnings.warn(
            "precision='bf16' on this CPU is emulated (it has no AVX-512 or AMX bf16 "
            "instructions): the network runs several times slower than in fp32 "
            "(docs/benchmarks.md). Use precision='fp32', or 'auto' to pick bf16 only where "
            "it is native.", EmulatedPrecisionWarning, stacklevel=3)
    return precision


def precision_context(precision: str, device):
    """Autocast for the network's forward pass at ``precision`` (a no-op for fp32;
    ``"auto"`` is resolved for ``device``).

    Only the network runs at reduced precision: noise is drawn and added in the input's
    dtype before, so the smoothed classifier is that of the network *as computed*.

    Parameters
    ----------
    precision : {"fp32", "bf16", "fp16", "auto"}
        The arithmetic of the forward pass.
    device : str or torch.device
        Where the network runs.
    """
    dtype = PRECISIONS[resolve_precision(precision, device)]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
