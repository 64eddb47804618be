"""Certified radii in a Pipeline's input space: l2 Lipschitz constants of preprocessing.

In ``Pipeline([..., transformers T, smoothed classifier g])`` the noise and the radius
``R`` of a certificate live in the space of ``T(x)``.  If ``‖T(x) − T(x')‖₂ ≤ L ‖x − x'‖₂``
for all inputs, then every ``x'`` with ``‖x − x'‖₂ ≤ R / L`` has ``‖T(x) − T(x')‖₂ ≤ R``, so
the pipeline's prediction is certified on the input-space ball of radius ``R / L``.

For affine transformers ``T(x) = A x + b`` the best such ``L`` is the spectral norm
``‖A‖₂`` (the largest singular value), and a chain of them is again affine with the
product of the matrices: :func:`lipschitz_constant` composes the matrices and takes the
spectral norm of the product, which is exact (a product of per-step norms would only be an
upper bound).  Known affine transformers: ``StandardScaler``, ``MinMaxScaler``,
``MaxAbsScaler``, ``PCA`` (with and without whitening) and ``"passthrough"``.  Anything
else raises: its constant is unknown, and a radius in the wrong space would silently
overstate robustness.
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, StandardScaler
from sklearn.utils.validation import check_is_fitted

__all__ = ["UnknownLipschitzError", "lipschitz_constant", "linear_part"]


class UnknownLipschitzError(ValueError):
    """A preprocessing step whose l2 Lipschitz constant smoothsk does not know."""


def linear_part(transformer, n_features: int) -> np.ndarray:
    """The matrix ``A`` of an affine transformer ``T(x) = A x + b`` (rows: outputs).

    Parameters
    ----------
    transformer : fitted scikit-learn transformer, "passthrough" or None
        ``StandardScaler``, ``MinMaxScaler``, ``MaxAbsScaler``, ``PCA`` or the other
        affine transformers :func:`lipschitz_constant` knows; None and "passthrough"
        are the identity.
    n_features : int
        Its input dimension.

    Raises
    ------
    UnknownLipschitzError
        For a transformer that is not known to be affine.
    """
    if transformer is None or transformer == "passthrough":
        return np.eye(n_features)
    check_is_fitted(transformer)
    if isinstance(transformer, StandardScaler):
        scale = transformer.scale_ if transformer.with_std else None
        return np.diag(1.0 / scale) if scale is not None else np.eye(n_features)
    if isinstance(transformer, MinMaxScaler):
        return np.diag(transformer.scale_)
    if isinstance(transformer, MaxAbsScaler):
        return np.diag(1.0 / transformer.scale_)
    if isinstance(transformer, PCA):
        matrix = transformer.components_
        if transformer.whiten:
            matrix = matrix / np.sqrt(transformer.explained_variance_)[:, None]
        return matrix
    raise UnknownLipschitzError(
        f"The l2 Lipschitz constant of {type(transformer).__name__} is unknown, so radii "
        "cannot be given in the pipeline's input space. Use StandardScaler, MinMaxScaler, "
        "MaxAbsScaler or PCA, or ask for radii in the smoothed step's own input space "
        "(radius_space='last_step')."
    )


def lipschitz_constant(steps, n_features: int) -> float:
    """Exact l2 Lipschitz constant of a chain of affine transformers.

    Parameters
    ----------
    steps : list of transformers (or a Pipeline, whose last step is excluded)
    n_features : int
        Input dimension of the first step.
    """
    if hasattr(steps, "steps"):
        steps = [step for _, step in steps.steps[:-1]]
    matrix = np.eye(n_features)
    for step in steps:
        matrix = linear_part(step, matrix.shape[0]) @ matrix
    return float(np.linalg.norm(matrix, 2))
