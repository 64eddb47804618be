"""What CERTIFY returns: the :class:`Certificate` of a run, and abstentions as labels.

A certificate holds, per input, the predicted class index (or ``ABSTAIN``), the certified
l2 radius and the counts behind them, with everything needed to check, compare, resume
or replay the run (σ, n0, n, α, the seed, the inputs' global indices, the noise law).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from smoothsk._version import __version__
from smoothsk.certification.inputs import check_class_indices

__all__ = ["ABSTAIN", "Certificate", "default_abstain_label", "labels_or_marker"]

ABSTAIN = -1
"""Class index returned where the smoothed classifier abstains."""


# --------------------------------------------------------------------------- results
@dataclass
class Certificate:
    """Result of :func:`certify` for ``N`` inputs.

    Attributes
    ----------
    prediction : ndarray of int, shape (N,)
        Certified class index, ``ABSTAIN`` (−1) where CERTIFY abstains.
    radius : ndarray of float, shape (N,)
        Certified l2 radius ``σ Φ⁻¹(p_A_lower)``; 0 where abstained.
    pa_lower : ndarray of float, shape (N,)
        One-sided Clopper–Pearson lower bound on ``p_A``.
    selection_counts, counts : ndarray of int, shape (N, n_classes)
        Votes from the ``n0`` selection draws and the ``n`` estimation draws.
    sigma : float
        The noise level certified at.
    n0, n : int
        Selection and estimation draws per input (``n``: the budget when sequential).
    alpha : float
        Failure probability of each input's certificate.
    classes : ndarray or None
        Labels of the class indices (set by the estimators' ``certify``).
    precision : str
        Arithmetic of the base network's forward pass ("fp32", "bf16", "fp16"): the
        certificate is about the smoothed classifier of the network computed so.
    shared_noise : bool
        Whether all inputs used the same noise draws (:func:`certify`).
    bound : {"binary", "two-class"}
        How the radius was bounded (:func:`certified_radius`).
    interval : {"clopper-pearson", "randomized"}
        Which confidence bounds were used.
    pb_upper : ndarray of float or None, shape (N,)
        ``bound="two-class"``: the upper bound on every other class's probability.
    uniforms : ndarray of float or None, shape (N, 2)
        ``interval="randomized"``: each input's two Uniform(0, 1) variates (lower bound,
        upper bounds), seeded by ``random_state`` and the input's index.
    noise : {"gaussian", "discrete-gaussian"}
        The smoothing noise (:func:`certify`).
    noise_step : str or None
        ``noise="discrete-gaussian"``: the lattice step, as an exact fraction ("1/255").
    samples : ndarray of int or None, shape (N,)
        ``sequential=True``: the estimation draws each input used (``n`` is the budget;
        ``counts`` then holds the selected class's votes only).
    sequential : bool
        Whether the anytime CERTIFY made it (:func:`certify`).
    tolerance : float or None
        Its stopping tolerance.
    disagreements : ndarray of int or None, shape (N,)
        :func:`certify_incremental`: of its ``n_zeta`` shared draws, those on which the
        modified network's class differed from the original's (0 where the original
        abstained and nothing was compared); ``disagreements / n_zeta`` is the observed ζ.
    smoothsk_version : str
        The library version that computed it.
    """

    prediction: np.ndarray
    radius: np.ndarray
    pa_lower: np.ndarray
    selection_counts: np.ndarray
    counts: np.ndarray
    sigma: float
    n0: int
    n: int
    alpha: float
    classes: np.ndarray | None = field(default=None)
    precision: str = "fp32"
    shared_noise: bool = False
    bound: str = "binary"
    interval: str = "clopper-pearson"
    pb_upper: np.ndarray | None = None
    uniforms: np.ndarray | None = None
    noise: str = "gaussian"
    noise_step: str | None = None
    samples: np.ndarray | None = None
    sequential: bool = False
    tolerance: float | None = None
    disagreements: np.ndarray | None = None
    smoothsk_version: str = field(default=__version__)

    def __len__(self) -> int:
        return len(self.prediction)

    @property
    def abstained(self) -> np.ndarray:
        return self.prediction == ABSTAIN

    @classmethod
    def concatenate(cls, parts: list[Certificate]) -> Certificate:
        """One certificate for the inputs of ``parts``, in order (same σ, n0, n, α)."""
        first = parts[0]

        def joined(name):
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else np.concatenate(values)

        return cls(
            prediction=joined("prediction"), radius=joined("radius"),
            pa_lower=joined("pa_lower"), selection_counts=joined("selection_counts"),
            counts=joined("counts"), sigma=first.sigma, n0=first.n0, n=first.n,
            alpha=first.alpha, precision=first.precision, shared_noise=first.shared_noise,
            bound=first.bound, interval=first.interval, pb_upper=joined("pb_upper"),
            uniforms=joined("uniforms"), noise=first.noise, noise_step=first.noise_step,
            samples=joined("samples"), sequential=first.sequential, tolerance=first.tolerance,
            disagreements=joined("disagreements"),
        )

    def labels(self, abstain_label=None) -> np.ndarray:
        """Predicted labels from ``classes``, ``abstain_label`` where CERTIFY abstained.

        ``abstain_label=None`` takes :func:`default_abstain_label` of the classes, a marker
        of the labels' own dtype, so that ``sklearn.metrics.accuracy_score``,
        ``classification_report`` and ``confusion_matrix`` accept the result (an
        abstention counts as wrong, and as a class of its own in the report).
        """
        if self.classes is None:
            raise ValueError("This certificate has no classes; use .prediction (class indices).")
        return labels_or_marker(np.asarray(self.classes), self.prediction, abstain_label)

    def is_correct(self, y_true) -> np.ndarray:
        """Boolean mask: certified (not abstained) with the true class.

        ``y_true`` holds labels when ``classes`` is set, class indices otherwise.
        """
        y_true = np.asarray(y_true)
        if y_true.shape != self.prediction.shape:
            raise ValueError(
                f"y_true has shape {y_true.shape}; expected {self.prediction.shape} "
                "(one label per certified input)."
            )
        keep = ~self.abstained
        if self.classes is None:
            check_class_indices(y_true, self.counts.shape[1])
            predicted = self.prediction
        else:
            predicted = np.empty(len(self), dtype=object)
            predicted[keep] = np.asarray(self.classes, dtype=object)[self.prediction[keep]]
        correct = np.zeros(len(self), dtype=bool)
        correct[keep] = predicted[keep] == y_true[keep]
        return correct


def default_abstain_label(classes):
    """The marker of an abstention for labels like ``classes``, in their dtype.

    Integers: −1 (or one below the smallest class when −1 is a class; one above the
    largest for unsigned integers).  Floats: the same as float.  Strings: ``"abstain"``.
    Booleans have no spare value: pass ``abstain_label`` explicitly.

    Parameters
    ----------
    classes : array-like
        The labels.
    """
    classes = np.asarray(classes)
    kind = classes.dtype.kind
    if kind in "iuf":
        if kind == "u":
            return classes.dtype.type(classes.max() + 1)
        marker = -1 if -1 not in classes else classes.min() - 1
        return classes.dtype.type(marker)
    if kind in "USO" and all(isinstance(c, str) for c in classes.tolist()):
        if "abstain" in classes.tolist():
            raise ValueError('"abstain" is one of the classes; pass abstain_label=... '
                             "(a label that is not a class).")
        return "abstain"
    raise ValueError(f"No default abstention marker for classes of dtype {classes.dtype}; pass "
                     "abstain_label=... (a value that is not a class).")


def labels_or_marker(classes: np.ndarray, index: np.ndarray, abstain_label=None) -> np.ndarray:
    """``classes[index]`` with ``abstain_label`` where ``index`` is ``ABSTAIN``.

    The result keeps the labels' dtype when the marker fits it (the default marker always
    does); another marker gives an object array.

    Parameters
    ----------
    classes : ndarray
        The labels of the class indices.
    index : ndarray of int
        Class indices, ``ABSTAIN`` where abstained.
    abstain_label : object or None
        The marker (None: :func:`default_abstain_label`).
    """
    if abstain_label is None:
        abstain_label = default_abstain_label(classes)
    elif abstain_label in set(classes.tolist()):
        raise ValueError(
            f"abstain_label={abstain_label!r} is one of the classes; pass another marker."
        )
    marker = np.asarray(abstain_label)
    if classes.dtype.kind in "iuf" and marker.dtype.kind in "iuf":
        dtype = np.result_type(classes.dtype, marker.dtype)
    elif classes.dtype.kind in "US" and marker.dtype.kind in "US":
        dtype = np.result_type(classes, marker)  # wide enough for both strings
    else:
        dtype = np.dtype(object)
    out = np.full(len(index), abstain_label, dtype=dtype)
    keep = index != ABSTAIN
    out[keep] = classes[index[keep]]
    return out


