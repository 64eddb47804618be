"""Stability training (Li, Chen, Wang & Carin, NeurIPS 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from smoothsk.base import SmoothedClassifier

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
    """``CE(f(x), y) + λ·KL(F(x) ‖ F(x + δ))``, batch means; clean and noisy in one pass."""
    noisy = X + (sigma * torch.randn_like(X) if noise is None else noise)
    logits = module(torch.cat([X, noisy]))
    clean_logits, noisy_logits = logits[: len(X)], logits[len(X):]
    clean_log_probs = F.log_softmax(clean_logits, dim=1)
    kl = F.kl_div(F.log_softmax(noisy_logits, dim=1), clean_log_probs, reduction="batchmean",
                  log_target=True)
    return F.cross_entropy(clean_logits, y) + stability_weight * kl


class StabilityClassifier(SmoothedClassifier):
    """Smoothed classifier trained with stability training (Li et al. 2019).

    Parameters
    ----------
    stability_weight : float, default=2.0
        λ of the KL term between the clean and the noisy prediction.
    **kwargs
        Everything :class:`~smoothsk.base.SmoothedClassifier` takes.
    """

    def __init__(self, module=None, *, stability_weight: float = 2.0, **kwargs):
        super().__init__(module, **kwargs)
        self.stability_weight = stability_weight

    def training_loss(self, X, y):
        return stability_loss(self.module_, X, y, self.noise_level_,
                              stability_weight=self.stability_weight)
