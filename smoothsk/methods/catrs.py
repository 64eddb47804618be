"""CAT-RS (Jeong, Kim & Shin, AAAI 2023).

"Confidence-aware Training of Smoothed Classifiers for Certified Robustness".  Each
example's objective depends on how well the current model already classifies it under
noise: a Binomial draw from its accuracy over the m noisy copies decides how many of
them (the easiest ones) enter the cross-entropy, and only examples whose every copy is
accepted also pay a worst-case KL term against a pretrained Gaussian model's smoothed
prediction, over noise vectors attacked inside the σ-sphere's shell.

Transcribed from the authors' ``code/train_catrs.py`` (alinlab/smoothing-catrs).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import clone

from smoothsk.base import SmoothedClassifier, is_fitted_estimator, unwrap_frozen
from smoothsk.certification import sampling
from smoothsk.methods.attacks import draw_noises, frozen, noisy_batch
from smoothsk.validation import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT

__all__ = ["CATRSClassifier", "catrs_loss", "kl_pgd_noise_attack", "smoothed_targets"]


def _per_row(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(len(x), -1)


def kl_pgd_noise_attack(
    module: torch.nn.Module,
    X: torch.Tensor,
    target_prob: torch.Tensor,
    noises: torch.Tensor,
    *,
    num_steps: int,
    epsilon: float,
) -> torch.Tensor:
    """CAT-RS's attack on the noise vectors (the authors' ``KL_PGD``).

    With ``p̂`` the target distribution, each of the m noisy copies ``x + δ_i`` ascends
    ``Σ_i KL(p̂ ‖ softmax f(x + δ_i)) / m`` by ``num_steps`` l2-normalised steps of length
    ``2ε / num_steps``; after each step the change ``δ_i − δ_i⁰`` is projected onto the
    l2 ball of radius ε (``torch.renorm``) and ``δ_i`` is re-standardised towards its
    Gaussian start,

        ``δ ← μ⁰ + rms(δ⁰) · (δ − μ) / rms(δ)``  (per noisy copy, over its pixels),

    so that the attacked noise stays a plausible Gaussian draw: its mean is the start's
    and its spread at most the start's (the authors divide the centred noise by its
    uncentred root mean square; transcribed as is).  The network runs frozen
    (eval mode, no parameter gradients).

    Parameters
    ----------
    module : torch.nn.Module
        Base network returning logits.
    X : Tensor
        Clean inputs ``(B, ...)``.
    target_prob : Tensor
        ``p̂``, the target distribution per input, ``(B, n_classes)``.
    noises : Tensor
        ``(m, B, ...)`` starting noise draws ``δ_i⁰`` (already scaled by σ).
    num_steps : int
        Ascent steps.
    epsilon : float
        Radius of the l2 ball the change of each noise vector stays in.

    Returns
    -------
    Tensor
        The attacked noises, shape of ``noises``.
    """
    m = len(noises)
    inputs = X.unsqueeze(0).expand_as(noises).flatten(0, 1)  # the authors' repeat(m, ...)
    start = noises.flatten(0, 1).detach()
    mu0 = _per_row(start).mean(1).view(-1, *[1] * (start.ndim - 1))
    rms0 = _per_row(start).pow(2).mean(1).sqrt().view_as(mu0)
    step = epsilon / num_steps * 2
    noise = start
    with frozen(module):
        for _ in range(num_steps):
            noise = noise.detach().requires_grad_()
            log_probs = F.log_softmax(module(inputs + noise), dim=1)
            kl = F.kl_div(log_probs, target_prob.repeat(m, 1), reduction="none").sum(1)
            grad, = torch.autograd.grad(kl.sum() / m, [noise])
            grad = grad / (_per_row(grad).norm(dim=1).view_as(mu0) + 1e-8)
            noise = noise + step * grad
            noise = start + (noise - start).renorm(p=2, dim=0, maxnorm=epsilon)
            mu = _per_row(noise).mean(1).view_as(mu0)
            rms = _per_row(noise).pow(2).mean(1).sqrt().view_as(mu0)
            noise = mu0 + (noise - mu) / rms * rms0
    return noise.detach().view_as(noises)


def catrs_loss(
    module: torch.nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    target_prob: torch.Tensor,
    sigma: float,
    *,
    num_noise: int = 4,
    num_steps: int = 4,
    epsilon: float = 1.0,
    kl_weight: float = 1.0,
    confidence_mask: bool = False,
    noises: torch.Tensor | None = None,
    accept: torch.Tensor | None = None,
    return_parts: bool = False,
):
    """The CAT-RS objective for one batch.

    With m draws ``δ_1..δ_m ~ N(0, σ² I)`` per example and ``p̂(x)`` the pretrained
    smoothed prediction (``target_prob``):

    1. ``ℓ_i = CE(f(x + δ_i), y)`` (network in training mode), sorted so that
       ``ℓ_(1) ≤ … ≤ ℓ_(m)``;
    2. ``w = (1/m) Σ_i 1[argmax f(x + δ_i) = y]`` (or ``p̂_y(x)`` with
       ``confidence_mask``), and ``K ~ Binomial(m, w)`` clamped to ``K ≥ 1``;
    3. ``L_low = (1/m) Σ_{k ≤ K} ℓ_(k)`` (the K easiest copies, divided by m);
    4. ``δ*`` = :func:`kl_pgd_noise_attack` of the same draws;
    5. ``L_high = max_i KL(p̂(x) ‖ softmax f(x + δ*_i))``, counted only when ``K = m``;
    6. ``L = mean_batch (L_low + λ · 1[K = m] · L_high)``.

    Cost: ``m · (num_steps + 2)`` forward passes and ``m · (num_steps + 1)`` backward
    passes of a batch.

    Parameters
    ----------
    module : torch.nn.Module
        The base network (returns logits), trained by the loss.
    X, y : Tensor
        The batch: inputs ``(B, ...)`` and class indices ``(B,)``.
    sigma : float
        The noise level σ.
    num_noise, num_steps, epsilon, kl_weight, confidence_mask
        As the parameters of the same names of :class:`~smoothsk.CATRSClassifier`.
    target_prob : Tensor (B, C)
        ``p̂(x)``, rows summing to 1.
    noises : Tensor, optional
        Fixed draws ``(m, B, ...)``, already scaled by σ (for tests).
    accept : Tensor of int, optional
        Fixed ``K`` before clamping, shape ``(B,)`` (for tests); drawn from the Binomial
        with the global torch generator otherwise.
    return_parts : bool
        Also return a dict of the intermediate terms.
    """
    if noises is None:
        noises = draw_noises(X, sigma, num_noise)
    m = len(noises)
    logits = module(noisy_batch(X, noises)).view(m, len(X), -1)
    cross_entropy = F.cross_entropy(logits.flatten(0, 1), y.repeat(m), reduction="none")
    cross_entropy = cross_entropy.view(m, len(X)).t().sort(dim=1).values  # (B, m), ascending
    if confidence_mask:
        confidence = target_prob.gather(1, y.view(-1, 1)).squeeze(1)
    else:
        confidence = (logits.argmax(dim=2) == y).to(target_prob.dtype).mean(dim=0)
    if accept is None:
        accept = torch.distributions.Binomial(m, probs=confidence.detach().float()).sample()
    accept = accept.long().clamp(min=1)
    fully_accepted = accept == m
    keep = torch.ones(m + 1, m, device=X.device, dtype=cross_entropy.dtype).tril(-1)[accept]
    low = (cross_entropy * keep).mean(dim=1)

    attacked = kl_pgd_noise_attack(module, X, target_prob, noises, num_steps=num_steps,
                                   epsilon=epsilon)
    log_probs = F.log_softmax(module(noisy_batch(X, attacked)), dim=1)
    kl = F.kl_div(log_probs, target_prob.repeat(m, 1), reduction="none").sum(1)
    high = kl.view(m, len(X)).max(dim=0).values
    loss = (low + kl_weight * high * fully_accepted).mean()
    if not return_parts:
        return loss
    parts = dict(low=low, high=high, accept=accept, fully_accepted=fully_accepted,
                 confidence=confidence, attacked=attacked, sorted_cross_entropy=cross_entropy)
    return loss, parts


def smoothed_targets(estimator, X, num: int, *, batch_size: int | None = None,
                     random_state=None) -> np.ndarray:
    """``p̂(x) = counts / num``: a fitted smoothsk estimator's smoothed prediction.

    The authors' ``smooth_prediction.py`` (``confidence_top2``): the empirical
    distribution of ``argmax f(x + δ)`` over ``num`` draws at the estimator's σ and
    precision, one row per input, columns in the estimator's ``classes_`` order.

    Parameters
    ----------
    estimator : SmoothedClassifier
        A fitted smoothsk estimator (CAT-RS's target model).
    X : array or tensor
        Inputs.
    num : int
        Noise draws per input.
    batch_size : int or None, default=None
        Draws per forward pass (None: the estimator's ``certify_batch_size``).
    random_state : int, RandomState or None, default=None
        Seeds the draws (per input, as in :func:`~smoothsk.certify`).

    Returns
    -------
    ndarray of float32, shape (N, n_classes)
        The empirical distribution of the votes.
    """
    counts = sampling.class_counts(
        estimator.module_, X, estimator.noise_level, num,
        batch_size=batch_size or estimator.certify_batch_size, random_state=random_state,
        precision=estimator.precision,
    )
    return (counts / num).astype(np.float32)


class _WithTargets(torch.utils.data.Dataset):
    """Training examples that carry their KL target: ``({"X": x, "target_prob": p}, y)``."""

    def __init__(self, X, y, target_prob: np.ndarray):
        self.X, self.y, self.target_prob = X, y, target_prob

    def __len__(self):
        return len(self.target_prob)

    def __getitem__(self, i):
        if self.y is None:  # a Dataset of (x, class index) pairs
            x, label = self.X[i][0], self.X[i][1]
        else:
            x, label = self.X[i], self.y[i]
        return {"X": torch.as_tensor(x), "target_prob": self.target_prob[i]}, label


class CATRSClassifier(SmoothedClassifier):
    """Smoothed classifier trained with CAT-RS (Jeong, Kim & Shin, AAAI 2023).

    Parameters
    ----------
    num_noise : int, default=4
        m, noisy copies per example (the authors' ``--num-noise-vec``).
    num_steps : int, default=4
        Steps of the KL attack on the noise vectors (``--num-steps``).
    epsilon : float, default=1.0
        l2 radius of the attack on each noise vector (``--epsilon`` / 256: 256 → 1.0).
    kl_weight : float, default=1.0
        λ, weight of the worst-case KL term of fully accepted examples (``--lbd``).
    epsilon_warmup : int or None, default=None
        Zero-based epoch from which the attack radius is 2ε (``--warmup``; None: never,
        as the authors' default 10,000).
    confidence_mask : bool, default=False
        Draw the accepted count from the target's ``p̂_y(x)`` instead of the current
        model's accuracy over its m copies (``--confidence_mask``, the authors' ImageNet
        setting against a cold start).
    target_model : estimator, FrozenEstimator or None, default=None
        The pretrained Gaussian model whose smoothed prediction ``p̂(x)`` on every
        training example is the KL target (the authors' ``smooth_prediction.py`` of a
        Gaussian model trained at σ = 0.25 for every σ).  A fitted smoothsk estimator is
        used as is (its σ and precision); an unfitted one is fitted on the training data
        first; None fits a :class:`~smoothsk.GaussianAugClassifier` at ``target_sigma``
        with this estimator's network and training settings.
    target_sigma : float, default=0.25
        σ of the Gaussian model fitted when ``target_model`` is None.
    target_draws : int, default=10_000
        Noisy draws per training example behind ``p̂(x)`` (the authors' ``--N=10000``).
    target_batch_size : int or None, default=None
        Batch of the Gaussian model fitted when ``target_model`` is None.  None:
        ``batch_size · num_noise``, the loader batch B that CAT-RS's ``batch_size = B // m``
        comes from: 256 with the recipes, as the authors' ``train_cohen.py`` (``--batch``
        default 256) trains that model.
    **kwargs
        Everything :class:`~smoothsk.base.SmoothedClassifier` takes.

    Attributes
    ----------
    target_model_ : estimator
        The fitted target model used.
    target_prob_ : ndarray (n_samples, n_classes)
        ``p̂(x)`` of the training examples of the last ``fit`` / ``partial_fit`` call.

    Notes
    -----
    Published settings (:mod:`smoothsk.recipes`; SGD, momentum 0.9, weight decay 1e-4,
    lr ×0.1 every 50 of 150 epochs): m = 4, 4 steps, ε = 1.0; CIFAR-10 ResNet-110 lr 0.1
    with λ = 0.5 / 1.0 / 2.0 at σ = 0.25 / 0.5 / 1.0; MNIST-family LeNet lr 0.01.

    Batch semantics: the authors split each loader batch of B examples into m chunks of
    B/m and take one optimiser step per chunk, each on B/m examples × m draws; set
    ``batch_size = B // m`` to match (64 for B = 256, m = 4).  ``clone`` keeps a fitted
    ``target_model`` by reference: it is only read.
    """

    method_name = "catrs"
    display_name = "CAT-RS"

    side_model_params = ("target_model",)
    prepared_side_models = ("target_model_",)

    _parameter_constraints: dict = {
        **SmoothedClassifier._parameter_constraints,
        "num_noise": POSITIVE_INT,
        "num_steps": POSITIVE_INT,
        "epsilon": POSITIVE,
        "kl_weight": NON_NEGATIVE,
        "epsilon_warmup": [*NON_NEGATIVE_INT, None],
        "confidence_mask": ["boolean"],
        "target_model": "no_validation",  # checked in fit
        "target_sigma": POSITIVE,
        "target_draws": POSITIVE_INT,
        "target_batch_size": [*POSITIVE_INT, None],
    }

    def __init__(
        self,
        module=None,
        *,
        num_noise: int = 4,
        num_steps: int = 4,
        epsilon: float = 1.0,
        kl_weight: float = 1.0,
        epsilon_warmup: int | None = None,
        confidence_mask: bool = False,
        target_model=None,
        target_sigma: float = 0.25,
        target_draws: int = 10_000,
        target_batch_size: int | None = None,
        **kwargs,
    ):
        super().__init__(module, **kwargs)
        self.num_noise = num_noise
        self.num_steps = num_steps
        self.epsilon = epsilon
        self.kl_weight = kl_weight
        self.epsilon_warmup = epsilon_warmup
        self.confidence_mask = confidence_mask
        self.target_model = target_model
        self.target_sigma = target_sigma
        self.target_draws = target_draws
        self.target_batch_size = target_batch_size

    def _fit_target_model(self, X, y):
        """The authors' preprocessing: a Gaussian model with this network and schedule."""
        from smoothsk.io.checkpoint import TrainingCheckpoint
        from smoothsk.methods.gaussian import GaussianAugClassifier

        names = set(GaussianAugClassifier()._get_param_names())
        params = {key: value for key, value in self.get_params(deep=False).items()
                  if key in names or "__" in key}
        params["sigma"] = self.target_sigma
        params["batch_size"] = (self.batch_size * self.num_noise
                                if self.target_batch_size is None else self.target_batch_size)
        # a checkpoint file belongs to this run, not to its target model's
        params["callbacks"] = [item for item in (self.callbacks or [])
                               if not isinstance(item[1] if isinstance(item, tuple) else item,
                                                 TrainingCheckpoint)] or None
        return GaussianAugClassifier(**clone(params, safe=False)).fit(X, y)

    def prepare_side_models(self, X, y, *, partial: bool) -> None:
        """Fit (or take) the target model and check it against ``(X, y)``.

        Parameters
        ----------
        X, y, partial
            As in :meth:`smoothsk.SmoothedClassifier.prepare_side_models`.
        """
        X_checked = self.check_inputs(X, reset=True)
        target = unwrap_frozen(self.target_model)
        if target is None:
            self.validate_parameters()
            target = self._fit_target_model(X, y)
        elif not isinstance(target, SmoothedClassifier):
            raise ValueError(
                "target_model must be None, a smoothsk estimator or a FrozenEstimator "
                f"wrapping one; got {type(self.target_model).__name__}."
            )
        elif not is_fitted_estimator(target):
            target = clone(target).fit(X, y)
        self.check_read_model("target_model", target.classes_, X_checked, y,
                               target.input_shape_)
        self.target_model_ = target

    def classes_for_fit(self):
        # p̂'s columns are the target model's classes, in its order.
        return self.target_model_.classes_

    def training_data(self, X, y):
        self.target_prob_ = smoothed_targets(self.target_model_, X, self.target_draws,
                                             random_state=self.random_state)
        return _WithTargets(X, y, self.target_prob_), None

    def training_loss(self, X, y):
        doubled = self.epsilon_warmup is not None and self.epoch_index >= self.epsilon_warmup
        return catrs_loss(
            self.module_, X["X"], y, X["target_prob"], self.noise_level,
            num_noise=self.num_noise, num_steps=self.num_steps,
            epsilon=self.epsilon * (2.0 if doubled else 1.0), kl_weight=self.kl_weight,
            confidence_mask=self.confidence_mask,
        )

