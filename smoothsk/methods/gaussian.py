"""Gaussian data augmentation (Cohen, Rosenfeld & Kolter, ICML 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from smoothsk.base import SmoothedClassifier

__all__ = ["GaussianAugClassifier", "gaussian_augmentation_loss"]


def gaussian_augmentation_loss(
    module: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, sigma: float
) -> torch.Tensor:
    """``mean_i CE(f(x_i + δ_i), y_i)`` with one fresh ``δ_i ~ N(0, σ² I)`` per example.

    Parameters
    ----------
    module : torch.nn.Module
        The base network (logits).
    X : torch.Tensor of shape (B, ...)
        A training batch.
    y : torch.Tensor of shape (B,)
        Its class indices.
    sigma : float > 0
        The noise level.

    Returns
    -------
    torch.Tensor
        The scalar loss.
    """
    noisy = X + sigma * torch.randn_like(X)
    return F.cross_entropy(module(noisy), y)


class GaussianAugClassifier(SmoothedClassifier):
    """Randomized smoothing with a base network trained on Gaussian-noised inputs.

    Cohen et al. (2019), "Certified Adversarial Robustness via Randomized Smoothing":
    the baseline of every later table.  All parameters are those of
    :class:`smoothsk.base.SmoothedClassifier`.

    Examples
    --------
    >>> clf = GaussianAugClassifier(sigma=0.25, max_epochs=20, random_state=0)
    >>> clf.fit(X_train, y_train)                       # doctest: +SKIP
    >>> cert = clf.certify(X_test, n=10_000)            # doctest: +SKIP
    >>> cert.radius[cert.is_correct(y_test)].mean()     # doctest: +SKIP
    """

    method_name = "gaussian"
    display_name = "Gaussian"

    def training_loss(self, X, y):
        return gaussian_augmentation_loss(self.module_, X, y, self.noise_level)
