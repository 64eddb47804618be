"""The shared base of every smoothsk estimator.

:class:`SmoothedClassifier` is a skorch ``NeuralNetClassifier`` that owns what all
randomized-smoothing methods share: the noise level σ, the certification
parameters, label encoding, the smoothed ``predict`` / ``predict_proba``,
``certify`` and ``predict_or_abstain``, seeding, and scikit-learn tags.  A
training method subclasses it and supplies one thing, :meth:`training_loss`,
which calls a pure loss function of its own module.
"""

from __future__ import annotations

import abc
import contextlib
import inspect
import numbers
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.utils._param_validation import (  # scikit-learn's own declarative checks
    Interval,
    StrOptions,
    validate_parameter_constraints,
)
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import (
    check_consistent_length,
    check_is_fitted,
    column_or_1d,
    validate_data,
)
from skorch import NeuralNetClassifier
from skorch.callbacks import EpochScoring, LRScheduler
from skorch.dataset import unpack_data
from skorch.utils import to_numpy, to_tensor

from smoothsk.certification import core, sampling
from smoothsk.certification.adaptive import RadiusCertificate, certify_radius
from smoothsk.certification.bounds import check_alpha
from smoothsk.certification.core import Certificate, labels_or_marker, predict_from_counts
from smoothsk.certification.noise import NOISES, check_noise_options, noise_test_alpha
from smoothsk.certification.radii import DEFAULT_RADII_GROWTH, RadiiCertificate, certify_radii
from smoothsk.certification.sampling import first_field, precision_context
from smoothsk.models import MLP, LeNet, uses_channels_last

__all__ = ["SmoothedClassifier", "is_fitted_estimator", "unwrap_frozen"]

# Constraints shared by the methods' ``_parameter_constraints`` tables.
POSITIVE_INT = [Interval(Integral, 1, None, closed="left")]
NON_NEGATIVE_INT = [Interval(Integral, 0, None, closed="left")]
POSITIVE = [Interval(Real, 0, None, closed="neither")]
NON_NEGATIVE = [Interval(Real, 0, None, closed="left")]


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


@contextlib.contextmanager
def _seeded_torch(random_state, device):
    """Seed torch's global generators inside the block and restore them after.

    Training uses the global generator (weight init, DataLoader shuffling, training
    noise); forking keeps a seeded ``fit`` from changing the caller's random stream.
    """
    if random_state is None:
        yield
        return
    if isinstance(random_state, numbers.Integral):
        seed = int(random_state)
    else:
        seed = int(random_state.randint(np.iinfo(np.int32).max))
    devices = []
    if str(device).startswith("cuda") and torch.cuda.is_available():
        devices = [torch.device(device).index or 0]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def check_input_range(input_range) -> tuple[float, float] | None:
    """``input_range`` as ``(low, high)`` floats with ``low < high``, or None."""
    if input_range is None:
        return None
    try:
        low, high = (float(v) for v in input_range)
    except (TypeError, ValueError):
        raise ValueError(f"input_range must be (low, high) or None; got {input_range!r}.") \
            from None
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(f"input_range must be finite with low < high; got {input_range!r}.")
    return low, high


def resolve_clip_range(clip_range, input_range) -> tuple[float, float] | None:
    """An attack's clip range: ``"input_range"`` follows the estimator's declared domain.

    Parameters
    ----------
    clip_range : (float, float), None or "input_range"
        What the estimator was given; None clips nothing.
    input_range : (float, float) or None
        The estimator's declared input domain (None: undeclared, so nothing is clipped).
    """
    if isinstance(clip_range, str):
        if clip_range != "input_range":
            raise ValueError(f"clip_range must be (low, high), None or 'input_range'; "
                             f"got {clip_range!r}.")
        return check_input_range(input_range)
    return check_input_range(clip_range)


def check_inputs_in_range(X: np.ndarray, input_range, owner: str) -> None:
    """Refuse inputs outside the declared ``input_range`` (None: any values)."""
    bounds = check_input_range(input_range)
    if bounds is None or X.size == 0:
        return
    low, high = bounds
    seen_low, seen_high = float(np.nanmin(X)), float(np.nanmax(X))
    if seen_low >= low and seen_high <= high:
        return
    hint = ""
    if seen_low >= 0 and seen_high > high:
        scale = 255 if seen_high > 16 else round(seen_high)
        hint = f" (e.g. X / {scale:g}{' for 8-bit images' if scale == 255 else ''})"
    raise ValueError(
        f"X holds values in [{seen_low:g}, {seen_high:g}], outside {owner}'s "
        f"input_range={tuple(bounds)}: sigma and every certified radius are measured in the "
        f"inputs' units, so inputs on another scale would be certified at radii that mean "
        f"something else. Scale X to the range{hint}, or declare the range the model "
        f"works in with input_range=(low, high) (None: any values, unchecked).")


def default_network_name(input_shape, module_params: dict) -> str:
    """``"LeNet"`` for square images of side ≥ 16 (``(channels, side, side)``), else
    ``"MLP"`` — also when ``module__hidden_units`` asks for the MLP's widths."""
    square = len(input_shape) == 3 and input_shape[1] == input_shape[2] >= 16
    return "LeNet" if square and "hidden_units" not in module_params else "MLP"


def _clean_accuracy(net, X, y) -> float:
    """Accuracy of the base network's argmax on clean inputs against skorch's encoded targets.

    Used as ``valid_acc`` with skorch's inference cache, so it costs no extra forward pass.
    """
    logits = net.forward(X, training=False)
    return float((to_numpy(logits).argmax(axis=1) == np.asarray(y)).mean())


def _given_classes(classes) -> np.ndarray:
    """``classes`` as an array in the order given: class index ``k`` is ``classes[k]``.

    The order is kept because it is the order of a network's outputs (a teacher's
    logits, a Dataset's class indices); sorting it would permute the predictions.
    """
    classes = np.asarray(classes)
    if classes.ndim != 1 or len(np.unique(classes)) != len(classes):
        raise ValueError(
            f"classes must be a 1-d list of distinct labels; got {classes.tolist()!r}."
        )
    return classes


class SmoothedClassifier(NeuralNetClassifier, metaclass=abc.ABCMeta):
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
    precision : {"fp32", "bf16", "fp16"}, default="fp32"
        Arithmetic of the network's forward (and backward) passes in training,
        prediction and certification (autocast; fp16 on CUDA only).  Noise is always
        drawn and added in fp32, and certificates are about the smoothed classifier of
        the network computed at this precision, so it is part of the model: saved with
        it, recorded in certificates and TSV sidecars.  bf16 is faster on CPUs with
        AVX-512 BF16 (measured in docs/benchmarks.md).
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
        "sigma": POSITIVE,
        "n0": POSITIVE_INT,
        "n": POSITIVE_INT,
        "alpha": [Interval(Real, 0, 1, closed="neither")],
        "n_predict": POSITIVE_INT,
        "certify_batch_size": POSITIVE_INT,
        "precision": [StrOptions({"fp32", "bf16", "fp16"})],
        "channels_last": ["boolean", StrOptions({"auto"})],
        "shared_noise": ["boolean"],
        "input_range": [tuple, list, None],
        "noise": [StrOptions(set(NOISES))],
        "noise_step": [None, Interval(Real, 0, None, closed="neither"), str],
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

    side_model_params: tuple = ()
    """Parameters holding models that are only read (a CRT teacher, CAT-RS's target
    model): ``clone`` keeps a fitted one by reference, and skorch never registers,
    moves or re-initialises them."""

    def __setattr__(self, name, value):
        if name in self.side_model_params:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

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

    @property
    def _default_callbacks(self):
        # skorch's valid_acc calls predict, which here is the (slow) smoothed vote in
        # labels; score the base network's clean logits from the cache instead.
        callbacks = dict(super()._default_callbacks)
        callbacks["valid_acc"] = EpochScoring(_clean_accuracy, name="valid_acc",
                                              lower_is_better=False)
        if isinstance(self.lr_schedule, str) and self.lr_schedule == "cosine" \
                and not self._has_own_lr_scheduler():
            # Adam's last iterates at a constant rate wander: on 5,000 Fashion-MNIST
            # images the smoothed accuracy of 4 seeds spread over 2.2 points; decaying
            # the rate to 0 over max_epochs ends every run at a settled model.
            callbacks["lr_schedule"] = LRScheduler(
                policy=torch.optim.lr_scheduler.CosineAnnealingLR, T_max=self.max_epochs)
        return list(callbacks.items())

    def _has_own_lr_scheduler(self) -> bool:
        """Whether ``callbacks`` holds a learning-rate scheduler (it replaces ours)."""
        if not isinstance(self.callbacks, (list, tuple)):
            return False
        return any(isinstance(cb, LRScheduler) or cb is LRScheduler
                   for cb in (item[1] if isinstance(item, tuple) else item
                              for item in self.callbacks))

    # ------------------------------------------------------------------ training
    @abc.abstractmethod
    def training_loss(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scalar loss of one training batch (``X`` and encoded ``y`` on the device)."""

    @property
    def noise_level_(self) -> float:
        """The σ in use: ``sigma`` here; subclasses may resolve it in ``fit``."""
        return self.sigma

    @property
    def epoch_index_(self) -> int:
        """Zero-based index of the current training epoch (for warm-up schedules)."""
        return 0 if self.history is None else max(len(self.history) - 1, 0)

    def train_step_single(self, batch, **fit_params):
        self._set_training(True)
        Xi, yi = unpack_data(batch)
        with precision_context(self.precision, self.device):
            loss = self.training_loss(to_tensor(Xi, self.device), to_tensor(yi, self.device))
        self.check_training_loss(loss)
        scaler = self._loss_scaler()
        (loss if scaler is None else scaler.scale(loss)).backward()
        return {"loss": loss, "y_pred": None}

    def check_training_loss(self, loss: torch.Tensor) -> None:
        """Raise ``FloatingPointError`` when a step's loss is not finite.

        Every training step calls it (the Accelerate step of :mod:`smoothsk.hf` too), so
        a diverged run stops with what to do instead of being saved as trained.  skorch
        reads the loss as a number after every step anyway, so this costs no extra
        device synchronisation.
        """
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"The training loss is {loss.item()} at epoch {self.epoch_index_ + 1}: training "
                "diverged. Lower the learning rate (lr) or sigma, or check the inputs."
            )

    def _loss_scaler(self):
        """torch.amp's ``GradScaler`` for fp16 training, else None.

        fp16 gradients underflow to zero without loss scaling (torch's mixed-precision
        recipe: scale the loss, unscale the gradients, skip steps whose gradients
        overflow); bf16 has fp32's exponent range and needs none.
        """
        if self.precision != "fp16":
            return None
        if getattr(self, "grad_scaler_", None) is None:
            self.grad_scaler_ = torch.amp.GradScaler(torch.device(self.device).type)
        return self.grad_scaler_

    def _step_optimizer(self, step_fn):
        scaler = self._loss_scaler()
        if scaler is None:
            return super()._step_optimizer(step_fn)
        step_fn()  # the scaled backward pass; GradScaler.step takes no closure
        for name in self._optimizers:
            scaler.step(getattr(self, name + "_"))
        scaler.update()
        return None

    def initialize_optimizer(self, *args, **kwargs):
        self.grad_scaler_ = None  # a new run starts from the default loss scale
        return super().initialize_optimizer(*args, **kwargs)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("grad_scaler_", None)  # device state, rebuilt when training continues
        return state

    def _check_smoothing_params(self):
        """Every parameter against ``_parameter_constraints`` (scikit-learn's checks)."""
        validate_parameter_constraints(
            self._parameter_constraints,
            {name: getattr(self, name) for name in self._parameter_constraints},
            caller_name=type(self).__name__,
        )
        sampling.check_precision(self.precision, self.device)  # fp16 needs a CUDA device
        check_noise_options(self.noise, self.noise_step)  # e.g. a bad fraction
        check_input_range(self.input_range)

    def _validate_X(self, X, *, reset: bool):
        """Arrays and tensors become float32 arrays of a fixed per-sample shape."""
        if isinstance(X, torch.utils.data.Dataset) and not isinstance(X, torch.Tensor):
            if reset:
                self.input_shape_ = tuple(torch.as_tensor(first_field(X[0])).shape)
            return X
        if isinstance(X, torch.Tensor):
            X = X.detach().cpu().numpy()
        X = validate_data(self, X, reset=reset, allow_nd=True, dtype=np.float32)
        check_inputs_in_range(X, self.input_range, type(self).__name__)
        if reset:
            self.input_shape_ = tuple(X.shape[1:])
        elif tuple(X.shape[1:]) != self.input_shape_:
            raise ValueError(
                f"X has per-sample shape {tuple(X.shape[1:])}, but {type(self).__name__} "
                f"was fitted on inputs of shape {self.input_shape_}."
            )
        return X

    def _prepare_fit_data(self, X, y, fit_params, *, reset: bool, classes=None):
        """Validate ``X``, encode ``y`` against ``classes_`` (learned when ``reset``)."""
        if fit_params:
            raise TypeError(
                f"{type(self).__name__}.fit does not accept {sorted(fit_params)}; "
                "sample_weight and other fit parameters are not supported."
            )
        self._check_smoothing_params()
        self._check_cuda_available()
        X = self._validate_X(X, reset=reset)
        if reset:  # a new fit chooses its default network from the new data
            self.__dict__.pop("default_network_", None)
        if not isinstance(X, np.ndarray):  # a torch Dataset of (x, class index) pairs
            if reset:
                classes = self._classes_for_fit() if classes is None else classes
                if classes is None:
                    raise ValueError("Pass classes=[...] when fitting on a torch Dataset.")
                self.classes_fitted_ = _given_classes(classes)
            return X, None
        if y is None and not self.fit_needs_labels and reset:
            self.classes_fitted_ = _given_classes(self._classes_for_fit())  # the model's own
            return X, None
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None."
            )
        y = column_or_1d(y, warn=True)
        check_consistent_length(X, y)
        check_classification_targets(y)
        if reset:
            classes = self._classes_for_fit() if classes is None else classes
            self.classes_fitted_ = np.unique(y) if classes is None else _given_classes(classes)
            if len(self.classes_fitted_) < 2:
                raise ValueError(
                    "The training data has one class; a classifier needs at least 2 "
                    f"classes. Got classes {self.classes_fitted_.tolist()}."
                )
        return X, self._encode_labels(y)

    def _encode_labels(self, y, *, unseen: str = "raise") -> np.ndarray:
        """Class indices of the labels ``y`` in ``classes_``.

        ``unseen="raise"`` rejects labels not seen in fit; ``"mark"`` maps them to −1
        (an index no prediction has, so they never count as correct).
        """
        y = np.asarray(y)
        # classes_ keeps the order it was given in (a teacher's or a Dataset's class
        # indices), so search through a sorting permutation instead of assuming order.
        order = np.argsort(self.classes_, kind="stable")
        rank = np.searchsorted(self.classes_[order], y).clip(0, len(self.classes_) - 1)
        position = order[rank]
        known = self.classes_[position] == y
        if unseen == "raise" and not known.all():
            raise ValueError(
                f"y contains labels not seen in fit: {np.unique(y[~known]).tolist()}. With "
                "partial_fit, pass every label on the first call: partial_fit(X, y, "
                "classes=[...])."
            )
        return np.where(known, position, -1).astype(np.int64)

    def _check_read_model(self, name: str, classes, X, y, input_shape=None) -> None:
        """A model this estimator only reads (a CRT teacher, CAT-RS's target, a classifier
        to smooth) must take inputs of the data's shape and know every label of ``y``
        (of the ``classes`` parameter when ``X`` is a torch Dataset)."""
        if input_shape is not None and tuple(input_shape) != tuple(self.input_shape_):
            raise ValueError(f"{name} takes inputs of shape {tuple(input_shape)} but X has "
                             f"per-sample shape {tuple(self.input_shape_)}.")
        if y is not None and not isinstance(X, torch.utils.data.Dataset):
            labels = np.unique(np.asarray(y))
        else:
            labels = np.asarray([] if self.classes is None else self.classes)
        known = np.asarray(classes).tolist()
        unknown = sorted(set(labels.tolist()) - set(known))
        if unknown:
            raise ValueError(f"y has labels {name} does not know: {unknown}; its classes are "
                             f"{known}.")

    def _classes_for_fit(self):
        """Labels to learn in ``fit``: the ``classes`` parameter, or None to take ``y``'s."""
        return None if self.classes is None or not len(self.classes) else self.classes

    def fit(self, X, y=None, **fit_params):
        """Learn ``classes_`` and train the base network with :meth:`training_loss`.

        ``X`` is an array or tensor of shape ``(N, ...)`` with ``y`` of any labels,
        or a torch ``Dataset`` of ``(x, class_index)`` pairs with ``y=None`` and the
        ``classes`` parameter giving the labels.  With ``warm_start=True`` a fitted
        estimator continues training.  With a
        :class:`~smoothsk.io.checkpoint.TrainingCheckpoint` among the callbacks, a
        checkpoint of the same run is restored and only the missing epochs are trained.
        """
        warm = self.warm_start and self.initialized_ and hasattr(self, "classes_fitted_")
        X, y = self._prepare_fit_data(X, y, fit_params, reset=not warm)
        with _seeded_torch(self.random_state, self.device), self._training_context():
            if not warm:
                self.initialize()
            if not warm:
                self._check_network_output(X)
            done = 0 if warm else self._restore_checkpoint(X, y)
            if done >= self.max_epochs:
                return self
            return NeuralNetClassifier.partial_fit(self, *self._training_data(X, y),
                                                   epochs=self.max_epochs - done)

    def _check_network_output(self, X):
        """Run the new network on one input: our error, not torch's, for a mismatch."""
        sample = X[:1] if isinstance(X, np.ndarray) else \
            np.asarray(first_field(X[0]), dtype=np.float32)[None]
        was_training = self.module_.training
        self.module_.eval()
        try:
            with torch.no_grad():
                logits = self.module_(to_tensor(sample, self.device))
        except (RuntimeError, ValueError, TypeError) as exc:
            raise ValueError(
                f"The network cannot process inputs of shape {tuple(sample.shape[1:])} "
                f"({type(exc).__name__}: {exc}). A convolutional network needs image-shaped "
                "inputs (N, channels, height, width): reshape X, e.g. "
                "X.reshape(len(X), 1, 8, 8) for digits."
            ) from exc
        finally:
            self.module_.train(was_training)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            raise ValueError("The network must return logits of shape (batch, n_classes); got "
                             f"{getattr(logits, 'shape', type(logits))}.")
        self._check_n_classes(logits.shape[1])

    def _restore_checkpoint(self, X, y) -> int:
        """Epochs restored from a :class:`~smoothsk.io.checkpoint.TrainingCheckpoint`."""
        from smoothsk.io.checkpoint import TrainingCheckpoint, data_digest

        checkpoints = [cb for _, cb in self.callbacks_ if isinstance(cb, TrainingCheckpoint)]
        if not checkpoints:
            return 0
        self.training_data_digest_ = data_digest(X, y)  # the run's fingerprint reads it
        return checkpoints[0].restore(self)

    def initialize_callbacks(self):
        """skorch's callbacks, with every :class:`~smoothsk.io.checkpoint.TrainingCheckpoint`
        moved last: it records the state the next epoch starts from, so a learning-rate
        scheduler listed after it must have stepped before it writes."""
        from smoothsk.io.checkpoint import TrainingCheckpoint

        super().initialize_callbacks()
        self.callbacks_ = sorted(self.callbacks_,
                                 key=lambda item: isinstance(item[1], TrainingCheckpoint))
        return self

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        """Train for ``max_epochs`` more epochs without re-initialising the network.

        The first call learns ``classes_`` from ``classes`` (or ``y``).  Later calls
        are not re-seeded, so that they see fresh shuffles and noise.
        """
        first = not (self.initialized_ and hasattr(self, "classes_fitted_"))
        X, y = self._prepare_fit_data(X, y, fit_params, reset=first, classes=classes)
        if first:
            self.initialize()
            self._check_network_output(X)
        with self._training_context():
            return NeuralNetClassifier.partial_fit(self, *self._training_data(X, y))

    def _training_data(self, X, y):
        """What skorch iterates over in training: ``(X, y)`` here; a method whose loss
        needs more per example (CAT-RS's targets) returns a Dataset and None."""
        return X, y

    @contextlib.contextmanager
    def _training_context(self):
        # Callbacks run inside fit see skorch's encoded targets (class indices); the
        # scorers read this flag to map them back to labels.
        self._fitting = True
        try:
            yield
            # the σ the network was trained at: certifying at another is refused
            self.trained_sigma_ = float(self.noise_level_)
        finally:
            del self._fitting

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
        name = getattr(self, "default_network_", None) or default_network_name(
            self.input_shape_, kwargs)
        self.default_network_ = name
        if name == "LeNet":
            channels, side = self.input_shape_[0], self.input_shape_[1]
            return LeNet(**{"num_classes": len(self.classes_), "in_channels": channels,
                            "image_size": side, **kwargs})
        return MLP(**{"in_features": int(np.prod(self.input_shape_)),
                      "num_classes": len(self.classes_), **kwargs})

    # ------------------------------------------------------------------ smoothed inference
    def _check_cuda_available(self, device="unset"):
        device = self.device if device == "unset" else device
        if device is not None and torch.device(device).type == "cuda" \
                and not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r}, but torch sees no CUDA GPU here (or this torch build "
                "has no CUDA support); set device='cpu'."
            )

    def set_params(self, **params):
        """As skorch's; a new ``device`` after ``fit`` also moves the fitted network, and a
        new ``device``, ``precision`` or ``channels_last`` sets its memory layout again."""
        if "device" in params:
            self._check_cuda_available(params["device"])
        super().set_params(**params)
        if getattr(self, "initialized_", False):
            if "device" in params:
                self.module_.to(self.device)
            if {"device", "precision", "channels_last"} & set(params):
                self._apply_memory_format()
        return self

    @contextlib.contextmanager
    def _progress(self, total: int, description: str):
        """A progress bar over inputs when ``verbose`` (tqdm, or log lines off a terminal)."""
        from smoothsk.progress import progress_bar

        bar = progress_bar(total, f"{type(self).__name__} {description}",
                           enabled=bool(self.verbose))
        try:
            yield bar
        finally:
            bar.close()

    def _check_fitted_X(self, X):
        self.prepare_without_fit(X)
        check_is_fitted(self, ["module_", "classes_fitted_"])
        self._check_cuda_available()
        self._check_sigma_unchanged()
        return self._validate_X(X, reset=False)

    def prepare_without_fit(self, X) -> None:
        """The hook of an estimator that is ready before ``fit`` (a prefit classifier):
        called with the inputs of the first ``predict`` or ``certify``; a no-op here."""

    def _check_sigma_unchanged(self):
        trained = getattr(self, "trained_sigma_", None)
        if not self.sigma_fixed_by_training or trained is None:
            return
        if not np.isclose(float(self.noise_level_), trained, rtol=1e-12, atol=0):
            raise ValueError(
                f"This {type(self).__name__} was trained at sigma={trained:g}, but its sigma "
                f"is now {self.noise_level_:g} (set_params after fit): its certificates would "
                "describe a smoothed classifier its network was not trained for. Set sigma "
                f"back to {trained:g}, or fit again to train at the new sigma (to smooth a "
                "fitted classifier at any sigma, use PretrainedSmoothingClassifier).")

    def _smoothed_counts(self, X) -> np.ndarray:
        X = self._check_fitted_X(X)
        with self._progress(len(X), "predict") as bar:
            counts = sampling.class_counts(
                self.module_, X, self.noise_level_, self.n_predict,
                batch_size=self.certify_batch_size, random_state=self.random_state,
                precision=self.precision, progress=bar.update, shared_noise=self.shared_noise,
                **self.noise_options(),
            )
        self._check_n_classes(counts.shape[1])
        return counts

    def noise_options(self) -> dict:
        """The ``noise`` and ``noise_step`` every certification and prediction uses."""
        return {"noise": self.noise, "noise_step": self.noise_step}

    def _check_n_classes(self, n_outputs: int):
        if n_outputs != len(self.classes_):
            raise ValueError(
                f"The network returns {n_outputs} logits but fit saw {len(self.classes_)} "
                "classes; set the network's number of outputs (e.g. module__num_classes)."
            )

    def predict_proba(self, X) -> np.ndarray:
        """Monte Carlo estimate of ``P(f(x + δ) = c)`` from ``n_predict`` draws per input.

        Columns follow ``classes_``; rows sum to 1.
        """
        return self._smoothed_counts(X) / self.n_predict

    def predict(self, X) -> np.ndarray:
        """The smoothed classifier's vote ``argmax_c P(f(x + δ) = c)``, as labels.

        Never abstains; :meth:`predict_or_abstain` adds Cohen's significance test.
        """
        votes = self._smoothed_counts(X).argmax(axis=1)
        return self.classes_[votes]

    def score(self, X, y, sample_weight=None) -> float:
        """Accuracy of the smoothed classifier's vote (:meth:`predict`) on ``(X, y)``.

        As scikit-learn's ``ClassifierMixin.score``; labels the model cannot predict
        raise instead of counting as wrong.
        """
        self._encode_labels(np.asarray(y))
        return super().score(X, y, sample_weight=sample_weight)

    def predict_or_abstain(self, X, *, abstain_label=None) -> np.ndarray:
        """Cohen et al.'s PREDICT with ``n_predict`` draws and failure probability ``alpha``.

        Returns labels from ``classes_`` with ``abstain_label`` where the two-sided
        binomial test between the top two classes is not significant at ``alpha``.
        The returned label differs from ``g(x)`` with probability at most ``alpha``.
        ``abstain_label=None`` uses :func:`smoothsk.certification.core.default_abstain_label`
        (−1 for integer labels, ``"abstain"`` for strings): a marker of the labels'
        dtype, which scikit-learn's metrics accept (abstentions count as wrong).
        """
        alpha = check_alpha(self.alpha)  # set_params may have changed it since fit
        counts = self._smoothed_counts(X)
        alpha = noise_test_alpha(alpha, self.n_predict, X, sigma=self.noise_level_,
                                 **self.noise_options())
        index = predict_from_counts(counts, alpha)
        return labels_or_marker(self.classes_, index, abstain_label)

    def certify(
        self, X, *, n0=None, n=None, alpha=None, batch_size=None, random_state=None,
        index_offset: int = 0, n_jobs: int | None = None, chunk_size: int | None = None,
        threads_per_worker: int | None = None, bound: str = "binary",
        interval: str = "clopper-pearson", sequential: bool = False,
        max_n: int | None = None, tolerance: float | None = None,
    ) -> Certificate:
        """Cohen et al.'s CERTIFY on every input (see :func:`smoothsk.certify`).

        Defaults come from the estimator's ``n0``, ``n``, ``alpha``,
        ``certify_batch_size`` and ``random_state``.  The result's ``labels()``
        maps class indices to ``classes_``; ``is_correct(y)`` compares with labels.
        ``n_jobs`` spreads the inputs over joblib workers (identical certificates).
        ``bound`` ("binary", "two-class") and ``interval`` ("clopper-pearson",
        "randomized") choose how the counts become a radius
        (:func:`smoothsk.certification.radius.certified_radius`).  ``sequential=True``
        (with ``max_n`` and ``tolerance``) is the anytime CERTIFY of
        :func:`smoothsk.certify`.
        """
        X = self._check_fitted_X(X)
        with self._progress(len(X), "certify") as bar:
            result = core.certify(
                self.module_, X, self.noise_level_,
                n0=self.n0 if n0 is None else n0,
                n=self.n if n is None else n,
                alpha=self.alpha if alpha is None else alpha,
                batch_size=self.certify_batch_size if batch_size is None else batch_size,
                random_state=self.random_state if random_state is None else random_state,
                index_offset=index_offset, n_jobs=n_jobs, chunk_size=chunk_size,
                threads_per_worker=threads_per_worker, precision=self.precision,
                progress=bar.update, shared_noise=self.shared_noise, bound=bound,
                interval=interval, sequential=sequential, max_n=max_n, tolerance=tolerance,
                **self.noise_options(),
            )
        self._check_n_classes(result.counts.shape[1])
        result.classes = self.classes_
        return result

    def _label_indices(self, X, y):
        """Labels ``y`` as class indices for the sequential certifications (None stays
        None; labels the model never saw are marked so they never match)."""
        if y is None:
            return None
        y = column_or_1d(y)
        if len(y) != len(X):
            raise ValueError(f"X has {len(X)} inputs but y has {len(y)} labels.")
        return self._encode_labels(y, unseen="mark")

    def certify_radius(
        self, X, radius: float, *, y=None, n0=None, n=None, alpha=None, test: str = "rounds",
        first_round: int = 64, growth: float | None = None, batch_size=None,
        random_state=None, index_offset: int = 0,
    ) -> RadiusCertificate:
        """Adaptive fixed-radius certification (see :func:`smoothsk.certify_radius`).

        Decides per input whether the smoothed classifier is certified at ``radius``,
        stopping each input's sampling as soon as the answer is known; ``n`` is the
        largest number of estimation draws.  With ``y`` (labels), inputs whose
        selected class is not their label draw no estimation samples.  ``test`` picks
        the sequential test (``"rounds"`` or ``"betting"``).  Defaults come from the
        estimator as in :meth:`certify`.
        """
        X = self._check_fitted_X(X)
        y_index = self._label_indices(X, y)
        with self._progress(len(X), f"certify at r={radius:g}") as bar:
            result = certify_radius(
                self.module_, X, self.noise_level_, radius, y=y_index,
                n0=self.n0 if n0 is None else n0,
                n=self.n if n is None else n,
                alpha=self.alpha if alpha is None else alpha,
                test=test, first_round=first_round, growth=growth,
                batch_size=self.certify_batch_size if batch_size is None else batch_size,
                random_state=self.random_state if random_state is None else random_state,
                index_offset=index_offset, precision=self.precision, progress=bar.update,
                shared_noise=self.shared_noise, **self.noise_options(),
            )
        self._check_n_classes(result.selection_counts.shape[1])
        result.classes = self.classes_
        return result

    def certify_radii(
        self, X, radii, *, y=None, n0=None, max_n=None, alpha=None, first_round: int = 64,
        growth: float | None = None, batch_size=None, random_state=None,
        index_offset: int = 0,
    ) -> RadiiCertificate:
        """The certified-accuracy curve at the grid ``radii``, sequentially (see
        :func:`smoothsk.certify_radii`): each input draws until every grid radius is
        decided, or ``max_n`` (default: ``n``) estimation draws.  With ``y`` (labels),
        inputs whose selected class is not their label draw no estimation samples.
        Defaults come from the estimator as in :meth:`certify`.
        """
        X = self._check_fitted_X(X)
        y_index = self._label_indices(X, y)
        with self._progress(len(X), "certify radii") as bar:
            result = certify_radii(
                self.module_, X, self.noise_level_, radii, y=y_index,
                n0=self.n0 if n0 is None else n0,
                max_n=self.n if max_n is None else max_n,
                alpha=self.alpha if alpha is None else alpha,
                first_round=first_round,
                growth=DEFAULT_RADII_GROWTH if growth is None else growth,
                batch_size=self.certify_batch_size if batch_size is None else batch_size,
                random_state=self.random_state if random_state is None else random_state,
                index_offset=index_offset, precision=self.precision, progress=bar.update,
                shared_noise=self.shared_noise, **self.noise_options(),
            )
        self._check_n_classes(result.selection_counts.shape[1])
        result.classes = self.classes_
        return result

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.non_deterministic = self.random_state is None
        return tags
