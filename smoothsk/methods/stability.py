"""Stability training (Li, Chen, Wang & Carin, NeurIPS 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from smoothsk.base import SmoothedClassifier
from smoothsk.validation import NON_NEGATIVE

__all__ = ["StabilityClassifier", "stability_loss"]


def stability_loss(
    module: torch.nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    sigma: float,
    *,
    stability_weight: float = 2.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """``CE(f(x), y) + λ · mean_b H(F(x_b), F(x_b + δ_b))``, as in the published code.

    ``H(p, q) = −Σ_c p_c log q_c`` is the cross-entropy of the noisy prediction
    against the clean softmax ``F(x)`` as a soft target that is *not* detached, so the
    term equals ``KL(F(x) ‖ F(x + δ)) + H(F(x))`` and its gradient also flows through
    the clean prediction (``_cross_entropy`` in the SmoothMix authors' ``train_stab.py``,
    the code behind the published Stability baseline).  Clean and noisy inputs go
    through the network in two separate forward passes, as there: with BatchNorm in
    training mode each pass normalises with its own batch statistics.

    Parameters
    ----------
    module : torch.nn.Module
        The base network (logits), in training mode.
    X : torch.Tensor of shape (B, ...)
        A training batch.
    y : torch.Tensor of shape (B,)
        Its class indices.
    sigma : float > 0
        The noise level.
    stability_weight : float
        λ, the weight of the stability term.
    noise : torch.Tensor or None
        A fixed draw instead of a fresh one (for tests).

    Returns
    -------
    torch.Tensor
        The scalar loss.
    """
    noisy = X + (sigma * torch.randn_like(X) if noise is None else noise)
    clean_logits = module(X)
    noisy_logits = module(noisy)
    soft_target = F.softmax(clean_logits, dim=1)
    stability = -(soft_target * F.log_softmax(noisy_logits, dim=1)).sum(dim=1).mean()
    return F.cross_entropy(clean_logits, y) + stability_weight * stability


class StabilityClassifier(SmoothedClassifier):
    """Smoothed classifier trained with stability training (Li et al. 2019).

    Parameters
    ----------
    stability_weight : float, default=2.0
        λ of the soft cross-entropy between the clean and the noisy prediction (the
        published MNIST-family value).
    **kwargs
        Everything :class:`~smoothsk.base.SmoothedClassifier` takes.
    """

    method_name = "stability"
    display_name = "Stability"

    _parameter_constraints: dict = {
        **SmoothedClassifier._parameter_constraints,
        "stability_weight": NON_NEGATIVE,
    }

    def __init__(self, module=None, *, stability_weight: float = 2.0, **kwargs):
        super().__init__(module, **kwargs)
        self.stability_weight = stability_weight

    def training_loss(self, X, y):
        return stability_loss(self.module_, X, y, self.noise_level,
                              stability_weight=self.stability_weight)
