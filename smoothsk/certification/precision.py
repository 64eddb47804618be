"""The arithmetic of the base network's forward pass: fp32, or autocast to bf16 / fp16."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["PRECISIONS", "check_precision", "precision_context"]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision, device=None) -> str:
    """``precision`` as one of ``PRECISIONS``; fp16 only where autocast supports it (CUDA)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}; got {precision!r}.")
    if precision == "fp16" and device is not None and torch.device(device).type != "cuda":
        raise ValueError("precision='fp16' needs a CUDA device; on a CPU use 'bf16'.")
    return precision


def precision_context(precision: str, device):
    """Autocast for the network's forward pass at ``precision`` (a no-op for fp32).

    Only the network runs at reduced precision: noise is drawn and added in the input's
    dtype before, so the smoothed classifier is that of the network *as computed*.
    """
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
