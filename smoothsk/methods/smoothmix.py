"""SmoothMix (Jeong, Park, Kim, Lee, Kim & Shin, NeurIPS 2021).

"SmoothMix: Training Confidence-calibrated Smoothed Classifiers for Certified
Robustness".  Each step attacks the smoothed soft classifier, mixes every input
with its adversarial point and pulls the prediction there towards uniform.
"""

from __future__ import annotations

from numbers import Integral

import torch
import torch.nn.functional as F

from smoothsk.base import SmoothedClassifier
from smoothsk.methods.attacks import (
    clip_to_range,
    draw_noises,
    noisy_batch,
    project_l2,
    smoothed_pgd_attack,
)
from smoothsk.validation import (
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    Options,
    StrOptions,
    resolve_clip_range,
)

__all__ = ["SmoothMixClassifier", "mixup_towards_uniform", "smoothmix_loss", "warmup_factor"]


def warmup_factor(epoch: int, warmup: int) -> float:
    """``w(epoch) = min(1, (epoch + 1) / warmup)`` for a zero-based epoch (1 if ``warmup=0``).

    Parameters
    ----------
    epoch : int >= 0
        The zero-based training epoch.
    warmup : int >= 0
        Epochs of linear warm-up (0: none).

    Returns
    -------
    float
        The factor in (0, 1].
    """
    return 1.0 if warmup <= 0 else min(1.0, (epoch + 1) / warmup)


def mixup_towards_uniform(x_clean, x_adv, soft_target, lam):
    """SmoothMix's mixup: ``x_mix = (1−λ) x + λ x̃``, ``y_mix = (1−λ) F̂(x) + λ·(1/C)·1``.

    ``lam`` holds one λ per example (drawn from U[0, 1/2] in training).

    Parameters
    ----------
    x_clean, x_adv : torch.Tensor of shape (B, ...)
        The inputs and their adversarial counterparts.
    soft_target : torch.Tensor of shape (B, C)
        ``F̂(x)``, the smoothed soft classifier's output at ``x_clean``.
    lam : torch.Tensor of shape (B,)
        λ per example.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        ``x_mix`` and ``y_mix``.
    """
    shape = (-1,) + (1,) * (x_clean.ndim - 1)
    mixed_x = (1 - lam).view(shape) * x_clean + lam.view(shape) * x_adv
    uniform = torch.full_like(soft_target, 1.0 / soft_target.shape[1])
    mixed_y = (1 - lam).view(-1, 1) * soft_target + lam.view(-1, 1) * uniform
    return mixed_x, mixed_y


def smoothmix_loss(
    module: torch.nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    sigma: float,
    *,
    num_noise: int = 1,
    num_steps: int = 8,
    step_size: float = 1.0,
    eta: float = 1.0,
    mix_step: int = 0,
    mix_radius: float | None = None,
    attack_radius: float | None = None,
    warmup: float = 1.0,
    clip_range: tuple[float, float] | None = (0.0, 1.0),
    noises: torch.Tensor | None = None,
    lam: torch.Tensor | None = None,
    return_parts: bool = False,
):
    """The SmoothMix objective for one batch.

    With m draws ``δ_1..δ_m ~ N(0, σ² I)`` per example, shared by every term:

    1. ``x̃ᵀ`` = T steps of :func:`~smoothsk.methods.attacks.smoothed_pgd_attack` (step
       ``step_size``, ball ``attack_radius``, network frozen); with ``mix_step = 1``
       the clean point ``x`` below is replaced by ``x̃¹`` projected to the l2 ball of
       radius ``mix_radius · warmup`` (default ``mix_radius = step_size · mix_step``);
    2. ``L_CE = mean_{i,b} CE(f(x_b + δ_i), y_b)``;
    3. ``F̂(x) = (1/m) Σ_i softmax(f(x + δ_i))`` (not detached, as in the authors' code);
    4. λ ~ U[0, 1/2] per example, ``(x_mix, y_mix)`` = :func:`mixup_towards_uniform`;
    5. ``L_mix = mean_{i,b} 1[argmax F̂(x_b) = y_b] · KL(y_mix,b ‖ softmax(f(x_mix,b + δ_i)))``;
    6. ``L = L_CE + η · warmup · L_mix``.

    The m noisy copies go through the network as one batch; the mixed batch is a
    second forward pass.  Cost: ``m·(T + 2)`` forward-backward passes of a batch.

    Parameters
    ----------
    module : torch.nn.Module
        The base network (returns logits), trained by the loss.
    X, y : Tensor
        The batch: inputs ``(B, ...)`` and class indices ``(B,)``.
    sigma : float
        The noise level σ.
    num_noise, num_steps, step_size, eta, mix_step, mix_radius, attack_radius, clip_range
        As the parameters of the same names of :class:`~smoothsk.SmoothMixClassifier`
        (``clip_range`` resolved to a pair or None).
    warmup : float
        The warm-up factor ``w(epoch)`` (see :func:`warmup_factor`), scaling η and the
        one-step radius.
    noises, lam : Tensor, optional
        Fixed draws ``(m, B, ...)`` (scaled by σ) and λ ``(B,)``, for tests.
    return_parts : bool
        Also return a dict of the intermediate terms.
    """
    if mix_step not in (0, 1):
        raise ValueError(f"mix_step must be 0 or 1; got {mix_step!r}.")
    if noises is None:
        noises = draw_noises(X, sigma, num_noise)
    m = len(noises)
    attack = smoothed_pgd_attack(
        module, X, y, noises, num_steps=num_steps, step_size=step_size, epsilon=attack_radius,
        clip_range=clip_range, return_step=min(mix_step, num_steps),
    )
    clean = X
    if mix_step == 1:
        radius = (step_size * mix_step if mix_radius is None else mix_radius) * warmup
        clean = clip_to_range(project_l2(attack.intermediate, X, radius), clip_range)

    logits = module(noisy_batch(clean, noises))
    cross_entropy = F.cross_entropy(logits, y.repeat(m))
    soft_target = F.softmax(logits, dim=1).view(m, len(X), -1).mean(dim=0)

    if lam is None:
        lam = torch.rand(len(X), device=X.device, dtype=X.dtype) / 2
    mixed_x, mixed_y = mixup_towards_uniform(clean, attack.adversarial, soft_target, lam)
    log_probs_mixed = F.log_softmax(module(noisy_batch(mixed_x, noises)), dim=1)
    kl = F.kl_div(log_probs_mixed, mixed_y.repeat(m, 1), reduction="none").sum(dim=1)
    correct = (soft_target.argmax(dim=1) == y).to(kl.dtype)
    mixup = (correct.repeat(m) * kl).mean()
    loss = cross_entropy + eta * warmup * mixup
    if not return_parts:
        return loss
    parts = dict(
        cross_entropy=cross_entropy, mixup=mixup, clean=clean, adversarial=attack.adversarial,
        soft_target=soft_target, mixed_x=mixed_x, mixed_y=mixed_y, correct=correct, lam=lam,
    )
    return loss, parts


class SmoothMixClassifier(SmoothedClassifier):
    """Smoothed classifier trained with SmoothMix (Jeong et al., NeurIPS 2021).

    Parameters
    ----------
    num_noise : int, default=1
        m, noise draws per example shared by the attack and both loss terms.
    num_steps : int, default=8
        T, attack steps on the smoothed soft classifier.
    step_size : float, default=1.0
        l2 length of each attack step (the authors' ``--alpha``; not the
        certification ``alpha``).
    eta : float, default=1.0
        η, weight of the mixup term.
    mix_step : {0, 1}, default=0
        1 uses the one-step adversary x̃¹ as the clean side.
    mix_radius : float or None, default=None
        ``maxnorm_s``: radius of the one-step point; None means ``step_size · mix_step``.
        Scaled by the warm-up factor.
    attack_radius : float or None, default=None
        ``maxnorm``: l2 ball of the attack; None means no ball.
    warmup : int, default=5
        Epochs over which η and the one-step radius ramp up as ``min(1, (epoch+1)/warmup)``.
    clip_range : (float, float), None or "input_range", default="input_range"
        Range the attack's points are clipped to: ``"input_range"`` follows the
        estimator's ``input_range`` (so inputs declared in [0, 255] are clipped there, and
        an undeclared range clips nothing); None clips nothing.
    **kwargs
        Everything :class:`~smoothsk.base.SmoothedClassifier` takes (σ, n0, n, alpha, ...).

    Notes
    -----
    Defaults are those of the authors' ``train.py`` except ``warmup`` (5 here, 10 there: it
    must fit inside the default 20 epochs).  Published recipes (:mod:`smoothsk.recipes`)
    (SGD, momentum 0.9, weight decay 1e-4):

    - MNIST, LeNet: lr 0.01 (×0.1 every 30 epochs), 90 epochs, batch 256, m = 4,
      ``step_size = 1.0``; σ = 0.25: T = 2, η = 5 (or T = 3, η = 1); σ = 0.5: T = 4,
      η = 5; σ = 1.0: T = 8, η = 5.
    - CIFAR-10, ResNet-110: lr 0.1 (×0.1 every 50), 150 epochs, batch 256, m = 2,
      T = 4, η = 5, ``step_size`` 0.5 / 1.0 / 2.0 for σ = 0.25 / 0.5 / 1.0.

    Batch semantics: the authors split each loader batch of B examples into m chunks
    of B/m and take one optimiser step per chunk, each on B/m examples × m draws.
    Here each optimiser step sees ``batch_size`` examples × m draws; to match the
    authors' updates exactly set ``batch_size = B // m`` (e.g. 64 for B = 256, m = 4).
    """

    method_name = "smoothmix"
    display_name = "SmoothMix"

    _parameter_constraints: dict = {
        **SmoothedClassifier._parameter_constraints,
        "num_noise": POSITIVE_INT,
        "num_steps": NON_NEGATIVE_INT,
        "step_size": POSITIVE,
        "eta": NON_NEGATIVE,
        "mix_step": [Options(Integral, {0, 1})],
        "mix_radius": [*NON_NEGATIVE, None],
        "attack_radius": [*NON_NEGATIVE, None],
        "warmup": NON_NEGATIVE_INT,
        "clip_range": [tuple, None, StrOptions({"input_range"})],
    }

    def __init__(
        self,
        module=None,
        *,
        num_noise: int = 1,
        num_steps: int = 8,
        step_size: float = 1.0,
        eta: float = 1.0,
        mix_step: int = 0,
        mix_radius: float | None = None,
        attack_radius: float | None = None,
        warmup: int = 5,
        clip_range: tuple[float, float] | str | None = "input_range",
        **kwargs,
    ):
        super().__init__(module, **kwargs)
        self.num_noise = num_noise
        self.num_steps = num_steps
        self.step_size = step_size
        self.eta = eta
        self.mix_step = mix_step
        self.mix_radius = mix_radius
        self.attack_radius = attack_radius
        self.warmup = warmup
        self.clip_range = clip_range

    def training_loss(self, X, y):
        return smoothmix_loss(
            self.module_, X, y, self.noise_level,
            num_noise=self.num_noise, num_steps=self.num_steps, step_size=self.step_size,
            eta=self.eta, mix_step=self.mix_step, mix_radius=self.mix_radius,
            attack_radius=self.attack_radius,
            clip_range=resolve_clip_range(self.clip_range, self.input_range),
            warmup=warmup_factor(self.epoch_index, self.warmup),
        )
