"""l2 PGD against the smoothed *soft* classifier (Salman et al. 2019; Jeong et al. 2021).

With fixed noise draws ``δ_1..δ_m`` the attack ascends

    J(x̃) = −log( (1/m) Σ_i softmax(f(x̃ + δ_i))_y ),

the cross-entropy of the Monte Carlo soft smoothed classifier, by per-example
l2-normalised gradient steps.  SmoothMix, SmoothAdv and the empirical robustness
evaluation share it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["SmoothedAttackResult", "smoothed_attack_objective", "smoothed_pgd_attack"]


def draw_noises(x: torch.Tensor, sigma: float, num: int) -> torch.Tensor:
    """``(num, B, ...)`` draws of ``N(0, σ² I)`` on ``x``'s device, shared by a loss's terms."""
    return sigma * torch.randn((num, *x.shape), device=x.device, dtype=x.dtype)


def noisy_batch(x: torch.Tensor, noises: torch.Tensor) -> torch.Tensor:
    """``(m·B, ...)``: the m noisy copies of the batch, noise draw major."""
    return (x.unsqueeze(0) + noises).flatten(0, 1)


def smoothed_soft_prediction(module, X: torch.Tensor, noises: torch.Tensor) -> torch.Tensor:
    """``(1/m) Σ_i softmax(f(x + δ_i))`` with the m draws in one forward pass; shape (B, C)."""
    logits = module(noisy_batch(X, noises))
    return F.softmax(logits, dim=1).view(len(noises), len(X), -1).mean(dim=0)


def smoothed_attack_objective(module, X, y, noises) -> torch.Tensor:
    """Per-example ``J(x̃) = −log((1/m) Σ_i F_y(x̃ + δ_i))``, shape (B,).

    Parameters
    ----------
    module : torch.nn.Module
        Base network returning logits; ``F`` is its softmax.
    X : Tensor
        The points ``x̃`` attacked, ``(B, ...)``.
    y : Tensor
        Class indices ``(B,)``.
    noises : Tensor
        ``(m, B, ...)`` noise draws ``δ_i`` (already scaled by σ).
    """
    soft = smoothed_soft_prediction(module, X, noises)
    return -torch.log(soft.gather(1, y.view(-1, 1)).squeeze(1).clamp_min(1e-20))


def project_l2(x: torch.Tensor, center: torch.Tensor, radius: float | None) -> torch.Tensor:
    """Project each ``x_b`` onto the l2 ball of ``radius`` around ``center_b``.

    ``torch.renorm`` as in the authors' code (SmoothMix's ``_project``, SmoothAdv's
    ``delta.renorm_``): rows longer than ``radius`` are scaled by ``radius / (‖·‖ + 1e-7)``.
    """
    if radius is None:
        return x
    return center + (x - center).renorm(p=2, dim=0, maxnorm=radius)


def clip_to_range(x: torch.Tensor, clip_range) -> torch.Tensor:
    return x if clip_range is None else x.clamp(*clip_range)


@contextlib.contextmanager
def frozen(module: torch.nn.Module):
    """Eval mode and no parameter gradients inside; both restored on exit."""
    was_training = module.training
    flags = [p.requires_grad for p in module.parameters()]
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)
        module.train(was_training)


@dataclass
class SmoothedAttackResult:
    """What :func:`smoothed_pgd_attack` returns.

    Attributes
    ----------
    adversarial : Tensor
        x̃ᵀ, the iterate after all ``num_steps`` steps.
    intermediate : Tensor
        x̃ᵏ, the iterate after ``return_step`` steps.
    """

    adversarial: torch.Tensor
    intermediate: torch.Tensor


def smoothed_pgd_attack(
    module: torch.nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    noises: torch.Tensor,
    *,
    num_steps: int,
    step_size: float,
    epsilon: float | None = None,
    clip_range: tuple[float, float] | None = (0.0, 1.0),
    random_start: bool = False,
    return_step: int = 0,
    clip_before_projection: bool = False,
) -> SmoothedAttackResult:
    """l2 PGD ascent of the smoothed soft classifier's cross-entropy ``J``.

    ``x̃⁰ = x`` (or a uniform point of the ε-ball with ``random_start``), then
    ``x̃ᵗ⁺¹ = clip(Π_ε(x̃ᵗ + step_size · ∇J / ‖∇J‖₂))`` for ``num_steps`` steps
    (SmoothMix's order; ``clip_before_projection`` gives SmoothAdv's
    ``Π_ε(clip(·))``), with the same ``noises`` at every step.  The network is frozen
    and in eval mode during the attack; its mode and ``requires_grad`` flags are
    restored after.

    Parameters
    ----------
    module : torch.nn.Module
        Base network returning logits.
    X, y : Tensor
        Clean inputs ``(B, ...)`` and class indices ``(B,)``.
    noises : Tensor
        ``(m, B, ...)`` noise draws ``δ_i`` (already scaled by σ).
    num_steps : int >= 0
        T.
    step_size : float > 0
        l2 length of each step (SmoothMix's ``alpha`` / SmoothAdv's ``2ε/T``).
    epsilon : float or None
        Radius of the l2 ball around ``x`` to project onto; ``None``: no ball
        (SmoothMix's default; the only bound is then ``‖x̃ᵀ − x‖ ≤ T·step_size``).
    clip_range : (low, high) or None
        Valid input range (default [0, 1]); ``None`` disables clipping.
    random_start : bool
        Start from a uniformly random point of the ε-ball (needs ``epsilon``).
    return_step : int in [0, num_steps]
        ``intermediate`` is the iterate after this many steps (SmoothMix's one-step
        adversary uses 1).
    clip_before_projection : bool
        Clip to ``clip_range`` first and then project onto the ε-ball, as SmoothAdv's
        ``PGD_L2`` does (``delta.clamp_`` then ``delta.renorm_``); the iterate then
        always lies in the ball but may leave the valid range by the projection's
        shrink towards ``x`` (never, for ``x`` inside the range, since the ball's
        centre is valid and the range is convex).  Default: SmoothMix's
        project-then-clip.
    """
    if num_steps < 0 or not 0 <= return_step <= num_steps:
        raise ValueError(
            f"Need num_steps >= 0 and 0 <= return_step <= num_steps; got num_steps={num_steps}, "
            f"return_step={return_step}."
        )
    if step_size <= 0:
        raise ValueError(f"step_size must be > 0; got {step_size!r}.")
    if random_start and epsilon is None:
        raise ValueError("random_start=True needs an epsilon (the ball to start in).")
    if noises.shape[1:] != X.shape:
        raise ValueError(f"noises must have shape (m, *X.shape); got {tuple(noises.shape)}.")
    X = X.detach()
    adv = X.clone()
    if random_start:
        direction = torch.randn_like(X).flatten(1)
        direction /= direction.norm(dim=1, keepdim=True) + 1e-12
        radius = epsilon * torch.rand(len(X), 1, device=X.device) ** (1.0 / direction.shape[1])
        adv = clip_to_range(X + (direction * radius).view_as(X), clip_range)
    intermediate = adv
    with frozen(module), torch.enable_grad():
        for step in range(num_steps):
            adv.requires_grad_(True)
            objective = smoothed_attack_objective(module, adv, y, noises).sum()
            (grad,) = torch.autograd.grad(objective, [adv])
            norms = grad.flatten(1).norm(dim=1).view(-1, *([1] * (X.ndim - 1)))
            adv = adv.detach() + step_size * grad / (norms + 1e-12)
            if clip_before_projection:
                adv = project_l2(clip_to_range(adv, clip_range), X, epsilon).detach()
            else:
                adv = clip_to_range(project_l2(adv, X, epsilon), clip_range).detach()
            if step + 1 == return_step:
                intermediate = adv
    return SmoothedAttackResult(adversarial=adv, intermediate=intermediate)
