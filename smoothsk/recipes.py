"""Published training settings by name: one table, each number with the file it was read from.

A recipe is the authors' training command for one (method, data family, σ): optimiser,
learning rate and its schedule, epochs, batch and the method's hyperparameters.
:func:`recipe_params` turns it into estimator parameters; explicit arguments override
them.  ``epochs`` may be shortened: the schedule keeps its *shape* (learning-rate steps
and MACER's deferral at the same fractions of training).

Batch semantics.  SmoothMix, SmoothAdv and Consistency split every loader batch of B
examples into m chunks and take one optimiser step per chunk of B/m examples × m noise
draws (``_chunk_minibatch`` in their scripts); the recipe's ``batch_size`` is that
per-step B/m, so one smoothsk epoch makes the authors' number of updates.

Sources (public repositories):

- ``smoothmix``: jh-jeong/smoothmix ``EXPERIMENTS.MD`` (the commands behind SmoothMix
  Table 2 for MNIST and the CIFAR-10 rows), ``code/train*.py`` (SGD, momentum 0.9,
  weight decay 1e-4, batch 256, ``StepLR(lr_step_size, 0.1)``).
- ``catrs``: alinlab/smoothing-catrs ``EXPERIMENTS.MD`` (CIFAR-10 commands: m = 4,
  4 steps, ε = 256/256, λ = 0.5 / 1.0 / 2.0, lr 0.1, ``--lr_step_size 50``, 150 epochs)
  and ``code/train_catrs.py`` (batch 256 split into m chunks).  MNIST family: the
  Fashion-MNIST logs ``data/fmnist/noise_*/cat-rs/log.txt`` (150 epochs, lr 0.01 ×0.1
  after epochs 50 and 100) and the MNIST-C command's model path
  ``adv_256.0_4/lbd_1.0/num_4/noise_0.25`` (m = 4, 4 steps, ε = 1, λ = 1 at σ = 0.25).
  The repository gives no MNIST-family λ for σ = 0.5 and 1.0; the table uses the
  CIFAR-10 values (1.0 and 2.0), marked in ``source``.
- ``crt``: Ethos-lab/crt-neurips22 ``configs/cifar/xfer.yml`` (200 epochs, batch 128,
  lr 0.1, momentum 0.9, weight decay 1e-4, multistep at 50 % and 75 %).
- ``gaussian`` on CIFAR-10: locuslab/smoothing ``README.md``'s training commands
  (``--batch 400 --lr 0.1 --lr_step_size 30 --epochs 90``).

When the rate drops.  The SmoothMix and CAT-RS scripts call ``scheduler.step(epoch)``
*after* training epoch ``epoch`` (zero-based), so with ``--lr_step_size 30`` epochs 0–30
run at the initial rate and the first drop is at epoch 31 (the CAT-RS logs show it at
epoch 51 of 150); Cohen et al.'s ``train.py`` steps *before* each epoch, dropping at epoch
30.  ``Recipe.drop_delay`` records the difference and :func:`recipe_params` places the
milestones so that every epoch runs at the authors' rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["RECIPES", "Recipe", "estimator_class", "recipe", "recipe_params"]

_SMOOTHMIX_REPO = "jh-jeong/smoothmix EXPERIMENTS.MD"
_CATRS_REPO = "alinlab/smoothing-catrs EXPERIMENTS.MD, data/*/cat-rs/log.txt"
_MNIST_SCHEDULE = dict(epochs=90, lr=0.01, milestones=(1 / 3, 2 / 3), loader_batch=256)


@dataclass(frozen=True)
class Recipe:
    """One published training setting.

    Attributes
    ----------
    method, family : str
        Training method (``smoothsk train --method`` names) and data family
        (``"mnist"`` covers MNIST and Fashion-MNIST with LeNet; ``"cifar10"`` ResNet-110).
    sigma : float
    epochs : int
    lr : float
        Initial learning rate of SGD (momentum 0.9, weight decay 1e-4 everywhere).
    milestones : tuple of float
        Fractions of training after which the learning rate is multiplied by 0.1.
    loader_batch : int
        The authors' ``--batch``.
    chunks : int
        How many optimiser steps the authors take per loader batch (m for the methods
        that split it, else 1).
    params : dict
        The method's hyperparameters, as estimator parameters.
    source : str
        Where the numbers were read.
    drop_delay : int
        Epochs by which the authors' rate drops lag the milestones (1 where their script
        steps the scheduler after the epoch, module docstring).
    """

    method: str
    family: str
    sigma: float
    epochs: int
    lr: float
    milestones: tuple
    loader_batch: int
    chunks: int = 1
    params: dict = field(default_factory=dict)
    source: str = _SMOOTHMIX_REPO
    drop_delay: int = 1

    @property
    def batch_size(self) -> int:
        """Examples per optimiser step: ``loader_batch // chunks``."""
        return self.loader_batch // self.chunks


def _mnist(method, sigma, chunks=1, **params) -> Recipe:
    return Recipe(method=method, family="mnist", sigma=sigma, chunks=chunks, params=params,
                  **_MNIST_SCHEDULE)


def _build_table() -> dict:
    table = {}
    for sigma, steps, macer_weight, consistency_weight in (
        (0.25, 2, 16.0, 10.0), (0.5, 4, 16.0, 5.0), (1.0, 8, 6.0, 5.0),
    ):
        for item in (
            _mnist("gaussian", sigma),
            _mnist("stability", sigma, stability_weight=2.0),
            _mnist("smoothadv", sigma, chunks=4, epsilon=255 / 256, num_steps=10, num_noise=4,
                   warmup=10),
            # deferred is the first lr step (``--deferred`` with lr_step_size 30 of 90).
            _mnist("macer", sigma, num_noise=16, inverse_temperature=16.0, margin=8.0,
                   robustness_weight=macer_weight, deferred=30),
            _mnist("consistency", sigma, chunks=2, num_noise=2,
                   consistency_weight=consistency_weight, entropy_weight=0.5),
            _mnist("smoothmix", sigma, chunks=4, num_noise=4, num_steps=steps, step_size=1.0,
                   eta=5.0, mix_step=0, warmup=10),
        ):
            table[item.method, item.family, item.sigma] = item
        table["catrs", "mnist", sigma] = Recipe(
            "catrs", "mnist", sigma, epochs=150, lr=0.01, milestones=(1 / 3, 2 / 3),
            loader_batch=256, chunks=4,
            params=dict(num_noise=4, num_steps=4, epsilon=1.0, kl_weight=max(sigma * 2, 1.0)),
            source=_CATRS_REPO + (" (λ = 1 from the MNIST-C command)" if sigma == 0.25 else
                                  " (λ: the CIFAR-10 value; no MNIST-family value published)"))
        # CRT has no MNIST-family setting of its own: the student takes the SmoothMix
        # teacher's schedule (the same shape as every MNIST-family row).
        table["crt", "mnist", sigma] = _mnist("crt", sigma, transfer_weight=1.0)
    for sigma, step_size in ((0.25, 0.5), (0.5, 1.0), (1.0, 2.0)):
        table["smoothmix", "cifar10", sigma] = Recipe(
            "smoothmix", "cifar10", sigma, epochs=150, lr=0.1, milestones=(1 / 3, 2 / 3),
            loader_batch=256, chunks=2,
            params=dict(num_noise=2, num_steps=4, step_size=step_size, eta=5.0, mix_step=0,
                        warmup=10))
        table["catrs", "cifar10", sigma] = Recipe(
            "catrs", "cifar10", sigma, epochs=150, lr=0.1, milestones=(1 / 3, 2 / 3),
            loader_batch=256, chunks=4,
            params=dict(num_noise=4, num_steps=4, epsilon=1.0, kl_weight=sigma * 2),
            source=_CATRS_REPO)
        table["gaussian", "cifar10", sigma] = Recipe(
            "gaussian", "cifar10", sigma, epochs=90, lr=0.1, milestones=(1 / 3, 2 / 3),
            loader_batch=400, drop_delay=0,
            source="locuslab/smoothing README.md commands (--batch 400), code/train.py")
        table["crt", "cifar10", sigma] = Recipe(
            "crt", "cifar10", sigma, epochs=200, lr=0.1, milestones=(0.5, 0.75),
            loader_batch=128, params=dict(transfer_weight=1.0), drop_delay=0,
            source="Ethos-lab/crt-neurips22 configs/cifar/xfer.yml")
    return table


RECIPES: dict = _build_table()
"""``(method, family, sigma) -> Recipe`` for every published setting smoothsk knows."""

_FAMILY_OF = {"mnist": "mnist", "fashion-mnist": "mnist", "cifar10": "cifar10"}


def recipe(method: str, family: str, sigma: float) -> Recipe:
    """The published setting for ``method`` on ``family`` (or a data set name) at ``sigma``.

    Raises ``ValueError`` naming the settings that exist when there is none.

    Parameters
    ----------
    method : str
        A ``smoothsk train --method`` name.
    family : str
        ``"mnist"`` (MNIST, Fashion-MNIST), ``"cifar10"``, ``"imagenet"``, or a data set name.
    sigma : float
        The noise level.
    """
    key = (method, _FAMILY_OF.get(family, family), float(sigma))
    if key not in RECIPES:
        known = ", ".join(f"{m}/{f}/σ={s:g}" for m, f, s in sorted(RECIPES))
        raise ValueError(
            f"No published recipe for method={method!r}, family={family!r}, sigma={sigma!r}. "
            f"Known: {known}."
        )
    return RECIPES[key]


def recipe_params(item: Recipe, *, epochs: int | None = None) -> dict:
    """Estimator parameters of ``item``, optionally shortened to ``epochs``.

    The learning-rate milestones (and MACER's ``deferred``) move with ``epochs`` so the
    schedule keeps its shape: with 30 epochs instead of 90 the steps fall after epochs
    10 and 20 (plus ``drop_delay``: 11 and 21 for the SmoothMix-repository rows) and
    MACER's hinge starts after zero-based epoch 10.

    Parameters
    ----------
    item : Recipe
        A recipe.
    epochs : int or None
        Shorten the schedule to this many epochs, keeping its shape.
    """
    from skorch.callbacks import LRScheduler

    epochs = item.epochs if epochs is None else int(epochs)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1; got {epochs!r}.")
    steps = [round(fraction * epochs) for fraction in item.milestones]
    # skorch steps the scheduler after each epoch: milestone k makes epoch k (zero-based)
    # the first at the lower rate
    milestones = [step + item.drop_delay for step in steps]
    params = dict(item.params)
    if "deferred" in params:  # ``epoch <= lr_step_size``: the hinge is off through it
        params["deferred"] = steps[0]
    params.update(
        sigma=item.sigma, max_epochs=epochs, lr=item.lr, batch_size=item.batch_size,
        optimizer=torch.optim.SGD, optimizer__momentum=0.9, optimizer__weight_decay=1e-4,
        callbacks=[("lr_scheduler", LRScheduler(policy=torch.optim.lr_scheduler.MultiStepLR,
                                                milestones=milestones, gamma=0.1))],
    )
    if item.method == "crt":
        params.pop("sigma")  # the student takes its teacher's σ
    return params


def estimator_class(method: str):
    """The estimator class of a method name (``smoothsk train --method`` names).

    :func:`smoothsk.methods.registry.method_class`, kept under the recipes' name.

    Parameters
    ----------
    method : str
        A ``smoothsk train --method`` name.
    """
    from smoothsk.methods.registry import method_class

    return method_class(method)
