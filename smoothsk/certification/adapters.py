"""Any fitted classifier as a base network: randomized smoothing only needs its votes.

:func:`as_base_network` turns what a user already has into the torch module the
certification core runs: a torch module is used as is, a fitted skorch or smoothsk
estimator gives its network, and any other fitted scikit-learn classifier (a
``Pipeline`` included) is wrapped in :class:`SklearnClassifierNetwork`, which calls its
``predict`` on batches of noisy inputs.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

__all__ = ["SklearnClassifierNetwork", "as_base_network"]


class SklearnClassifierNetwork(torch.nn.Module):
    """A fitted scikit-learn classifier as a (gradient-free) torch base network.

    ``forward(x)`` flattens each input to ``n_features_in_`` values, calls
    ``estimator.predict`` on the batch (in numpy, on the CPU) and returns one-hot rows
    over ``estimator.classes_``: ``argmax forward(x) = index of estimator.predict(x)``.
    The smoothed classifier therefore votes with exactly the classifier's own decisions
    (not with a calibrated ``predict_proba``, whose argmax may differ, e.g. for an SVC).

    Parameters
    ----------
    estimator : fitted scikit-learn classifier
        Anything with ``predict`` and ``classes_`` (a ``Pipeline`` ending in one, too).
    """

    def __init__(self, estimator):
        super().__init__()
        if not hasattr(estimator, "predict"):
            raise TypeError(
                f"{type(estimator).__name__} has no predict method; pass a fitted "
                "scikit-learn classifier, a skorch/smoothsk estimator or a torch module."
            )
        try:
            check_is_fitted(estimator)
        except NotFittedError as exc:
            raise NotFittedError(
                f"{type(estimator).__name__} is not fitted; fit it before certifying it."
            ) from exc
        if not hasattr(estimator, "classes_"):
            raise TypeError(f"{type(estimator).__name__} has no classes_: not a classifier.")
        self.estimator = estimator
        self.classes = np.asarray(estimator.classes_)
        self.n_features = getattr(estimator, "n_features_in_", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.detach().float().reshape(len(x), -1).cpu().numpy()
        if self.n_features is not None and flat.shape[1] != self.n_features:
            raise ValueError(
                f"The classifier was fitted on {self.n_features} features but each input "
                f"has {flat.shape[1]} values; pass X with that many values per input."
            )
        predicted = np.asarray(self.estimator.predict(flat))
        order = np.argsort(self.classes, kind="stable")
        position = order[np.searchsorted(self.classes[order], predicted).clip(0, len(order) - 1)]
        if not np.array_equal(self.classes[position], predicted):
            raise ValueError("The classifier predicted a label outside its classes_.")
        votes = torch.zeros(len(flat), len(self.classes), dtype=torch.float32)
        votes[torch.arange(len(flat)), torch.as_tensor(position)] = 1.0
        return votes.to(x.device)

    def extra_repr(self) -> str:
        return f"estimator={type(self.estimator).__name__}, classes={len(self.classes)}"


def as_base_network(model) -> tuple[torch.nn.Module, np.ndarray | None]:
    """``(network, classes)`` for a torch module or any fitted classifier.

    - ``torch.nn.Module``: itself, with its ``classes`` attribute if it has one (else None:
      certificates then hold class indices);
    - fitted skorch / smoothsk estimator: its trained ``module_`` and ``classes_``;
    - any other fitted scikit-learn classifier: :class:`SklearnClassifierNetwork`.

    Parameters
    ----------
    model : torch.nn.Module or fitted classifier
        What to smooth.
    """
    if isinstance(model, torch.nn.Module):
        classes = getattr(model, "classes", None)
        return model, None if classes is None else np.asarray(classes)
    from skorch import NeuralNet

    if isinstance(model, NeuralNet):
        if not getattr(model, "initialized_", False) or not hasattr(model, "module_"):
            raise NotFittedError(f"{type(model).__name__} is not fitted; fit it first.")
        classes = getattr(model, "classes_", None)
        return model.module_, None if classes is None else np.asarray(classes)
    network = SklearnClassifierNetwork(model)
    return network, network.classes
