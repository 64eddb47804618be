"""Metrics on certificates: certified accuracy and average certified radius (ACR)."""

from __future__ import annotations

import numpy as np

from smoothsk.certification.certificate import Certificate

__all__ = [
    "average_certified_radius",
    "average_certified_radius_scorer",
    "certified_accuracy",
    "certified_accuracy_scorer",
]


def certified_accuracy(y_true, certificate: Certificate, radius=0.0):
    """Fraction of inputs certified with the true class at l2 radius ``≥ r``.

    ``CA(r) = (1/N) Σ_i 1[ĉ_i = y_i and R_i ≥ r]``; abstentions count as wrong.

    Parameters
    ----------
    y_true : array-like of shape (N,)
        Labels (class indices if the certificate has no ``classes``).
    certificate : Certificate
        From :func:`smoothsk.certify` or an estimator's ``certify``.
    radius : float or array-like of float
        One radius gives a float; an array of radii gives the curve (an array).
    """
    radii = np.asarray(radius, dtype=np.float64)
    if np.any(radii < 0) or not np.all(np.isfinite(radii)):
        raise ValueError(f"radius must be finite and >= 0; got {radius!r}.")
    curve = accuracy_curve(certificate.is_correct(y_true), certificate.radius, radii)
    return float(curve[0]) if radii.ndim == 0 else curve.reshape(radii.shape)


def accuracy_curve(correct, radius, radii) -> np.ndarray:
    """``CA(r)`` for each r in ``radii`` (flattened): mean of ``correct & radius ≥ r``.

    Parameters
    ----------
    correct : array of bool, shape (N,)
        Whether each input's certified class is its label.
    radius : array of float, shape (N,)
        Each input's certified radius.
    radii : array-like of float
        Where the curve is evaluated.
    """
    radii = np.asarray(radii, dtype=np.float64).reshape(-1, 1)
    return (correct[None, :] & (radius[None, :] >= radii)).mean(axis=1)


def mean_certified_radius(correct, radius) -> float:
    """``mean(R_i · 1[correct_i])``: the ACR of per-input radii and correctness masks.

    Parameters
    ----------
    correct : array of bool, shape (N,)
        Whether each input's certified class is its label.
    radius : array of float, shape (N,)
        Each input's certified radius.
    """
    return float(np.mean(np.where(correct, radius, 0.0)))


def average_certified_radius(y_true, certificate: Certificate) -> float:
    """ACR ``= (1/N) Σ_i R_i · 1[ĉ_i = y_i]`` (Zhai et al. 2020); abstentions give 0.

    Parameters
    ----------
    y_true : array-like of shape (N,)
        True labels (class indices for a bare network's certificate).
    certificate : Certificate
        The certificate of the same N inputs.

    Returns
    -------
    float
        The mean over inputs of the radius where the certified class is the label, else 0.
    """
    return mean_certified_radius(certificate.is_correct(y_true), certificate.radius)


def smoothed_step(estimator, X):
    """``(last_step, X transformed by the earlier steps)`` for a Pipeline; else unchanged.

    Certificates of a Pipeline hold in the input space of its last (smoothed) step.

    Parameters
    ----------
    estimator : estimator or Pipeline
        A smoothsk estimator, or a Pipeline ending in one.
    X : array-like
        Inputs of ``estimator``.
    """
    if not hasattr(estimator, "steps"):
        return estimator, X
    for _, step in estimator.steps[:-1]:
        if step is not None and step != "passthrough":
            X = step.transform(X)
    return estimator.steps[-1][1], X


_RADIUS_SPACES = ("input", "last_step")


def _check_radius_space(radius_space: str) -> None:
    if radius_space not in _RADIUS_SPACES:
        raise ValueError(f"radius_space must be one of {_RADIUS_SPACES}; got {radius_space!r}.")


def _radius_scale(estimator, X, radius_space: str) -> float:
    """Factor from radii in the smoothed step's space to radii in ``radius_space``:
    ``1 / L`` for the pipeline's input space (see :mod:`smoothsk.lipschitz`), else 1."""
    _check_radius_space(radius_space)
    if radius_space == "last_step" or not hasattr(estimator, "steps"):
        return 1.0
    from smoothsk.lipschitz import lipschitz_constant

    return 1.0 / lipschitz_constant(estimator, np.shape(X)[1])


def certify_pipeline(estimator, X, *, radius_space: str = "input", **certify_params):
    """CERTIFY a smoothsk estimator or a Pipeline ending in one, radii in ``radius_space``.

    For a Pipeline the noise acts on the output of its preprocessing; with
    ``radius_space="input"`` (default) the radii are divided by the preprocessing's exact
    l2 Lipschitz constant ``L`` so that they hold for the pipeline's own inputs (raises
    :class:`~smoothsk.lipschitz.UnknownLipschitzError` where ``L`` is unknown);
    ``"last_step"`` keeps them in the smoothed step's input space.

    Parameters
    ----------
    estimator : estimator or Pipeline
        A fitted smoothsk estimator, or a Pipeline ending in one.
    X : array-like
        The pipeline's inputs.
    radius_space : {"input", "last_step"}, default="input"
        Where the radii hold.
    **certify_params
        Passed to the smoothed step's ``certify`` (``n``, ``alpha``, ...).

    Returns
    -------
    Certificate
        Radii in ``radius_space``.
    """
    scale = _radius_scale(estimator, X, radius_space)
    smoothed, X_smoothed = smoothed_step(estimator, X)
    certificate = smoothed.certify(X_smoothed, **certify_params)
    certificate.radius = certificate.radius * scale
    return certificate


class _CertificationScorer:
    """``scorer(estimator, X, y) -> float``: certify, then apply a metric (greater is better).

    A ``Pipeline`` is certified by its last step on ``X`` transformed by the earlier
    steps, so the certificate holds in the input space of the smoothed step.
    """

    def __init__(self, metric_name: str, radius: float | None, overrides: dict,
                 adaptive: bool = False, radius_space: str = "input"):
        self.metric_name = metric_name
        self.radius = radius
        self.overrides = overrides
        self.adaptive = adaptive
        self.radius_space = radius_space

    def __call__(self, estimator, X, y) -> float:
        scale = _radius_scale(estimator, X, self.radius_space)
        smoothed, X = smoothed_step(estimator, X)
        if not hasattr(smoothed, "certify"):
            raise ValueError(
                f"{type(smoothed).__name__} has no certify method; score a smoothsk estimator "
                "or a Pipeline ending in one."
            )
        if getattr(smoothed, "fitting", False):
            # Called from a skorch callback (EpochScoring) inside fit: skorch hands over
            # the targets it trains on, which are the encoded class indices.
            y = smoothed.classes_[np.asarray(y, dtype=np.int64)]
        # As score() does: labels the model cannot predict (another dtype, a typo) would
        # count as wrong everywhere and score a silent 0.0 that a grid search trusts.
        smoothed.encode_labels(np.asarray(y))
        if self.adaptive:  # radius r in input space is r / scale in the smoothed step's
            result = smoothed.certify_radius(X, self.radius / scale, y=y, **self.overrides)
            return float(np.mean(result.is_correct(y)))
        certificate = smoothed.certify(X, **self.overrides)
        certificate.radius = certificate.radius * scale
        if self.metric_name == "acr":
            return average_certified_radius(y, certificate)
        return certified_accuracy(y, certificate, self.radius)

    def __repr__(self) -> str:
        args = [f"radius={self.radius}"] if self.metric_name == "ca" else []
        if self.metric_name == "ca" and not self.adaptive:
            args.append("adaptive=False")
        if self.radius_space != "input":
            args.append(f"radius_space={self.radius_space!r}")
        args += [f"{k}={v!r}" for k, v in self.overrides.items()]
        name = "certified_accuracy" if self.metric_name == "ca" else "average_certified_radius"
        return f"{name}_scorer({', '.join(args)})"


_OVERRIDABLE = {"n0", "n", "alpha", "batch_size", "random_state"}
_ADAPTIVE_ONLY = {"first_round", "growth"}


def _check_overrides(overrides: dict, adaptive: bool = False) -> dict:
    allowed = _OVERRIDABLE | (_ADAPTIVE_ONLY if adaptive else set())
    unknown = set(overrides) - allowed
    if unknown:
        raise ValueError(
            f"Unknown certification overrides {sorted(unknown)}; allowed: {sorted(allowed)}."
        )
    return overrides


def certified_accuracy_scorer(
    radius: float, *, adaptive: bool = True, radius_space: str = "input",
    **certification_overrides
) -> _CertificationScorer:
    """Scorer of certified accuracy at l2 radius ``radius`` for ``GridSearchCV`` & co.

    By default each input is decided by :func:`smoothsk.certify_radius`, the adaptive
    fixed-radius test: the same guarantee as CERTIFY with ``n`` draws (wrong with
    probability ≤ ``alpha`` per input), far fewer draws, and none at all for inputs
    whose selected class is not their label.  ``adaptive=False`` runs CERTIFY with
    ``n`` draws on every input (the score then equals
    ``certified_accuracy(y, estimator.certify(X), radius)``).

    σ and the certification defaults (``n0``, ``n``, ``alpha``, ...) come from the
    estimator unless overridden here, e.g. ``certified_accuracy_scorer(0.5, n=10_000)``;
    ``first_round`` and ``growth`` tune the adaptive rounds.

    For a Pipeline, ``radius`` is in the pipeline's input space (``radius_space="input"``):
    the smoothed step is certified at ``radius · L`` with ``L`` the preprocessing's exact
    l2 Lipschitz constant (:mod:`smoothsk.lipschitz`); an unknown ``L`` raises.
    ``radius_space="last_step"`` measures radii in the smoothed step's own input space.

    Parameters
    ----------
    radius : float >= 0
        The l2 radius at which accuracy is certified.
    adaptive : bool, default=True
        The adaptive fixed-radius test (True) or CERTIFY with ``n`` draws on every input.
    radius_space : {"input", "last_step"}, default="input"
        Where ``radius`` is measured for a Pipeline.
    **certification_overrides
        ``n0``, ``n``, ``alpha``, ``batch_size``, ``random_state`` (and with ``adaptive``,
        ``first_round``, ``growth``, ``test``) instead of the estimator's.

    Returns
    -------
    callable
        ``scorer(estimator, X, y) -> float``, scikit-learn's scorer protocol.
    """
    _check_radius_space(radius_space)
    radius = float(radius)
    if not np.isfinite(radius) or radius < 0:
        raise ValueError(f"radius must be finite and >= 0; got {radius!r}.")
    overrides = _check_overrides(certification_overrides, adaptive=adaptive)
    return _CertificationScorer("ca", radius, overrides, adaptive=bool(adaptive),
                                radius_space=radius_space)


def average_certified_radius_scorer(*, radius_space: str = "input",
                                    **certification_overrides) -> _CertificationScorer:
    """Scorer of the average certified radius (ACR) from CERTIFY; overrides and
    ``radius_space`` as in :func:`certified_accuracy_scorer` (``n0``, ``n``, ``alpha``,
    ``batch_size``, ``random_state``).

    Parameters
    ----------
    radius_space : {"input", "last_step"}, default="input"
        Where radii are measured for a Pipeline.
    **certification_overrides
        ``n0``, ``n``, ``alpha``, ``batch_size``, ``random_state`` instead of the estimator's.

    Returns
    -------
    callable
        ``scorer(estimator, X, y) -> float``.
    """
    _check_radius_space(radius_space)
    return _CertificationScorer("acr", None, _check_overrides(certification_overrides),
                                radius_space=radius_space)
