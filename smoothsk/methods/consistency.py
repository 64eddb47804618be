"""Consistency regularization (Jeong & Shin, NeurIPS 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from smoothsk.base import SmoothedClassifier
from smoothsk.methods.attacks import draw_noises, noisy_batch
from smoothsk.validation import NON_NEGATIVE, POSITIVE_INT

__all__ = ["ConsistencyClassifier", "consistency_loss"]


def consistency_loss(
    module: torch.nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    sigma: float,
    *,
    num_noise: int = 2,
    consistency_weight: float = 10.0,
    entropy_weight: float = 0.5,
    noises: torch.Tensor | None = None,
) -> torch.Tensor:
    """``mean_i CE(f(x+δ_i), y) + λ·mean_i KL(F̂ ‖ F(x+δ_i)) + η·H(F̂)``, ``F̂ = mean_i F(x+δ_i)``.

    The m noisy copies run as one batch; KL and entropy are averaged over the batch.

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
    num_noise : int
        m, noisy copies per example.
    consistency_weight : float
        λ, the weight of the KL term.
    entropy_weight : float
        η, the weight of the entropy term.
    noises : torch.Tensor or None
        Fixed draws instead of fresh ones (for tests).

    Returns
    -------
    torch.Tensor
        The scalar loss.
    """
    if noises is None:
        noises = draw_noises(X, sigma, num_noise)
    m = len(noises)
    logits = module(noisy_batch(X, noises))
    cross_entropy = F.cross_entropy(logits, y.repeat(m))
    log_probs = F.log_softmax(logits, dim=1).view(m, len(X), -1)
    mean_probs = log_probs.exp().mean(dim=0)
    log_mean = torch.log(mean_probs.clamp_min(1e-20))
    kl = (mean_probs.unsqueeze(0) * (log_mean.unsqueeze(0) - log_probs)).sum(dim=2).mean()
    entropy = -(mean_probs * log_mean).sum(dim=1).mean()
    return cross_entropy + consistency_weight * kl + entropy_weight * entropy


class ConsistencyClassifier(SmoothedClassifier):
    """Smoothed classifier trained with consistency regularization (Jeong & Shin 2020).

    Parameters
    ----------
    num_noise : int, default=2
        m, noisy copies per example.
    consistency_weight : float, default=10.0
        λ of the KL term (the paper uses 5, 10 or 20).
    entropy_weight : float, default=0.5
        η of the entropy term.
    **kwargs
        Everything :class:`~smoothsk.base.SmoothedClassifier` takes.
    """

    method_name = "consistency"
    display_name = "Consistency"

    _parameter_constraints: dict = {
        **SmoothedClassifier._parameter_constraints,
        "num_noise": POSITIVE_INT,
        "consistency_weight": NON_NEGATIVE,
        "entropy_weight": NON_NEGATIVE,
    }

    def __init__(self, module=None, *, num_noise: int = 2, consistency_weight: float = 10.0,
                 entropy_weight: float = 0.5, **kwargs):
        super().__init__(module, **kwargs)
        self.num_noise = num_noise
        self.consistency_weight = consistency_weight
        self.entropy_weight = entropy_weight

    def training_loss(self, X, y):
        return consistency_loss(
            self.module_, X, y, self.noise_level, num_noise=self.num_noise,
            consistency_weight=self.consistency_weight, entropy_weight=self.entropy_weight,
        )
