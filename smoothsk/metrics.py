"""Metrics on certificates: certified accuracy and average certified radius (ACR)."""

from __future__ import annotations

import numpy as np

from smoothsk.certification import Certificate

__all__ = ["average_certified_radius", "certified_accuracy"]


def certified_accuracy(y_true, certificate: Certificate, radius=0.0):
    """Fraction of inputs certified with the true class at l2 radius ``≥ r``.

    ``CA(r) = (1/N) Σ_i 1[ĉ_i = y_i and R_i ≥ r]``; abstentions count as wrong.

    Parameters
    ----------
    y_true : array-like of shape (N,)
        Labels (class indices if the certificate has no ``classes``).
    certificate : Certificate
        From :func:`smoothsk.certify` or an estimator's ``certify``.
    radius : float or array-like of float
        One radius gives a float; an array of radii gives the curve (an array).
    """
    radii = np.asarray(radius, dtype=np.float64)
    if np.any(radii < 0) or not np.all(np.isfinite(radii)):
        raise ValueError(f"radius must be finite and >= 0; got {radius!r}.")
    correct = certificate.is_correct(y_true)
    curve = (correct[None, :] & (certificate.radius[None, :] >= radii.reshape(-1, 1))).mean(axis=1)
    return float(curve[0]) if radii.ndim == 0 else curve.reshape(radii.shape)


def average_certified_radius(y_true, certificate: Certificate) -> float:
    """ACR ``= (1/N) Σ_i R_i · 1[ĉ_i = y_i]`` (Zhai et al. 2020); abstentions give 0."""
    correct = certificate.is_correct(y_true)
    return float(np.mean(np.where(correct, certificate.radius, 0.0)))
