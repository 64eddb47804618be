"""Certified Robustness Transfer (Vaishnavi, Eykholt & Rahmati, NeurIPS 2022).

"Transferring Adversarial Robustness Through Robust Representation Matching" for
randomized smoothing: a student base network learns to reproduce a robust
teacher's logits on the same Gaussian-noised inputs, at about the cost of
Gaussian augmentation (one extra forward pass of the teacher).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import clone

from smoothsk.base import SmoothedClassifier, is_fitted_estimator, unwrap_frozen
from smoothsk.certification import inputs
from smoothsk.certification.inputs import first_field
from smoothsk.methods.attacks import frozen
from smoothsk.validation import POSITIVE, Float

__all__ = ["CRTStudent", "crt_loss"]


def crt_loss(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    sigma: float,
    *,
    transfer_weight: float = 1.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """``a · mean_b ‖f_S(x_b + δ_b) − f_T(x_b + δ_b)‖₂ + (1 − a) · CE(f_S(x + δ), y)``.

    One ``δ_b ~ N(0, σ² I)`` per example, shared by teacher and student; distances
    on raw logits, per example, not squared, averaged over the batch.  The teacher
    runs frozen, in eval mode, without gradients.

    Parameters
    ----------
    student, teacher : torch.nn.Module
        The network trained and the certified network it learns from (frozen).
    X : torch.Tensor of shape (B, ...)
        A training batch.
    y : torch.Tensor of shape (B,)
        Its class indices.
    sigma : float > 0
        The noise level.
    transfer_weight : float in [0, 1]
        a, the weight of the transfer term.
    noise : torch.Tensor or None
        A fixed draw instead of a fresh one (for tests).

    Returns
    -------
    torch.Tensor
        The scalar loss.
    """
    noisy = X + (sigma * torch.randn_like(X) if noise is None else noise)
    with frozen(teacher), torch.no_grad():
        teacher_logits = teacher(noisy)
    student_logits = student(noisy)
    loss = transfer_weight * (student_logits - teacher_logits).norm(dim=1).mean()
    if transfer_weight != 1.0:
        loss = loss + (1.0 - transfer_weight) * F.cross_entropy(student_logits, y)
    return loss


class _TeacherNetwork:
    """Holds the teacher's network outside skorch's registry of trainable modules
    (so skorch neither optimises, moves nor re-initialises it)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module


class CRTStudent(SmoothedClassifier):
    """Smoothed classifier whose base network is distilled from a robust teacher.

    Parameters
    ----------
    module : torch.nn.Module class or instance, or None
        The student network (any architecture with the teacher's number of classes).
    teacher : estimator, FrozenEstimator or torch.nn.Module
        - a fitted smoothsk estimator (e.g. a :class:`~smoothsk.SmoothMixClassifier`),
          used as is;
        - ``sklearn.frozen.FrozenEstimator(fitted_estimator)``, the scikit-learn way to
          say "never refit this" (also under ``clone``);
        - an unfitted smoothsk estimator: ``fit`` first fits a clone of it on the same
          data and keeps it as ``teacher_``;
        - a trained ``torch.nn.Module`` returning logits: give ``sigma`` and ``classes``.
    transfer_weight : float in [0, 1], default=1.0
        ``a``; the authors use 1 (pure logit matching); 0 is Gaussian augmentation.
    sigma : float or None, default=None
        None takes the teacher's σ.  A different σ raises unless ``allow_sigma_mismatch``.
    allow_sigma_mismatch : bool, default=False
        Accept a student σ that differs from the teacher's.
    **kwargs
        Everything :class:`~smoothsk.base.SmoothedClassifier` takes.

    Attributes
    ----------
    teacher_ : estimator
        The teacher estimator actually used (fitted here if ``teacher`` was unfitted);
        for a torch-module teacher, a holder whose ``.module`` is that module.
    sigma_ : float
        The σ used for training and certification.

    Notes
    -----
    ``clone`` (and so ``GridSearchCV`` and ``cross_val_score``) keeps a fitted teacher,
    a ``FrozenEstimator`` or a torch module by reference instead of copying it: the
    teacher is only read, so it is never refitted and never lost.  An unfitted teacher
    is cloned like any other parameter and fitted in each ``fit``.
    """

    method_name = "crt"
    display_name = "CRT student"

    side_model_params = ("teacher",)
    prepared_side_models = ("teacher_network_",)

    _parameter_constraints: dict = {
        **SmoothedClassifier._parameter_constraints,
        "sigma": [*POSITIVE, None],  # None: the teacher's σ, resolved in fit
        "teacher": "no_validation",  # checked against the data in fit
        "transfer_weight": [Float(0, 1, closed="both")],
        "allow_sigma_mismatch": ["boolean"],
    }

    def __init__(
        self,
        module=None,
        *,
        teacher=None,
        transfer_weight: float = 1.0,
        sigma: float | None = None,
        allow_sigma_mismatch: bool = False,
        **kwargs,
    ):
        super().__init__(module, sigma=sigma, **kwargs)
        self.teacher = teacher
        self.transfer_weight = transfer_weight
        self.allow_sigma_mismatch = allow_sigma_mismatch

    @property
    def noise_level(self) -> float:
        return getattr(self, "sigma_", self.sigma)

    def _resolve_teacher(self, X, y):
        """Set ``teacher_``, ``teacher_network_`` and ``sigma_``; check compatibility."""
        teacher = unwrap_frozen(self.teacher)
        if teacher is None:
            raise ValueError("CRTStudent needs a teacher: a smoothsk estimator or a torch module.")
        if isinstance(teacher, torch.nn.Module):
            if self.sigma is None or self.classes is None or not len(self.classes):
                raise ValueError(
                    "A torch.nn.Module teacher needs sigma=... and classes=[...] on the student."
                )
            self.teacher_ = self.teacher_network_ = _TeacherNetwork(teacher)
            teacher_sigma, teacher_classes = self.sigma, np.asarray(self.classes)
            teacher_shape = None
        elif isinstance(teacher, SmoothedClassifier):
            if not is_fitted_estimator(teacher):
                teacher = clone(teacher).fit(X, y)
            self.teacher_, self.teacher_network_ = teacher, _TeacherNetwork(teacher.module_)
            teacher_sigma, teacher_classes = teacher.noise_level, teacher.classes_
            teacher_shape = teacher.input_shape_
        else:
            raise ValueError(
                "teacher must be a smoothsk estimator, a FrozenEstimator wrapping one, or a "
                f"torch.nn.Module; got {type(self.teacher).__name__}."
            )
        sigma = teacher_sigma if self.sigma is None else float(self.sigma)
        if sigma != teacher_sigma and not self.allow_sigma_mismatch:
            raise ValueError(
                f"sigma={sigma} differs from the teacher's sigma={teacher_sigma}; leave sigma=None "
                "to use the teacher's, or set allow_sigma_mismatch=True."
            )
        self.sigma_ = sigma
        return teacher_classes, teacher_shape

    def prepare_side_models(self, X, y, *, partial: bool) -> None:
        """Fit (or take) the teacher and check it against ``(X, y)`` and the student.

        Parameters
        ----------
        X, y, partial
            As in :meth:`smoothsk.SmoothedClassifier.prepare_side_models`.
        """
        X_checked = self.check_inputs(X, reset=True)
        teacher_classes, teacher_shape = self._resolve_teacher(X, y)
        self.check_read_model("the teacher", teacher_classes, X_checked, y, teacher_shape)
        device = torch.device(self.device)
        network = self.teacher_network_.module
        teacher_device, teacher_dtype = inputs.module_device_dtype(network)
        if teacher_device != device:  # never move the caller's teacher in place
            network = copy.deepcopy(network).to(device)
            self.teacher_network_ = _TeacherNetwork(network)
        if isinstance(X_checked, np.ndarray):
            probe = torch.as_tensor(X_checked[:1])
        else:
            probe = torch.as_tensor(first_field(X_checked[0]))[None]
        with frozen(network), torch.no_grad():
            width = network(probe.to(device=device, dtype=teacher_dtype)).shape[-1]
        if width != len(teacher_classes):
            raise ValueError(
                f"The teacher returns {width} logits but has {len(teacher_classes)} classes."
            )
        self.teacher_classes_ = np.asarray(teacher_classes)

    def classes_for_fit(self):
        # The student predicts the teacher's classes, in the teacher's order, even when
        # a training fold lacks one of them.
        return self.teacher_classes_

    def training_loss(self, X, y):
        return crt_loss(self.module_, self.teacher_network_.module, X, y, self.sigma_,
                        transfer_weight=self.transfer_weight)
