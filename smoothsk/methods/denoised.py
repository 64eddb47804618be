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
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.utils import check_array

from smoothsk.base import SmoothedClassifier, is_fitted_estimator, unwrap_frozen
from smoothsk.certification.adapters import SklearnClassifierNetwork, as_base_network
from smoothsk.methods.attacks import frozen
from smoothsk.models import DnCNN, MLPDenoiser
from smoothsk.validation import NON_NEGATIVE_INT, StrOptions

__all__ = [
    "DenoisedNetwork",
    "DenoisedSmoothingClassifier",
    "PretrainedSmoothingClassifier",
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
    """``f ∘ D``: the base network that is smoothed; the classifier stays in eval mode."""

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


def _torch_network(model):
    """A torch network with gradients for ``model``, or None for a gradient-free one."""
    network, _ = as_base_network(unwrap_frozen(model))
    return None if isinstance(network, SklearnClassifierNetwork) else network


def _fit_clone(owner: str, classifier, X, y):
    """A fitted clone of an unfitted ``classifier`` (``prefit=False``), trained on clean data.

    Estimators outside smoothsk and skorch see each input flattened, as the adapter
    flattens it when voting.
    """
    from skorch import NeuralNet

    if isinstance(classifier, torch.nn.Module):
        raise ValueError("prefit=False fits a clone of the classifier, which needs a "
                         "scikit-learn estimator; a torch module must come trained "
                         "(prefit=True).")
    if y is None:
        raise ValueError(f"{owner} requires y to be passed, but the target y is None "
                         "(prefit=False fits the classifier on (X, y)).")
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    X = check_array(X, allow_nd=True, dtype=np.float32)
    if not isinstance(classifier, (NeuralNet, FrozenEstimator)):
        X = X.reshape(len(X), -1)
    return clone(classifier).fit(X, y)


class PretrainedSmoothingClassifier(SmoothedClassifier):
    """The smoothed classifier of a classifier ``f`` you already have; trains nothing.

    ``g(x) = argmax_c P(f(x + δ) = c)`` with ``δ ~ N(0, σ² I)`` (Cohen et al. 2019) for a
    fitted scikit-learn classifier, Pipeline, skorch/smoothsk estimator or trained torch
    module.  ``fit`` only checks ``f`` against the data (or, with ``prefit=False``, fits a
    clone of it on clean data); ``predict``, ``certify``, ``certify_radius``, the scorers,
    ``GridSearchCV`` over σ and the CLI then work as for every smoothsk estimator.  Its
    certified accuracy is low where ``f`` was trained without noise:
    :class:`DenoisedSmoothingClassifier` puts a trained denoiser in front of it.

    Parameters
    ----------
    classifier : fitted classifier or torch.nn.Module
        ``f``: a fitted scikit-learn classifier or Pipeline (votes with its ``predict``),
        a fitted skorch or smoothsk estimator, a ``FrozenEstimator`` of one, or a trained
        torch module returning logits (then give ``classes``).  Never modified;
        ``clone`` keeps a fitted one by reference.
    prefit : bool, default=True
        Whether ``classifier`` is already fitted (as in scikit-learn's
        ``SelectFromModel``).  False: ``fit`` trains a clone of it on the clean
        ``(X, y)`` into ``classifier_`` first; the given object stays untouched.
    **kwargs
        σ, ``n0``, ``n``, ``alpha``, ``n_predict``, ``certify_batch_size``,
        ``precision``, ``classes``, ``random_state``, ... as in
        :class:`~smoothsk.base.SmoothedClassifier`.

    Attributes
    ----------
    classifier_ : fitted classifier or torch.nn.Module
        The classifier that is smoothed: ``classifier`` itself, or its fitted clone.
    classifier_classes_ : ndarray
        Its labels, in the order of its outputs.
    """

    method_name = "pretrained"
    display_name = "Pretrained"
    sigma_fixed_by_training = False  # fit trains nothing: any σ smooths the classifier

    side_model_params = ("classifier",)

    _parameter_constraints: dict = {
        **SmoothedClassifier._parameter_constraints,
        "classifier": "no_validation",  # checked against the data in fit
        "prefit": ["boolean"],
    }

    def __init__(self, classifier=None, *, prefit: bool = True, **kwargs):
        # skorch lists every attribute as a parameter, so clone passes module=None back
        super().__init__(kwargs.pop("module", None), **kwargs)
        self.classifier = classifier
        self.prefit = prefit

    def set_params(self, **params):
        """As skorch's, plus ``classifier__<name>`` for the classifier's own parameters
        (a grid search over them with ``prefit=False``)."""
        nested = {key.split("__", 1)[1]: params.pop(key) for key in list(params)
                  if key.startswith("classifier__")}
        super().set_params(**params)
        if nested:
            if self.prefit:
                raise ValueError(
                    f"classifier__{next(iter(nested))} would change the fitted classifier, "
                    "which is never modified; pass prefit=False to fit a clone of it with "
                    "these parameters."
                )
            self.classifier.set_params(**nested)
        return self

    def _resolve_classifier(self, X=None, y=None):
        """Set ``classifier_``, ``classifier_network_``, ``classifier_classes_`` and
        ``gradient_network_`` (a torch network with gradients, or None)."""
        if self.classifier is None:
            raise ValueError(f"{type(self).__name__} needs classifier=... (a fitted "
                             "classifier or a trained torch module).")
        fitted = self.classifier if self.prefit else \
            _fit_clone(type(self).__name__, self.classifier, X, y)
        object.__setattr__(self, "classifier_", fitted)  # skorch must not register it
        inner = unwrap_frozen(fitted)
        if isinstance(inner, SmoothedClassifier) and not is_fitted_estimator(inner):
            raise ValueError("classifier is not fitted; fit it first, or pass prefit=False "
                             "to fit a clone of it on (X, y).")
        try:
            network, classes = as_base_network(inner)
        except (TypeError, ValueError) as exc:
            hint = " (or pass prefit=False to fit a clone of it on (X, y))" \
                if "not fitted" in str(exc) else ""
            raise ValueError(f"classifier cannot be used: {exc}{hint}") from exc
        if classes is None:
            if self.classes is None or not len(self.classes):
                raise ValueError("A torch.nn.Module classifier needs classes=[...] (its "
                                 "labels, in the order of its logits).")
            classes = np.asarray(self.classes)
        # never share the caller's network: eval mode and the device are set on a copy
        object.__setattr__(self, "classifier_network_", copy.deepcopy(network).to(self.device))
        self.classifier_classes_ = np.asarray(classes)
        gradients = None if isinstance(network, SklearnClassifierNetwork) \
            else self.classifier_network_
        object.__setattr__(self, "gradient_network_", gradients)
        self.check_read_model("the classifier", self.classifier_classes_, X, y)

    def fit(self, X, y=None, **fit_params):
        """Check the classifier against ``(X, y)`` (with ``prefit=False``: fit it first).

        Learns ``input_shape_``, ``n_features_in_`` and ``classes_`` (the classifier's);
        no network is trained.
        """
        if self.module is not None:
            raise ValueError(f"{type(self).__name__} trains no network; module must be None "
                             "(DenoisedSmoothingClassifier trains a denoiser in front of "
                             "the classifier).")
        self.validate_parameters()
        self._resolve_classifier(X, y)
        X, _ = self.prepare_fit_data(X, y, fit_params, reset=True)
        self.initialize()
        self.check_network_output(X)
        return self

    def prepare_without_fit(self, X) -> None:
        """A prefit classifier needs no ``fit`` (as scikit-learn's ``FrozenEstimator``):
        the first ``predict``, ``certify`` or ``score`` checks it against ``X`` and learns
        the input shape, as ``fit(X)`` would."""
        if self.prefit and not self.trains_a_network and not is_fitted_estimator(self):
            state = dict(self.__dict__)
            try:
                self.fit(X)
            except BaseException:  # a refused X leaves the estimator as it was
                self.__dict__.clear()
                self.__dict__.update(state)
                raise

    trains_a_network = False
    """Whether ``fit`` trains something (a denoiser), so that it cannot be skipped."""

    @property
    def fit_needs_labels(self) -> bool:
        return self.trains_a_network or not self.prefit

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        """The first call is :meth:`fit`; later ones only check ``(X, y)``: there is
        nothing to train incrementally."""
        if not is_fitted_estimator(self):
            return self.fit(X, y, **fit_params)
        self.prepare_fit_data(X, y, fit_params, reset=False)
        return self

    def classes_for_fit(self):
        return self.classifier_classes_

    def initialize_module(self):
        if not hasattr(self, "classifier_network_"):  # rebuilt from a model file
            self._resolve_classifier()
        self.module_ = self.classifier_network_
        return self

    def initialize_optimizer(self, *args, **kwargs):
        # A network with nothing to learn has no optimiser (torch refuses an empty one).
        if next(iter(self.get_all_learnable_params()), None) is None:
            return self
        return super().initialize_optimizer(*args, **kwargs)

    def get_all_learnable_params(self):
        return iter(())  # the classifier's weights are never trained

    def training_loss(self, X, y):
        raise RuntimeError(f"{type(self).__name__} trains nothing; fit only checks the "
                           "classifier against the data.")


class DenoisedSmoothingClassifier(PretrainedSmoothingClassifier):
    """Smoothed ``f ∘ D`` for a classifier ``f`` you already have; only ``D`` is trained.

    ``fit`` trains the denoiser (the skorch ``module``); ``predict``, ``certify``, the
    scorers and everything else work on the smoothed ``f ∘ D`` as for every smoothsk
    estimator.

    Parameters
    ----------
    classifier : fitted classifier or torch.nn.Module
        The frozen ``f``, as in :class:`PretrainedSmoothingClassifier` (with ``prefit``).
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
        ``prefit`` and everything :class:`~smoothsk.base.SmoothedClassifier` takes (σ,
        ``classes``, the optimiser, ...).

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
            surrogate = _torch_network(self.surrogate)
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

    def fit(self, X, y=None, **fit_params):
        """Train the denoiser in front of the frozen classifier."""
        self.validate_parameters()
        self._resolve_classifier(X, y)
        return SmoothedClassifier.fit(self, X, y, **fit_params)

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        if not hasattr(self, "classifier_network_"):
            self.validate_parameters()
            self._resolve_classifier(X, y)
        return SmoothedClassifier.partial_fit(self, X, y, classes=classes, **fit_params)

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
        return "mse" if self.epoch_index_ < switch else "stability"

    def training_loss(self, X, y):
        return denoiser_loss(self.module_.denoiser, self.gradient_network_, X, y,
                             self.noise_level_, objective=self.current_objective_)


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
