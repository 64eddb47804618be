"""The training methods, by name: one line per method, everything else derived.

A method is one module of :mod:`smoothsk.methods` (a pure loss and a small estimator
class that sets :attr:`~smoothsk.SmoothedClassifier.method_name`,
:attr:`~smoothsk.SmoothedClassifier.display_name` and, if it reads other models,
:attr:`~smoothsk.SmoothedClassifier.side_model_params`) plus one entry in
:data:`METHODS`.  ``smoothsk train --method`` and its per-method options, the recipes,
the reports and the tests read this registry; nothing else lists the methods.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral, Real

from smoothsk.base import SmoothedClassifier
from smoothsk.methods.catrs import CATRSClassifier
from smoothsk.methods.consistency import ConsistencyClassifier
from smoothsk.methods.crt import CRTStudent
from smoothsk.methods.denoised import DenoisedSmoothingClassifier
from smoothsk.methods.ensemble import SmoothedEnsembleClassifier
from smoothsk.methods.gaussian import GaussianAugClassifier
from smoothsk.methods.macer import MACERClassifier
from smoothsk.methods.pretrained import PretrainedSmoothingClassifier
from smoothsk.methods.smoothadv import SmoothAdvClassifier
from smoothsk.methods.smoothmix import SmoothMixClassifier
from smoothsk.methods.stability import StabilityClassifier
from smoothsk.validation import InvalidParameterError, check_parameters

__all__ = ["ASSEMBLED", "METHODS", "MethodOption", "display_name", "method_class", "method_options"]

METHODS: dict[str, type[SmoothedClassifier]] = {cls.method_name: cls for cls in (
    GaussianAugClassifier,
    SmoothMixClassifier,
    CRTStudent,
    SmoothAdvClassifier,
    MACERClassifier,
    ConsistencyClassifier,
    StabilityClassifier,
    CATRSClassifier,
    DenoisedSmoothingClassifier,
)}
"""``smoothsk train --method`` name → estimator class, in the order the CLI lists them."""

ASSEMBLED: dict[str, type[SmoothedClassifier]] = {cls.method_name: cls for cls in (
    SmoothedEnsembleClassifier,
)}
"""``smoothsk train --method`` names of models assembled from trained model files
(``--members``) and trained no further → estimator class."""

# Classes that name runs without being trained by ``smoothsk train`` (the smoothed
# classifier of a plain fitted classifier, which ``smoothsk certify`` builds).
_NAMED_ONLY = (PretrainedSmoothingClassifier, *ASSEMBLED.values())


def method_class(name: str) -> type[SmoothedClassifier]:
    """The estimator class of a method name.

    Parameters
    ----------
    name : str
        A key of :data:`METHODS` (``"smoothmix"``).

    Raises
    ------
    ValueError
        For a name outside the registry, listing the names.
    """
    if name not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}; got {name!r}.")
    return METHODS[name]


def display_name(name: str | None) -> str:
    """How tables name a method (``"smoothmix"`` → ``"SmoothMix"``); unknown names as given.

    Parameters
    ----------
    name : str or None
        A method name as certification sidecars record it.
    """
    for cls in (*METHODS.values(), *_NAMED_ONLY):
        if cls.method_name == name:
            return cls.display_name
    return str(name)


@dataclass(frozen=True)
class MethodOption:
    """One hyperparameter of a method, as the command line offers it.

    Attributes
    ----------
    name : str
        The estimator parameter (``"num_noise"``; option ``--num-noise``).
    parse : callable
        Text to value; raises ``ValueError`` with what it expected.
    metavar : str
        What the value is (``INT``, ``FLOAT``, ``{mse,stability}``...).
    default : object
        The estimator's default.
    help : str
        The first sentence of the parameter's description in the class docstring.
    """

    name: str
    parse: Callable[[str], object]
    metavar: str
    default: object
    help: str


def method_options(cls: type[SmoothedClassifier]) -> dict[str, MethodOption]:
    """The hyperparameters ``cls`` adds to :class:`~smoothsk.SmoothedClassifier`.

    Read from the class's signature and ``_parameter_constraints`` (which give each
    option's type) and its numpydoc Parameters section (which gives its help).  Side
    models (:attr:`~smoothsk.SmoothedClassifier.side_model_params`) and ``prefit`` are
    not options: the command line loads side models from files.

    Parameters
    ----------
    cls : type
        A :class:`~smoothsk.SmoothedClassifier` subclass.

    Returns
    -------
    dict
        Parameter name → :class:`MethodOption`, in signature order.
    """
    shared = set(inspect.signature(SmoothedClassifier.__init__).parameters)
    descriptions = _parameter_help(cls)
    options = {}
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name in shared or name in cls.side_model_params or name == "prefit" \
                or parameter.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        constraints = cls._parameter_constraints.get(name, [])
        if constraints == "no_validation":
            continue
        parse, metavar = _parser(name, constraints, "smoothsk train")
        options[name] = MethodOption(name, parse, metavar, parameter.default,
                                     descriptions.get(name, ""))
    return options


def _parser(name: str, constraints: list, owner: str) -> tuple[Callable[[str], object], str]:
    """A text parser for a parameter from its scikit-learn constraints: the text is read
    as the constraints' type, then checked against them, so a bad value gets the message
    the estimator gives (:mod:`smoothsk.validation`)."""
    allows_none = None in constraints
    kinds = set()
    choices: set[str] = set()
    for constraint in constraints:
        if constraint == "boolean":
            kinds.add(bool)
        elif constraint is tuple:
            kinds.add(tuple)
        elif hasattr(constraint, "options") and all(isinstance(o, str)
                                                     for o in constraint.options):
            choices |= set(constraint.options)
        elif getattr(constraint, "type", None) is Integral:
            kinds.add(int)
        elif getattr(constraint, "type", None) is Real:
            kinds.add(float)
    if choices:
        metavar = "{" + ",".join(sorted(choices)) + "}"
        if tuple in kinds:
            metavar += "|(LOW,HIGH)"
    elif bool in kinds:
        metavar = "{true,false}"
    elif tuple in kinds:
        metavar = "(LOW,HIGH)"
    else:
        metavar = "INT" if kinds == {int} else "FLOAT"
    if allows_none:
        metavar += "|none"

    def parse(text: str):
        if allows_none and text.strip().lower() == "none":
            return None
        if choices and text in choices:
            return text
        if choices and tuple not in kinds:
            raise ValueError(f"expected one of {sorted(choices)}; got {text!r}")
        if bool in kinds:
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"expected true or false; got {text!r}")
            return lowered in ("true", "1", "yes")
        if tuple in kinds:
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = None
            if not (isinstance(value, tuple) and all(isinstance(v, (int, float))
                                                     for v in value)):
                either = "".join(f"{choice!r} or " for choice in sorted(choices))
                raise ValueError(f"expected {either}a tuple of numbers such as (0,1); "
                                 f"got {text!r}")
            return tuple(float(v) for v in value)
        try:
            return int(text) if kinds == {int} else float(text)
        except ValueError:
            raise ValueError(f"expected {metavar.split('|')[0].lower()}; got {text!r}") \
                from None

    def parse_and_check(text: str):
        value = parse(text)
        try:
            check_parameters({name: constraints}, {name: value}, owner)
        except InvalidParameterError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    parse_and_check.__name__ = name  # argparse names the type in its messages
    return parse_and_check, metavar


def _parameter_help(cls: type) -> dict[str, str]:
    """First sentence of each entry of the numpydoc Parameters section of ``cls``."""
    doc = inspect.getdoc(cls) or ""
    match = re.search(r"^Parameters\n-+\n(.*?)(?:\n\n[A-Z][a-z]+\n-+\n|\Z)", doc, re.S | re.M)
    if not match:
        return {}
    entries, current = {}, None
    for line in match.group(1).splitlines():
        header = re.match(r"^(\w+) :", line)
        if header:
            current = header.group(1)
            entries[current] = []
        elif current is not None and line.startswith("    "):
            entries[current].append(line.strip())
    return {name: _first_sentence(" ".join(lines)) for name, lines in entries.items()}


def _first_sentence(text: str) -> str:
    sentence = re.split(r"(?<=\.)\s+(?=[A-Z])", text.replace("``", ""), maxsplit=1)[0]
    return sentence.rstrip(".")
