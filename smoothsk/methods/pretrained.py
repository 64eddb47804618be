"""The smoothed classifier of a classifier you already have (Cohen et al. 2019).

:class:`PretrainedSmoothingClassifier` smooths any fitted classifier — a torch network, a
skorch net, any scikit-learn estimator with ``predict`` — without training it: its
certificates describe ``g(x) = argmax_c P(f(x + δ) = c)`` of that classifier as it is.
:mod:`smoothsk.methods.denoised` builds on it, putting a trained denoiser in front.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.utils import check_array

from smoothsk.base import SmoothedClassifier, is_fitted_estimator, unwrap_frozen
from smoothsk.certification.adapters import SklearnClassifierNetwork, as_base_network

__all__ = ["PretrainedSmoothingClassifier", "fit_clone", "torch_network"]


def torch_network(model):
    """A torch network with gradients for ``model``, or None for a gradient-free one."""
    network, _ = as_base_network(unwrap_frozen(model))
    return None if isinstance(network, SklearnClassifierNetwork) else network


def fit_clone(owner: str, classifier, X, y):
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
    prepared_side_models = ("classifier_network_",)

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
            fit_clone(type(self).__name__, self.classifier, X, y)
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

    def prepare_side_models(self, X, y, *, partial: bool) -> None:
        """Fit (``prefit=False``) or take the classifier and check it against ``(X, y)``.

        Parameters
        ----------
        X, y, partial
            As in :meth:`smoothsk.SmoothedClassifier.prepare_side_models`.
        """
        self.validate_parameters()
        self._resolve_classifier(X, y)

    def fit(self, X, y=None, **fit_params):
        """Check the classifier against ``(X, y)`` (with ``prefit=False``: fit it first).

        Learns ``input_shape_``, ``n_features_in_`` and ``classes_`` (the classifier's);
        no network is trained.

        Parameters
        ----------
        X, y, **fit_params
            As in :meth:`smoothsk.SmoothedClassifier.fit`.
        """
        if self.module is not None:
            raise ValueError(f"{type(self).__name__} trains no network; module must be None "
                             "(DenoisedSmoothingClassifier trains a denoiser in front of "
                             "the classifier).")
        self.prepare_side_models(X, y, partial=False)
        X, _ = self.prepare_fit_data(X, y, fit_params, reset=True)
        self.initialize()
        self.check_network_output(X)
        return self

    def prepare_without_fit(self, X) -> None:
        """A prefit classifier needs no ``fit`` (as scikit-learn's ``FrozenEstimator``):
        the first ``predict``, ``certify`` or ``score`` checks it against ``X`` and learns
        the input shape, as ``fit(X)`` would.

        Parameters
        ----------
        X : array-like, tensor or Dataset
            The inputs of the call.
        """
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
        nothing to train incrementally.

        Parameters
        ----------
        X, y, classes, **fit_params
            As in :meth:`smoothsk.SmoothedClassifier.partial_fit`.
        """
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
