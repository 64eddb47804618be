"""The one validation layer: what every parameter accepts, and the input domain.

Every estimator parameter and every argument of the public certification functions is
checked here, with scikit-learn's declarative machinery, so that one bad value gets one
message wherever it enters: ``GaussianAugClassifier(n=True).fit(...)`` and
``certify(..., n=True)`` both answer "The 'n' parameter of … must be an int in the range
[1, inf). Got True instead."  This is the only module that imports scikit-learn's
(private) ``sklearn.utils._param_validation``; the rest of smoothsk imports the
constraints from here.

The shared constraints are stricter than scikit-learn's plain ``Interval``: a count
refuses ``bool`` (``True`` is an ``Integral`` to Python, never a number of draws), a
float refuses ``bool``, NaN and ±inf, and σ stays below the bound where float32 noise
overflows.

The input domain: σ and every certified radius are measured in the inputs' units, so
an estimator declares the range its inputs take (``input_range``), and inputs outside
it are refused with what to do (:func:`check_inputs_in_range`).
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.utils._param_validation import (
    Interval,
    InvalidParameterError,
    Options,
    StrOptions,
    validate_parameter_constraints,
    validate_params,
)

__all__ = [
    "NON_NEGATIVE",
    "NON_NEGATIVE_INT",
    "POSITIVE",
    "POSITIVE_INT",
    "PROBABILITY",
    "SIGMA",
    "SIGMA_MAX",
    "Float",
    "Integer",
    "InvalidParameterError",
    "Options",
    "StrOptions",
    "check_input_range",
    "check_inputs_in_range",
    "check_parameters",
    "resolve_clip_range",
    "validate_params",
]

# Gaussian draws in float32 stay below 64 in magnitude (P(|z| > 64) < 1e-800), so σ·z
# is finite for every σ up to float32's maximum / 64; a larger σ would overflow to inf.
SIGMA_MAX = float(np.finfo(np.float32).max) / 64


class Integer(Interval):
    """An integer in ``[left, right]`` (``right=None``: unbounded) that is not a ``bool``.

    Parameters
    ----------
    left, right : int or None
        The bounds (None: unbounded on that side).
    closed : {"left", "right", "both", "neither"}
        Which bounds belong to the interval (scikit-learn's ``Interval``).
    """

    def __init__(self, left, right=None, *, closed: str):
        super().__init__(Integral, left, right, closed=closed)

    def is_satisfied_by(self, val) -> bool:
        return not isinstance(val, (bool, np.bool_)) and super().is_satisfied_by(val)


class Float(Interval):
    """A finite real number in the interval, not a ``bool``.

    Parameters
    ----------
    left, right : float or None
        The bounds (None: unbounded on that side).
    closed : {"left", "right", "both", "neither"}
        Which bounds belong to the interval (scikit-learn's ``Interval``).
    note : str, default=""
        Why the bounds are what they are, added to the refusal message.
    """

    def __init__(self, left, right=None, *, closed: str, note: str = ""):
        super().__init__(Real, left, right, closed=closed)
        self.note = note

    def is_satisfied_by(self, val) -> bool:
        return (not isinstance(val, (bool, np.bool_)) and super().is_satisfied_by(val)
                and bool(np.isfinite(val)))

    def __str__(self) -> str:
        text = "a finite " + super().__str__().removeprefix("a ")
        return f"{text} ({self.note})" if self.note else text


# Constraints shared by the methods' ``_parameter_constraints`` tables and the public
# functions' ``@validate_params``.
POSITIVE_INT = [Integer(1, None, closed="left")]
NON_NEGATIVE_INT = [Integer(0, None, closed="left")]
POSITIVE = [Float(0, None, closed="neither")]
NON_NEGATIVE = [Float(0, None, closed="left")]
PROBABILITY = [Float(0, 1, closed="neither")]
SIGMA = [Float(0, SIGMA_MAX, closed="neither",
               note="above it float32 noise overflows to inf: use a sigma on the scale of "
                    "the inputs")]


def check_parameters(constraints: dict, params: dict, caller: str) -> None:
    """Check ``params`` against ``constraints`` (names missing from ``constraints`` pass).

    Raises scikit-learn's ``InvalidParameterError`` (a ``ValueError`` and a
    ``TypeError``) naming the parameter, ``caller``, what it accepts and the value given.

    Parameters
    ----------
    constraints : dict
        Parameter name → list of scikit-learn constraints.
    params : dict
        Parameter name → value.
    caller : str
        Who takes them, for the message.
    """
    validate_parameter_constraints(constraints, params, caller_name=caller)


# --------------------------------------------------------------------------- input domain
def check_input_range(input_range) -> tuple[float, float] | None:
    """``input_range`` as ``(low, high)`` floats with ``low < high``, or None.

    Parameters
    ----------
    input_range : (float, float) or None
        The declared domain of the inputs.
    """
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
    """Refuse inputs outside the declared ``input_range`` (None: any values).

    Parameters
    ----------
    X : ndarray
        The inputs, any shape.
    input_range : (float, float) or None
        The declared domain.
    owner : str
        Who declared it, for the message (the estimator's class name).
    """
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
