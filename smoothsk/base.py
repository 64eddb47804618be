"""The shared base of every smoothsk estimator.

:class:`SmoothedClassifier` is a skorch ``NeuralNetClassifier`` that owns what all
randomized-smoothing methods share.  It is assembled from three mixins, each a room of
its own: :class:`~smoothsk.fit_data.FitDataMixin` (parameters, inputs, labels and the
models only read, checked), :class:`~smoothsk.training.TrainingStepMixin` (the training
step: precision, finite loss, loss scaling, schedule, checkpoints) and
:class:`~smoothsk.smoothing.SmoothedPredictionMixin` (the smoothed ``predict``,
``certify`` and the sequential certifications).  This module holds the parameters, the
hooks a method author sets or overrides, the side models, ``fit`` / ``partial_fit`` and
the network.  A training method subclasses it and supplies one thing,
:meth:`training_loss`, which calls a pure loss function of its own module.
"""

from __future__ import annotations

import abc
import inspect

import numpy as np
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.utils.validation import check_is_fitted
from skorch import NeuralNetClassifier

from smoothsk.certification.noise import NOISES
from smoothsk.certification.parallel import torch_threads
from smoothsk.certification.precision import PRECISION_CHOICES
from smoothsk.docstrings import with_shared_parameters
from smoothsk.fit_data import FitDataMixin
from smoothsk.models import default_network, default_network_name, uses_channels_last
from smoothsk.smoothing import SmoothedPredictionMixin
from smoothsk.training import TrainingStepMixin, seeded_torch
from smoothsk.validation import POSITIVE, POSITIVE_INT, PROBABILITY, SIGMA, StrOptions

__all__ = ["SmoothedClassifier", "is_fitted_estimator", "unwrap_frozen"]

def is_fitted_estimator(estimator) -> bool:
    """Whether ``estimator`` is a fitted smoothsk estimator (network and classes)."""
    try:
        check_is_fitted(estimator, ["module_", "classes_fitted_"])
    except (NotFittedError, TypeError):
        return False
    return True


def is_fitted_model(estimator) -> bool:
    """A fitted smoothsk estimator, or any other fitted scikit-learn estimator."""
    if isinstance(estimator, SmoothedClassifier):
        return is_fitted_estimator(estimator)
    if not hasattr(estimator, "fit") or isinstance(estimator, type):
        return False
    try:
        check_is_fitted(estimator)
    except (NotFittedError, TypeError):
        return False
    return True


def unwrap_frozen(estimator):
    """The smoothsk estimator inside a ``FrozenEstimator``, or ``estimator`` itself."""
    if isinstance(estimator, FrozenEstimator) and isinstance(estimator.estimator,
                                                             SmoothedClassifier):
        return estimator.estimator
    return estimator








class SmoothedClassifier(SmoothedPredictionMixin, TrainingStepMixin, FitDataMixin,
                         NeuralNetClassifier, metaclass=abc.ABCMeta):
    """Base class of the smoothed classifiers ``g(x) = argmax_c P(f(x + δ) = c)``.

    Not used directly: subclasses implement :meth:`training_loss`.

    Parameters
    ----------
    module : torch.nn.Module class or instance, or None
        Base network ``f`` returning logits.  ``None`` picks one sized from the training
        data: :class:`smoothsk.models.LeNet` for square images of side ≥ 16 (inputs of
        shape ``(channels, side, side)``, as Fashion-MNIST and CIFAR-10 load), else
        :class:`smoothsk.models.MLP` (``module__hidden_units`` sets its widths, and asks
        for it on images too); ``default_network_`` names the choice.
    sigma : float, default=0.25
        Noise level σ of ``δ ~ N(0, σ² I)`` used in training and certification.
    n0, n : int, default=100, 100_000
        CERTIFY's selection and estimation draws (Cohen et al. 2019).
    alpha : float, default=0.001
        Failure probability of CERTIFY and PREDICT.  No training parameter uses this name.
    n_predict : int, default=1000
        Draws per input behind ``predict``, ``predict_proba`` and ``predict_or_abstain``.
    certify_batch_size : int, default=1000
        Noisy inputs per forward pass in certification and prediction.
    precision : {"fp32", "bf16", "fp16", "auto"}, default="fp32"
        Arithmetic of the network's forward (and backward) passes in training,
        prediction and certification (autocast; fp16 on CUDA only).  Noise is always
        drawn and added in fp32, and certificates are about the smoothed classifier of
        the network computed at this precision, so it is part of the model: saved with
        it, recorded in certificates and TSV sidecars.  bf16 is faster on CPUs with
        native bf16 (AVX-512 BF16 or AMX) and several times slower without it, which is
        warned about (docs/benchmarks.md); ``"auto"`` picks bf16 where it is native (such
        a CPU, or a CUDA GPU that supports it) and fp32 elsewhere, resolved where it runs
        (certificates record the precision used).
    channels_last : bool or "auto", default="auto"
        Keep the network's 4-d weights in channels-last memory format, the fast layout
        of convolutions on CPUs and GPUs (measured with bf16 in docs/benchmarks.md).
        Values are unchanged; only the order of floating-point
        sums inside convolutions may differ.  ``"auto"`` chooses it for a network with
        2-d convolutions on a CPU, or at reduced precision on any device: where it was
        measured faster (:func:`smoothsk.models.uses_channels_last`,
        docs/benchmarks.md).
    shared_noise : bool, default=False
        Certification and prediction give every input the same noise draws (one draw of
        each noise block per chunk of inputs; :func:`smoothsk.certify`): per-input
        guarantees are unchanged and inputs' results become correlated.  Faster where
        drawing noise costs more than the network (small tabular models).
    input_range : (float, float) or None, default=(0.0, 1.0)
        The values inputs may take, checked on every array ``fit``, ``predict`` and
        ``certify`` receive.  σ and every certified radius are measured in the inputs'
        units, so pixels of 0…255 (or counts of 0…16) where [0, 1] was meant would give
        radii 255 (16) times too small with nothing said; out-of-range inputs are
        refused with what to do.  Declare another range, or None for any values
        (standardized features); torch Datasets are not checked.
    noise : {"gaussian", "discrete-gaussian"}, default="gaussian"
        The noise of certification and prediction.  ``"discrete-gaussian"`` rounds the
        Gaussian to the lattice of step ``noise_step`` the inputs lie on and forms every
        noisy input exactly, so that certificates hold in floating point (Voráček & Hein,
        ICLR 2023; :mod:`smoothsk.certification.noise`); inputs off the lattice are
        refused.  Training noise stays the float Gaussian (a network trained on it sees
        the rounded noise within half a lattice step per entry).
    noise_step : float, str or None, default=None
        The lattice step of ``"discrete-gaussian"``: None for 1/255 (8-bit images), or
        the spacing of the inputs' values, as a number or a fraction string ("1/16").
    n_threads : int or None, default=None
        torch's CPU threads while the estimator trains, predicts and certifies (restored
        after each call); None keeps the process's setting.  Inside a parallel grid
        search (``GridSearchCV(n_jobs=k)``, joblib's process workers) each worker already
        gets ``cores // k`` threads, so the default does not oversubscribe; set 1 where
        several estimators share a busy machine by other means (docs/scaling.md).
    random_state : int, RandomState or None, default=None
        Seeds training (weight initialisation, shuffling, noise) and the noise of
        certification and prediction; an int makes ``fit`` and every prediction
        reproducible.
    criterion, optimizer, lr, max_epochs, batch_size, train_split, verbose, **kwargs
        As in skorch's ``NeuralNetClassifier``.  Defaults differ: ``criterion=
        CrossEntropyLoss`` (networks return logits), ``train_split=None`` (``fit``
        trains on all the data it is given, as scikit-learn estimators do),
        ``iterator_train__shuffle=True``, and ``optimizer=Adam, lr=1e-3, max_epochs=20,
        batch_size=64``, which train a useful model on small data with nothing but σ
        given (``MLPClassifier``'s optimizer; measured in docs/estimators.md).  The
        papers' SGD schedules are one argument away: :mod:`smoothsk.recipes`.
    lr_schedule : {"cosine", "constant"}, default="cosine"
        The learning rate's course over ``max_epochs`` when ``callbacks`` holds no
        skorch ``LRScheduler`` of its own (one there, as the recipes and the CLI's
        ``--lr-step`` add, replaces it): ``"cosine"`` anneals it from ``lr`` to 0
        (``CosineAnnealingLR`` with ``T_max=max_epochs``, stepped per epoch), so that
        every seed ends at a settled model; ``"constant"`` keeps ``lr``.

    Attributes
    ----------
    classes_ : ndarray
        Labels seen in ``fit`` (sorted), or the ``classes`` parameter in the order
        given (class index ``k`` of the network's outputs is ``classes[k]``);
        predictions are drawn from them.
    n_features_in_ : int
        ``X.shape[1]`` in ``fit``, as scikit-learn defines it (channels for images).
    input_shape_ : tuple
        Shape of one input as seen in ``fit``.
    """

    def __init__(
        self,
        module=None,
        *,
        sigma: float = 0.25,
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        n_predict: int = 1000,
        certify_batch_size: int = 1000,
        precision: str = "fp32",
        channels_last: bool | str = "auto",
        shared_noise: bool = False,
        input_range: tuple | None = (0.0, 1.0),
        noise: str = "gaussian",
        noise_step=None,
        n_threads: int | None = None,
        random_state=None,
        criterion=torch.nn.CrossEntropyLoss,
        optimizer=torch.optim.Adam,
        lr: float = 1e-3,
        max_epochs: int = 20,
        batch_size: int = 64,
        lr_schedule: str = "cosine",
        train_split=None,
        verbose: int = 0,
        **kwargs,
    ):
        kwargs.setdefault("iterator_train__shuffle", True)
        super().__init__(
            module,
            criterion=criterion,
            optimizer=optimizer,
            lr=lr,
            max_epochs=max_epochs,
            batch_size=batch_size,
            train_split=train_split,
            verbose=verbose,
            **kwargs,
        )
        self.sigma = sigma
        self.n0 = n0
        self.n = n
        self.alpha = alpha
        self.n_predict = n_predict
        self.certify_batch_size = certify_batch_size
        self.precision = precision
        self.channels_last = channels_last
        self.shared_noise = shared_noise
        self.input_range = input_range
        self.noise = noise
        self.noise_step = noise_step
        self.n_threads = n_threads
        self.random_state = random_state
        self.lr_schedule = lr_schedule

    def __init_subclass__(cls, **kwargs):
        """Give a subclass's ``__init__`` the full signature it accepts.

        A method's ``__init__`` names only what it adds and passes the rest through
        ``**kwargs``; its signature then hides σ, n, lr, ... from ``help``, IDEs and the
        API reference.  This one lists them: the subclass's own parameters, then the
        keyword-only parameters of the nearest parent's (full) signature that it does
        not name, then ``**kwargs`` (skorch's ``module__*``, ``optimizer__*``, ...).
        Only the signature changes: the parameters skorch and scikit-learn see are the
        estimator's attributes, as before.
        """
        super().__init_subclass__(**kwargs)
        cls.__doc__ = with_shared_parameters(cls.__doc__, SmoothedClassifier.__doc__)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        own = list(inspect.signature(init).parameters.values())
        var_keyword = [p for p in own if p.kind is inspect.Parameter.VAR_KEYWORD]
        if not var_keyword:
            return
        named = {p.name for p in own}
        parent = next(base for base in cls.__mro__[1:] if "__init__" in base.__dict__)
        inherited = [p for p in inspect.signature(parent.__init__).parameters.values()
                     if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in named]
        init.__signature__ = inspect.Signature(
            [p for p in own if p.kind is not inspect.Parameter.VAR_KEYWORD]
            + inherited + var_keyword)

    # What each parameter accepts, checked at fit with scikit-learn's machinery (its
    # messages name the parameter, the allowed values and the value given); a subclass
    # adds its own: ``{**Parent._parameter_constraints, "name": [...]}``.
    _parameter_constraints: dict = {
        "sigma": SIGMA,
        "n0": POSITIVE_INT,
        "n": POSITIVE_INT,
        "alpha": PROBABILITY,
        "n_predict": POSITIVE_INT,
        "certify_batch_size": POSITIVE_INT,
        "precision": [StrOptions(set(PRECISION_CHOICES))],
        "channels_last": ["boolean", StrOptions({"auto"})],
        "shared_noise": ["boolean"],
        "input_range": [tuple, list, None],
        "noise": [StrOptions(set(NOISES))],
        "noise_step": [None, *POSITIVE, str],
        "n_threads": [*POSITIVE_INT, None],
        "random_state": ["random_state"],
        "max_epochs": POSITIVE_INT,
        "lr_schedule": [StrOptions({"cosine", "constant"})],
    }

    # The hooks a method author sets (docs/architecture.md); the registry
    # (:mod:`smoothsk.methods.registry`) reads them.
    method_name: str | None = None
    """The method's name in ``smoothsk train --method``, recipes and certification
    sidecars (``None`` for a class outside :data:`smoothsk.methods.registry.METHODS`)."""

    display_name: str = ""
    """How tables and plots name the method (``"SmoothMix"``)."""

    sigma_fixed_by_training: bool = True
    """Whether ``fit`` trains the network for its σ, so that certifying at another σ
    (``set_params(sigma=...)`` after ``fit``) is refused.  False where ``fit`` trains
    nothing (:class:`~smoothsk.PretrainedSmoothingClassifier`)."""

    fit_needs_labels: bool = True
    """Whether ``fit`` needs ``y``.  False where the classes come from a model that is
    only read (:class:`~smoothsk.PretrainedSmoothingClassifier`), so ``fit(X)`` works."""

    def __sklearn_clone__(self):
        if not self.side_model_params:
            return super().__sklearn_clone__()
        params = self.get_params(deep=False)
        for key, value in params.items():
            inner = unwrap_frozen(value)
            keep = key in self.side_model_params and (
                isinstance(value, torch.nn.Module) or inner is not value
                or is_fitted_model(value))
            params[key] = value if keep else clone(value, safe=False)
        return type(self)(**params)

    def _get_param_names(self):
        # skorch lists private bookkeeping (``_params_to_validate``) as a parameter;
        # it is rebuilt by ``__init__``, so clone and set_params need not see it.
        return [name for name in super()._get_param_names() if not name.startswith("_")]

    # ------------------------------------------------------------------ training
    @abc.abstractmethod
    def training_loss(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scalar loss of one training batch: a method's one hook to write.

        Parameters
        ----------
        X, y : torch.Tensor
            The batch's inputs and class indices (encoded labels), on the device.
        """

    def fit(self, X, y=None, **fit_params):
        """Learn ``classes_`` and train the base network with :meth:`training_loss`.

        ``X`` is an array or tensor of shape ``(N, ...)`` with ``y`` of any labels,
        or a torch ``Dataset`` of ``(x, class_index)`` pairs with ``y=None`` and the
        ``classes`` parameter giving the labels.  With ``warm_start=True`` a fitted
        estimator continues training.  With a
        :class:`~smoothsk.io.checkpoint.TrainingCheckpoint` among the callbacks, a
        checkpoint of the same run is restored and only the missing epochs are trained.

        Parameters
        ----------
        X : array-like, tensor or torch Dataset
            Training inputs (in ``input_range``).
        y : array-like or None, default=None
            Their labels (None for a Dataset of pairs).
        **fit_params
            Passed to skorch's ``fit``.

        Returns
        -------
        self
        """
        self.prepare_side_models(X, y, partial=False)
        warm = self.warm_start and self.initialized_ and hasattr(self, "classes_fitted_")
        X, y = self.prepare_fit_data(X, y, fit_params, reset=not warm)
        with seeded_torch(self.random_state, self.device), torch_threads(self.n_threads), \
                self.training_context():
            if not warm:
                self.initialize()
            if not warm:
                self.check_network_output(X)
            done = 0 if warm else self.restore_checkpoint(X, y)
            if done >= self.max_epochs:
                return self
            return NeuralNetClassifier.partial_fit(self, *self.training_data(X, y),
                                                   epochs=self.max_epochs - done)

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        """Train for ``max_epochs`` more epochs without re-initialising the network.

        The first call learns ``classes_`` from ``classes`` (or ``y``).  Later calls
        are not re-seeded, so that they see fresh shuffles and noise.

        Parameters
        ----------
        X : array-like, tensor or torch Dataset
            Training inputs (in ``input_range``).
        y : array-like or None, default=None
            Their labels.
        classes : array-like or None, default=None
            Every label the estimator will see (scikit-learn's ``partial_fit``
            convention); needed on the first call when ``y`` lacks some.
        **fit_params
            Passed to skorch's ``partial_fit``.

        Returns
        -------
        self
        """
        if not self.side_models_prepared():
            self.prepare_side_models(X, y, partial=True)
        first = not (self.initialized_ and hasattr(self, "classes_fitted_"))
        X, y = self.prepare_fit_data(X, y, fit_params, reset=first, classes=classes)
        if first:
            self.initialize()
            self.check_network_output(X)
        with torch_threads(self.n_threads), self.training_context():
            return NeuralNetClassifier.partial_fit(self, *self.training_data(X, y))

    @property
    def classes_(self) -> np.ndarray:
        try:
            return self.classes_fitted_
        except AttributeError as exc:
            raise AttributeError(f"{type(self).__name__} has no classes_ before fit.") from exc

    def initialize_module(self):
        if self.module is not None:
            super().initialize_module()
        elif not hasattr(self, "input_shape_"):
            raise NotFittedError("The default network is built in fit, from the data's shape.")
        else:
            self.module_ = self._default_network()
        self._apply_memory_format()
        return self

    def _apply_memory_format(self) -> None:
        """The network's layout as ``channels_last`` asks for the current device and
        precision (a layout changes no value, so a fitted network may switch)."""
        wanted = uses_channels_last(self.module_, self.channels_last, self.device,
                                    self.precision)
        self.module_ = self.module_.to(
            memory_format=torch.channels_last if wanted else torch.contiguous_format)

    def _default_network(self) -> torch.nn.Module:
        """The network of ``module=None``, sized from the data; its name is kept in
        ``default_network_`` (and in model files)."""
        kwargs = self.get_params_for("module")
        self.default_network_ = getattr(self, "default_network_", None) or \
            default_network_name(self.input_shape_, kwargs)
        return default_network(self.default_network_, self.input_shape_, len(self.classes_),
                               kwargs)

    def set_params(self, **params):
        """As skorch's; a new ``device`` after ``fit`` also moves the fitted network, and a
        new ``device``, ``precision`` or ``channels_last`` sets its memory layout again."""
        if "device" in params:
            self.check_device_available(params["device"])
        super().set_params(**params)
        if getattr(self, "initialized_", False):
            if "device" in params:
                self.module_.to(self.device)
            if {"device", "precision", "channels_last"} & set(params):
                self._apply_memory_format()
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.non_deterministic = self.random_state is None
        return tags
