"""MACER: attack-free robust training by maximizing the certified radius (Zhai et al. 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from smoothsk.base import SmoothedClassifier
from smoothsk.methods.attacks import draw_noises, noisy_batch
from smoothsk.validation import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT

__all__ = ["MACERClassifier", "macer_loss"]

_NORMAL = torch.distributions.Normal(0.0, 1.0)


def macer_loss(
    module: torch.nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    sigma: float,
    *,
    num_noise: int = 16,
    inverse_temperature: float = 16.0,
    margin: float = 8.0,
    robustness_weight: float = 12.0,
    noises: torch.Tensor | None = None,
    return_parts: bool = False,
):
    """MACER's objective, summed over the batch and divided by its size.

    ``−log ĝ_y(x)`` with ``ĝ = mean_k softmax(f(x + δ_k))`` (the smoothed soft
    classifier), plus ``λ·(σ/2)·(γ − (Φ⁻¹(p̃₁) − Φ⁻¹(p̃₂)))`` where ``p̃₁ ≥ p̃₂`` are the top
    two entries of ``mean_k softmax(β·f(x + δ_k))``, counted only for examples whose top
    class is ``y`` and whose gap is finite and at most γ (inside the margin).  Infinite
    or NaN gaps are excluded before the sum, so they never propagate.

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
        k, noise draws per example.
    inverse_temperature : float
        β of the tempered softmax.
    margin : float
        γ, the hinge's margin on the gap.
    robustness_weight : float
        λ, the weight of the robustness term.
    noises : torch.Tensor or None
        Fixed draws instead of fresh ones (for tests).
    return_parts : bool
        Also return the parts (for tests).

    Returns
    -------
    torch.Tensor, or (torch.Tensor, dict)
        The scalar loss; with ``return_parts`` also a dict of the per-example ``gap``, the
        ``active`` mask, the ``classification`` term and the ``hinge``.
    """
    if noises is None:
        noises = draw_noises(X, sigma, num_noise)
    k = len(noises)
    logits = module(noisy_batch(X, noises)).view(k, len(X), -1)
    smoothed = F.softmax(logits, dim=2).mean(dim=0)
    classification = F.nll_loss(torch.log(smoothed + 1e-10), y, reduction="sum")

    tempered = F.softmax(inverse_temperature * logits, dim=2).mean(dim=0)
    top2, top2_index = tempered.topk(2, dim=1)
    with torch.no_grad():  # select first: Φ⁻¹(1) = inf would turn masked gradients into NaN
        gap = _NORMAL.icdf(top2[:, 0]) - _NORMAL.icdf(top2[:, 1])
        active = (top2_index[:, 0] == y) & torch.isfinite(gap) & (gap <= margin)
    kept = top2[active]
    hinge = (margin - (_NORMAL.icdf(kept[:, 0]) - _NORMAL.icdf(kept[:, 1]))).sum() * sigma / 2
    loss = (classification + robustness_weight * hinge) / len(X)
    if return_parts:
        return loss, dict(gap=gap, active=active, classification=classification, hinge=hinge)
    return loss


class MACERClassifier(SmoothedClassifier):
    """Smoothed classifier trained with MACER (Zhai et al., ICLR 2020).

    Parameters
    ----------
    num_noise : int, default=16
        k, noise draws per example.
    inverse_temperature : float, default=16.0
        β of the tempered softmax in the robustness term.
    margin : float, default=8.0
        γ of the hinge.
    robustness_weight : float, default=12.0
        λ (the MNIST setting is 16 / 16 / 6 for σ = 0.25 / 0.5 / 1.0).
    deferred : int or None, default=None
        Switch the robustness term on late: λ = 0 while the zero-based epoch index is
        ``<= deferred``, then ``robustness_weight``.  The authors' ``--deferred`` flag of
        ``train_macer.py`` (``if args.deferred and epoch <= args.lr_step_size: lbd = 0``),
        used with ``lr_step_size = 30`` for every MNIST-family row of the SmoothMix
        tables, is ``deferred=30``: the hinge starts after the first learning-rate step.
        None: from the first epoch.
    **kwargs
        Everything :class:`~smoothsk.base.SmoothedClassifier` takes.
    """

    method_name = "macer"
    display_name = "MACER"

    _parameter_constraints: dict = {
        **SmoothedClassifier._parameter_constraints,
        "num_noise": POSITIVE_INT,
        "inverse_temperature": POSITIVE,
        "margin": NON_NEGATIVE,
        "robustness_weight": NON_NEGATIVE,
        "deferred": [*NON_NEGATIVE_INT, None],
    }

    def __init__(self, module=None, *, num_noise: int = 16, inverse_temperature: float = 16.0,
                 margin: float = 8.0, robustness_weight: float = 12.0,
                 deferred: int | None = None, **kwargs):
        super().__init__(module, **kwargs)
        self.num_noise = num_noise
        self.inverse_temperature = inverse_temperature
        self.margin = margin
        self.robustness_weight = robustness_weight
        self.deferred = deferred

    @property
    def current_robustness_weight_(self) -> float:
        """λ of the current epoch: 0 while deferred, else ``robustness_weight``."""
        if self.deferred is not None and self.epoch_index <= self.deferred:
            return 0.0
        return self.robustness_weight

    def training_loss(self, X, y):
        return macer_loss(
            self.module_, X, y, self.noise_level, num_noise=self.num_noise,
            inverse_temperature=self.inverse_temperature, margin=self.margin,
            robustness_weight=self.current_robustness_weight_,
        )
