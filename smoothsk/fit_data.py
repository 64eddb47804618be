"""What ``fit`` receives, checked: parameters, inputs, labels and the models only read.

:class:`FitDataMixin` validates every parameter against ``_parameter_constraints``
(:mod:`smoothsk.validation`), turns arrays and tensors into float32 arrays of a fixed
per-sample shape inside the declared ``input_range``, learns ``classes_`` and encodes
labels as class indices, and checks that a model the estimator only reads (a teacher, a
target, a classifier to smooth) fits the data.  Method authors call its public methods
from :meth:`~FitDataMixin.prepare_side_models`, the hook ``fit`` and ``partial_fit`` call
first, and may override :meth:`~FitDataMixin.classes_for_fit`.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_consistent_length, column_or_1d, validate_data
from skorch.utils import to_tensor

from smoothsk.certification.inputs import first_field
from smoothsk.certification.noise import check_noise_options
from smoothsk.certification.precision import check_precision
from smoothsk.validation import check_input_range, check_inputs_in_range, check_parameters

__all__ = ["FitDataMixin", "given_classes"]


def given_classes(classes) -> np.ndarray:
    """``classes`` as an array in the order given: class index ``k`` is ``classes[k]``.

    The order is kept because it is the order of a network's outputs (a teacher's
    logits, a Dataset's class indices); sorting it would permute the predictions.

    Parameters
    ----------
    classes : array-like
        Distinct labels, in the order of the network's outputs.
    """
    classes = np.asarray(classes)
    if classes.ndim != 1 or len(np.unique(classes)) != len(classes):
        raise ValueError(
            f"classes must be a 1-d list of distinct labels; got {classes.tolist()!r}."
        )
    return classes


class FitDataMixin:
    """Parameter, input and label checks of a smoothsk estimator's ``fit``."""

    side_model_params: tuple = ()
    """Parameters holding models that are only read (a CRT teacher, CAT-RS's target
    model): ``clone`` keeps a fitted one by reference, and skorch never registers,
    moves or re-initialises them."""

    def __setattr__(self, name, value):
        if name in self.side_model_params:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    prepared_side_models: tuple = ()
    """The fitted attributes :meth:`prepare_side_models` sets (a CRT student's
    ``teacher_network_``): once they all exist, ``partial_fit`` keeps them as they are
    and does not call the hook again."""

    def side_models_prepared(self) -> bool:
        """Whether every attribute of ``prepared_side_models`` exists (False when the
        estimator declares none, so that the hook always runs)."""
        return bool(self.prepared_side_models) and all(
            hasattr(self, name) for name in self.prepared_side_models)

    def prepare_side_models(self, X, y, *, partial: bool) -> None:
        """Hook: fit or take the models only read (``side_model_params``), check them
        against ``(X, y)`` and keep what training needs; the default has none.

        ``fit`` calls it first with ``partial=False``; ``partial_fit`` calls it first with
        ``partial=True`` until :meth:`side_models_prepared`, and then keeps the models
        already prepared as they are.

        Parameters
        ----------
        X, y
            The training data, as ``fit`` received them.
        partial : bool
            Whether the call comes from ``partial_fit``.
        """

    def validate_parameters(self):
        """Every parameter against ``_parameter_constraints`` (scikit-learn's checks)."""
        check_parameters(
            self._parameter_constraints,
            {name: getattr(self, name) for name in self._parameter_constraints},
            type(self).__name__,
        )
        check_precision(self.precision, self.device)  # fp16 needs a CUDA device
        check_noise_options(self.noise, self.noise_step)  # e.g. a bad fraction
        check_input_range(self.input_range)

    def check_inputs(self, X, *, reset: bool):
        """Arrays and tensors become float32 arrays of a fixed per-sample shape.

        Parameters
        ----------
        X : array-like, tensor or Dataset
            The inputs (a Dataset passes through; its first item gives the shape).
        reset : bool
            Learn the per-sample shape (``fit``) rather than check it.
        """
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

    def prepare_fit_data(self, X, y, fit_params, *, reset: bool, classes=None):
        """Validate ``X``, encode ``y`` against ``classes_`` (learned when ``reset``).

        Parameters
        ----------
        X, y
            The data of ``fit`` / ``partial_fit``.
        fit_params : dict
            Further fit parameters, refused (none is supported).
        reset : bool
            Learn ``classes_`` and the input shape (``fit``) rather than check them.
        classes : array-like or None
            ``partial_fit``'s labels of every class.
        """
        if fit_params:
            raise TypeError(
                f"{type(self).__name__}.fit does not accept {sorted(fit_params)}; "
                "sample_weight and other fit parameters are not supported."
            )
        self.validate_parameters()
        self.check_device_available()
        X = self.check_inputs(X, reset=reset)
        if reset:  # a new fit chooses its default network from the new data
            self.__dict__.pop("default_network_", None)
        if not isinstance(X, np.ndarray):  # a torch Dataset of (x, class index) pairs
            if reset:
                classes = self.classes_for_fit() if classes is None else classes
                if classes is None:
                    raise ValueError("Pass classes=[...] when fitting on a torch Dataset.")
                self.classes_fitted_ = given_classes(classes)
            return X, None
        if y is None and not self.fit_needs_labels and reset:
            self.classes_fitted_ = given_classes(self.classes_for_fit())  # the model's own
            return X, None
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None."
            )
        y = column_or_1d(y, warn=True)
        check_consistent_length(X, y)
        check_classification_targets(y)
        if reset:
            classes = self.classes_for_fit() if classes is None else classes
            self.classes_fitted_ = np.unique(y) if classes is None else given_classes(classes)
            if len(self.classes_fitted_) < 2:
                raise ValueError(
                    "The training data has one class; a classifier needs at least 2 "
                    f"classes. Got classes {self.classes_fitted_.tolist()}."
                )
        return X, self.encode_labels(y)

    def encode_labels(self, y, *, unseen: str = "raise") -> np.ndarray:
        """Class indices of the labels ``y`` in ``classes_``.

        Parameters
        ----------
        y : array-like
            Labels.
        unseen : {"raise", "mark"}
            ``"raise"`` rejects labels not seen in fit; ``"mark"`` maps them to −1 (an
            index no prediction has, so they never count as correct).
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

    def check_read_model(self, name: str, classes, X, y, input_shape=None) -> None:
        """A model this estimator only reads (a CRT teacher, CAT-RS's target, a classifier
        to smooth) must take inputs of the data's shape and know every label of ``y``
        (of the ``classes`` parameter when ``X`` is a torch Dataset).

        Parameters
        ----------
        name : str
            The parameter holding the model, for the messages (``"teacher"``).
        classes : array-like or None
            The labels the model predicts (None: not checked).
        X, y
            The training data.
        input_shape : tuple or None
            The per-sample shape the model takes (None: not checked).
        """
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

    def classes_for_fit(self):
        """Labels to learn in ``fit``: the ``classes`` parameter, or None to take ``y``'s."""
        return None if self.classes is None or not len(self.classes) else self.classes

    def check_network_output(self, X):
        """Run the new network on one input: our error, not torch's, for a mismatch.

        Parameters
        ----------
        X : ndarray or Dataset
            The validated training inputs (the first is used).
        """
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
        self.check_n_classes(logits.shape[1])

    def check_device_available(self, device="unset"):
        """Refuse a CUDA device where torch sees none, with what to set instead.

        Parameters
        ----------
        device : str, torch.device or None
            The device to check (default: the estimator's ``device``).
        """
        device = self.device if device == "unset" else device
        if device is not None and torch.device(device).type == "cuda" \
                and not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r}, but torch sees no CUDA GPU here (or this torch build "
                "has no CUDA support); set device='cpu'."
            )
