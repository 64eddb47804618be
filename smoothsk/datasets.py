"""Data sets as the estimators take them: inputs in [0, 1], labels as integers."""

from __future__ import annotations

import numpy as np

__all__ = ["load_digits_images"]


def load_digits_images(*, flat: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8×8 digits (1,797 images, 10 classes) scaled to [0, 1].

    Returns ``X`` of shape ``(1797, 1, 8, 8)`` (or ``(1797, 64)`` with ``flat=True``),
    float32, and ``y`` of int64 labels 0–9.  Ships with scikit-learn: no download.
    """
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    return (X if flat else X.reshape(-1, 1, 8, 8)), y.astype(np.int64)
