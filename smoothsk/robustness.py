"""Empirical robustness: attack the smoothed classifier and judge it by PREDICT.

A certificate is a lower bound on robustness; an attack gives an upper bound.  For
every radius ``r`` the attack is l2 PGD on the smoothed soft classifier
(:func:`~smoothsk.methods.attacks.smoothed_pgd_attack`, as in Salman et al. 2019, §4), and
the attacked point ``x̃`` counts as robust only if the smoothed classifier's own
PREDICT (Cohen et al. 2019) returns the true class at ``x̃``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from smoothsk.certification import bounds, core, inputs
from smoothsk.certification.certificate import ABSTAIN
from smoothsk.methods.attacks import smoothed_pgd_attack
from smoothsk.metrics import smoothed_step
from smoothsk.progress import progress_bar

__all__ = ["EmpiricalRobustness", "empirical_robustness"]


@dataclass
class EmpiricalRobustness:
    """Result of :func:`empirical_robustness` for ``N`` inputs and ``K`` radii.

    Attributes
    ----------
    radii : ndarray, shape (K,)
        Attack radii ε (l2, in input units).
    accuracy : ndarray, shape (K,)
        Empirical robust accuracy: fraction of inputs whose attacked point PREDICT
        assigns to the true class (abstentions count as wrong).
    prediction : ndarray of int, shape (K, N)
        PREDICT's class index at each attacked point, ``ABSTAIN`` (−1) where it abstains.
    correct : ndarray of bool, shape (K, N)
        ``prediction == y`` (as class indices).
    distance : ndarray, shape (K, N)
        ``‖x̃ − x‖₂`` actually used (≤ radius).
    n, alpha : int, float
        PREDICT's draws and failure probability.
    """

    radii: np.ndarray
    accuracy: np.ndarray
    prediction: np.ndarray
    correct: np.ndarray
    distance: np.ndarray
    n: int
    alpha: float


def empirical_robustness(
    estimator,
    X,
    y,
    radii,
    *,
    num_steps: int = 20,
    num_noise: int = 16,
    n: int = 10_000,
    alpha: float = 0.001,
    attack_batch_size: int = 64,
    batch_size: int = 1000,
    clip_range: tuple[float, float] | None = (0.0, 1.0),
    random_state=None,
) -> EmpiricalRobustness:
    """Empirical robust accuracy of a fitted smoothed classifier at each l2 radius.

    For each radius ε and input ``(x, y)``: ``x̃`` = ``num_steps`` steps of l2 PGD of
    length ``2ε/T`` on ``−log((1/m) Σ_i F_y(x̃ + δ_i))`` with ``m = num_noise`` fixed
    draws, projected onto the ε-ball and clipped to ``clip_range``; the input counts
    as robust when PREDICT (``n`` draws, failure probability ``alpha``) returns ``y``
    at ``x̃``.  ε = 0 evaluates the clean input.

    If ``x`` is certified for class ``y`` at radius ``R`` then, with probability at
    least ``1 − 2α``, no attack of radius ``< R`` makes PREDICT return another class
    (it may abstain where ``p_A(x̃)`` is close to 1/2).

    Parameters
    ----------
    estimator : fitted smoothsk estimator, or Pipeline ending in one
        A Pipeline is attacked in the input space of its last step.
    X, y : array-like
        Inputs and their labels (from ``estimator.classes_``).
    radii : float or sequence of float >= 0
        Attack radii.
    num_steps, num_noise : int
        T and m of the attack.
    n, alpha : int, float
        PREDICT's draws and failure probability.
    attack_batch_size : int
        Inputs attacked together (each with ``num_noise`` copies).
    batch_size : int
        Noisy rows per forward pass in PREDICT.
    clip_range : (low, high) or None
        Valid input range of the attacked points.
    random_state : int or None
        Seeds the attack noise and PREDICT's noise.
    """
    smoothed, X = smoothed_step(estimator, X)  # a Pipeline: its last step's input space
    if not hasattr(smoothed, "module_") or not hasattr(smoothed, "noise_level"):
        raise ValueError(
            f"{type(smoothed).__name__} is not a fitted smoothsk estimator; fit one (or a "
            "Pipeline ending in one) before attacking it."
        )
    X = smoothed.check_fitted_inputs(X)
    if not isinstance(X, np.ndarray):
        raise ValueError("empirical_robustness needs X as an array or tensor, not a Dataset.")
    y = np.asarray(y)
    if len(y) != len(X):
        raise ValueError(f"X has {len(X)} inputs but y has {len(y)} labels.")
    y_index = smoothed.encode_labels(y)
    radii = np.atleast_1d(np.asarray(radii, dtype=np.float64))
    if radii.ndim != 1 or np.any(radii < 0) or not np.all(np.isfinite(radii)):
        raise ValueError(f"radii must be finite and >= 0; got {radii!r}.")
    num_steps = inputs.check_positive_int(num_steps, "num_steps")
    num_noise = inputs.check_positive_int(num_noise, "num_noise")
    attack_batch_size = inputs.check_positive_int(attack_batch_size, "attack_batch_size")
    n = inputs.check_positive_int(n, "n")
    alpha = bounds.check_alpha(alpha)
    seed = inputs.base_seed(random_state)

    module = smoothed.module_
    sigma = smoothed.noise_level
    device, dtype = inputs.module_device_dtype(module)
    X_t = torch.as_tensor(X, dtype=dtype)
    y_t = torch.as_tensor(y_index)
    generator = torch.Generator(device=device)
    predictions, distances = [], []
    bar = progress_bar(len(radii) * len(X_t), f"{type(smoothed).__name__} attack",
                       enabled=bool(getattr(smoothed, "verbose", 0)))
    precision = getattr(smoothed, "precision", "fp32")
    for k, radius in enumerate(radii):
        attack_seed, predict_seed = np.random.SeedSequence([seed, k]).generate_state(2)
        generator.manual_seed(int(attack_seed))
        attacked = []
        for start in range(0, len(X_t), attack_batch_size):
            xb = X_t[start : start + attack_batch_size].to(device)
            yb = y_t[start : start + attack_batch_size].to(device)
            if radius == 0:
                attacked.append(xb)
                continue
            noises = sigma * torch.randn(
                (num_noise, *xb.shape), generator=generator, device=device, dtype=dtype
            )
            attacked.append(smoothed_pgd_attack(
                module, xb, yb, noises, num_steps=num_steps,
                step_size=2.0 * radius / num_steps, epsilon=float(radius), clip_range=clip_range,
            ).adversarial)
        adversarial = torch.cat(attacked)
        distances.append((adversarial.cpu() - X_t).flatten(1).norm(dim=1).numpy())
        predictions.append(core.predict(
            module, adversarial, sigma, n=n, alpha=alpha, batch_size=batch_size,
            random_state=int(predict_seed), precision=precision, progress=bar.update,
        ))
    bar.close()
    prediction = np.stack(predictions)
    correct = (prediction != ABSTAIN) & (prediction == y_t.numpy()[None, :])
    return EmpiricalRobustness(
        radii=radii, accuracy=correct.mean(axis=1), prediction=prediction, correct=correct,
        distance=np.stack(distances), n=n, alpha=alpha,
    )
