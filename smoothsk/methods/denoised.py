"""Denoised smoothing (Salman, Sun, Yang, Kapoor & Kolter, NeurIPS 2020).

"Denoised Smoothing: A Provable Defense for Pretrained Classifiers".  A classifier
trained on clean data collapses under Gaussian noise; instead of retraining it, train
only a denoiser ``D`` in front of it and smooth ``f ∘ D``.  The classifier is never
modified.  Transcribed from the authors' ``code/train_denoiser.py``
(microsoft/denoised-smoothing).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from smoothsk.base import SmoothedClassifier, unwrap_frozen
from smoothsk.methods.attacks import frozen
from smoothsk.methods.pretrained import PretrainedSmoothingClassifier, torch_network
from smoothsk.models import DnCNN, MLPDenoiser
from smoothsk.validation import NON_NEGATIVE_INT, StrOptions

__all__ = [
    "DenoisedNetwork",
    "DenoisedSmoothingClassifier",
    "PretrainedSmoothingClassifier",  # its home is smoothsk.methods.pretrained
    "denoiser_loss",
    "finetune_denoiser",
]

OBJECTIVES = ("mse", "stability", "classification", "mse+stability")
_NEEDS_GRADIENTS = ("stability", "classification", "mse+stability")


def denoiser_loss(
    denoiser: torch.nn.Module,
    classifier: torch.nn.Module | None,
    X: torch.Tensor,
    y: torch.Tensor,
    sigma: float,
    *,
    objective: str = "mse",
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """The denoiser's training loss on one batch (``train_denoiser.py``'s ``train``).

    With one ``δ ~ N(0, σ² I)`` per example:

    - ``"mse"`` (the authors' "denoising"): ``mean ‖D(x + δ) − x‖² / d`` (``MSELoss``);
    - ``"classification"``: ``CE(f(D(x + δ)), y)``;
    - ``"stability"``: ``CE(f(D(x + δ)), argmax f(x))``, the classifier's own clean
      prediction as the label (computed without gradients).

    ``classifier`` runs frozen (eval mode, no parameter gradients); gradients reach the
    denoiser through it.  ``"mse"`` needs no classifier.

    Parameters
    ----------
    denoiser : torch.nn.Module
        D, the network trained.
    classifier : torch.nn.Module or None
        f, frozen (None only for ``"mse"``).
    X : torch.Tensor of shape (B, ...)
        A training batch.
    y : torch.Tensor of shape (B,)
        Its class indices (used by ``"classification"``).
    sigma : float > 0
        The noise level.
    objective : {"mse", "stability", "classification", "mse+stability"}
        The loss.
    noise : torch.Tensor or None
        A fixed draw instead of a fresh one (for tests).

    Returns
    -------
    torch.Tensor
        The scalar loss.
    """
    if objective not in OBJECTIVES[:3]:
        raise ValueError(f"objective must be one of {OBJECTIVES[:3]}; got {objective!r}.")
    noisy = X + (sigma * torch.randn_like(X) if noise is None else noise)
    denoised = denoiser(noisy)
    if objective == "mse":
        return F.mse_loss(denoised, X)
    with frozen(classifier):
        if objective == "stability":
            with torch.no_grad():
                y = classifier(X).argmax(dim=1)
        return F.cross_entropy(classifier(denoised), y)


class DenoisedNetwork(torch.nn.Module):
    """``f ∘ D``: the base network that is smoothed; the classifier stays in eval mode.

    Parameters
    ----------
    denoiser : torch.nn.Module
        ``D``, trained.
    classifier : torch.nn.Module
        ``f``, frozen (its parameters get no gradients).
    """

    def __init__(self, denoiser: torch.nn.Module, classifier: torch.nn.Module):
        super().__init__()
        self.denoiser = denoiser
        self.classifier = classifier
        self.classifier.requires_grad_(False)
        self.classifier.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.classifier.eval()  # a frozen classifier: BatchNorm statistics never move
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.denoiser(x))


class DenoisedSmoothingClassifier(PretrainedSmoothingClassifier):
    """Smoothed ``f ∘ D`` for a classifier ``f`` you already have; only ``D`` is trained.

    ``fit`` trains the denoiser (the skorch ``module``); ``predict``, ``certify``, the
    scorers and everything else work on the smoothed ``f ∘ D`` as for every smoothsk
    estimator.

    Parameters
    ----------
    classifier : fitted classifier or torch.nn.Module
        The frozen ``f``, as in :class:`PretrainedSmoothingClassifier`.
    prefit : bool, default=True
        Whether ``classifier`` is already fitted; False trains a clone of it on the
        clean ``(X, y)`` first (as in :class:`PretrainedSmoothingClassifier`).
    module : torch.nn.Module class or instance, or None
        The denoiser ``D``.  None: :class:`~smoothsk.models.DnCNN` for image-shaped inputs
        (``module__depth``, ``module__width``), :class:`~smoothsk.models.MLPDenoiser` for
        flat ones (``module__hidden_units``).  Both start as the identity.
    objective : {"mse", "stability", "classification", "mse+stability"}, default="mse"
        The authors' objectives (:func:`denoiser_loss`).  ``"mse+stability"`` is the
        paper's best: MSE for the first ``mse_epochs`` epochs, then stability.  All but
        ``"mse"`` need gradients through ``f``: a torch classifier, or a ``surrogate``.
    surrogate : fitted skorch/smoothsk estimator or torch.nn.Module, optional
        Stands in for a gradient-free ``f`` in the loss (the paper's query-access
        setting); certification always uses ``classifier``.
    mse_epochs : int or None, default=None
        Epochs of MSE before stability for ``"mse+stability"``; None is half of
        ``max_epochs``.
    **kwargs
        Everything :class:`~smoothsk.base.SmoothedClassifier` takes (σ, ``classes``, the
        optimiser, ...).

    Notes
    -----
    The base's default optimiser (Adam, lr 1e-3) is also ``train_denoiser.py``'s, but that
    script's defaults are not the published setting: the paper trains an MSE denoiser,
    then fine-tunes it with a fresh optimiser (:func:`finetune_denoiser`; the two stages
    are in docs/recipes.md).  Each step costs one denoiser forward-backward (plus a
    classifier forward-backward for the objectives through ``f``), against the
    ``m``-fold passes of training a robust classifier.
    """

    method_name = "denoised"
    display_name = "Denoised"
    trains_a_network = True
    sigma_fixed_by_training = True  # the denoiser is trained for its σ

    side_model_params = ("classifier", "surrogate")

    _parameter_constraints: dict = {
        **PretrainedSmoothingClassifier._parameter_constraints,
        "objective": [StrOptions(set(OBJECTIVES))],
        "surrogate": "no_validation",
        "mse_epochs": [*NON_NEGATIVE_INT, None],
    }

    def __init__(
        self,
        classifier=None,
        module=None,
        *,
        objective: str = "mse",
        surrogate=None,
        mse_epochs: int | None = None,
        **kwargs,
    ):
        super().__init__(classifier, module=module, **kwargs)
        self.objective = objective
        self.surrogate = surrogate
        self.mse_epochs = mse_epochs

    def _resolve_classifier(self, X=None, y=None):
        super()._resolve_classifier(X, y)
        gradients = self.gradient_network_
        if self.surrogate is not None:
            surrogate = torch_network(self.surrogate)
            if surrogate is None:
                raise ValueError("surrogate must be a torch module or a fitted skorch/smoothsk "
                                 "estimator (it needs gradients).")
            gradients = copy.deepcopy(surrogate).to(self.device)
        if gradients is None and self.objective in _NEEDS_GRADIENTS:
            raise ValueError(
                f"objective={self.objective!r} needs gradients through the classifier, but "
                f"{type(unwrap_frozen(self.classifier_)).__name__} has none; use "
                "objective='mse', or give a torch surrogate=... (a network trained to "
                "imitate it)."
            )
        object.__setattr__(self, "gradient_network_", gradients)

    # The denoiser is trained as any network is, by the base's fit (whose first step,
    # prepare_side_models, resolves the classifier), not by the fit-nothing of
    # PretrainedSmoothingClassifier.
    fit = SmoothedClassifier.fit
    partial_fit = SmoothedClassifier.partial_fit

    def initialize_module(self):
        if not hasattr(self, "classifier_network_"):  # rebuilt from a model file
            self._resolve_classifier()
        if self.module is not None:
            denoiser = self.initialized_instance(self.module, self.get_params_for("module"))
        elif not hasattr(self, "input_shape_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("The default denoiser is built in fit, from the data's shape.")
        elif len(self.input_shape_) == 3:
            denoiser = DnCNN(channels=self.input_shape_[0], **self.get_params_for("module"))
        else:
            denoiser = MLPDenoiser(int(np.prod(self.input_shape_)),
                                   **self.get_params_for("module"))
        self.module_ = DenoisedNetwork(denoiser.to(self.device), self.classifier_network_)
        self._apply_memory_format()
        return self

    def get_all_learnable_params(self):
        # Only the denoiser learns: the classifier's weights never reach the optimiser.
        yield from self.module_.denoiser.named_parameters()

    # ------------------------------------------------------------------ training
    @property
    def current_objective_(self) -> str:
        """The objective of the current epoch (``"mse+stability"`` switches)."""
        if self.objective != "mse+stability":
            return self.objective
        switch = self.max_epochs // 2 if self.mse_epochs is None else self.mse_epochs
        return "mse" if self.epoch_index < switch else "stability"

    def training_loss(self, X, y):
        return denoiser_loss(self.module_.denoiser, self.gradient_network_, X, y,
                             self.noise_level, objective=self.current_objective_)


def finetune_denoiser(denoised: DenoisedSmoothingClassifier, X, y=None, *,
                      objective: str = "stability", lr: float = 1e-4,
                      max_epochs: int = 20) -> DenoisedSmoothingClassifier:
    """The paper's second stage: a finished denoiser fine-tuned with a fresh optimiser.

    Salman et al. (2020) train ``D`` with MSE (90 epochs), then fine-tune that denoiser
    for 20 epochs with the stability (or classification) objective at lr 1e-4 or 1e-5,
    restarting the optimiser (``analyze.py`` of microsoft/denoised-smoothing), which is
    not what ``objective="mse+stability"`` (one run, one optimiser) does.

    Parameters
    ----------
    denoised : fitted DenoisedSmoothingClassifier
        The first stage; it is not modified.
    X, y : array-like
        The fine-tuning data (``y`` for ``objective="classification"``; "stability"
        uses the classifier's predictions on clean inputs).
    objective : {"stability", "classification", "mse"}, default="stability"
    lr : float, default=1e-4
        Constant through the fine-tuning (the authors' 1e-4 and 1e-5 runs).
    max_epochs : int, default=20

    Returns
    -------
    DenoisedSmoothingClassifier
        A copy whose denoiser starts from ``denoised``'s weights, trained with a new
        optimiser (same class and settings as the first stage's, fresh moments) for
        ``max_epochs`` more epochs; its history holds both stages.
    """
    if not isinstance(denoised, DenoisedSmoothingClassifier):
        raise TypeError("finetune_denoiser takes a fitted DenoisedSmoothingClassifier; got "
                        f"{type(denoised).__name__}.")
    if not getattr(denoised, "initialized_", False):
        raise ValueError("finetune_denoiser needs a fitted DenoisedSmoothingClassifier: call "
                         "fit (the MSE stage) first.")
    if objective not in OBJECTIVES[:3]:
        raise ValueError(f"objective must be one of {OBJECTIVES[:3]} for the fine-tuning; "
                         f"got {objective!r}.")
    tuned = copy.deepcopy(denoised)
    tuned.set_params(objective=objective, max_epochs=max_epochs, lr=lr, lr_schedule="constant")
    tuned._resolve_classifier(X, y)  # the new objective may need gradients through f
    tuned.initialize_callbacks()  # the constant schedule from the first fine-tuning epoch
    tuned.initialize_optimizer()  # a fresh optimiser, as the authors restart theirs
    return tuned.partial_fit(X, y)
