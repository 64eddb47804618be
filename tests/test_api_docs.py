"""The API reference documents every parameter: each entry of ``docs/api.rst`` (and each
method an estimator user calls) names each of its parameters in a numpydoc Parameters
section (Attributes for a dataclass, whose fields are its parameters).  This is what the
rendered pages show; ``docs/check_site.py`` checks the same in a browser."""

import inspect
import re
from pathlib import Path

import pytest

import smoothsk
from smoothsk.docstrings import parameters_to_document, resolve_name

ROOT = Path(__file__).resolve().parents[1]
USER_METHODS = ("fit", "partial_fit", "predict", "predict_proba", "predict_or_abstain",
                "score", "certify", "certify_radius", "certify_radii", "certify_incremental")


def _api_entries() -> list[str]:
    """Dotted names of the autosummary entries of docs/api.rst, with their module."""
    module, names = "smoothsk", []
    for line in (ROOT / "docs" / "api.rst").read_text().splitlines():
        current = re.match(r"\.\. currentmodule:: (\S+)", line)
        if current:
            module = current.group(1)
            continue
        entry = re.match(r"   ([A-Za-z_][\w.]*)$", line)
        if entry:
            names.append(f"{module}.{entry.group(1)}")
    return names


def documented_names(doc: str, section: str) -> set[str] | None:
    """The names a numpydoc ``section`` documents (``a, b : type`` lines count each
    name), or None when there is no such section."""
    match = re.search(rf"^{section}\n-+\n(.*?)(?:\n\n[A-Z][a-z ]+\n-+\n|\Z)", doc,
                      re.S | re.M)
    if match is None:
        return None
    names = set()
    for line in match.group(1).splitlines():
        header = re.match(r"^([*\w][\w*, ]*?)\s*(?::|$)", line)
        if header and not line.startswith(" "):
            names |= {name.strip().lstrip("*") for name in header.group(1).split(",")}
    return names


def undocumented(obj) -> list[str]:
    """The parameters of ``obj`` its docstring does not document ("section" if it has
    no section at all)."""
    wanted = parameters_to_document(obj)
    if wanted is None:
        return []
    section, params = wanted
    names = documented_names(inspect.getdoc(obj) or "", section)
    if names is None:
        return [f"no {section} section"]
    return [name for name in params if name not in names]


@pytest.mark.parametrize("name", [n for n in _api_entries()
                                  if parameters_to_document(resolve_name(n))])
def test_every_api_entry_documents_its_parameters(name):
    assert undocumented(resolve_name(name)) == [], name


def test_the_estimators_user_methods_document_their_parameters():
    missing = {}
    for cls_name in smoothsk.__all__:
        cls = getattr(smoothsk, cls_name)
        if not (inspect.isclass(cls) and issubclass(cls, smoothsk.SmoothedClassifier)):
            continue
        for method in USER_METHODS:
            if hasattr(cls, method) and undocumented(getattr(cls, method)):
                missing[f"{cls_name}.{method}"] = undocumented(getattr(cls, method))
    assert missing == {}


def test_every_public_method_smoothsk_defines_documents_its_parameters():
    # the hooks a method author overrides (training_loss, training_data, check_*, ...)
    # as well as the user's methods; skorch's and scikit-learn's own are theirs to document
    missing = {}
    for cls_name in smoothsk.__all__:
        cls = getattr(smoothsk, cls_name)
        if not (inspect.isclass(cls) and issubclass(cls, smoothsk.SmoothedClassifier)):
            continue
        for name, function in inspect.getmembers(cls, inspect.isfunction):
            owner = next(k for k in cls.__mro__ if name in k.__dict__)
            if name.startswith("_") or not owner.__module__.startswith("smoothsk"):
                continue
            if undocumented(function):
                missing[f"{owner.__name__}.{name}"] = undocumented(function)
    assert missing == {}


def test_the_check_itself_sees_a_missing_parameter():
    def documented(a, b):
        """Something.

        Parameters
        ----------
        a : int
            One.
        """

    def grouped(a, b, **kwargs):
        """Something.

        Parameters
        ----------
        a, b : int
            Both.
        """

    assert undocumented(documented) == ["b"] and undocumented(grouped) == []
    assert undocumented(lambda x: x) == ["no Parameters section"]


def test_names_resolve_and_say_what_they_must_document():
    from smoothsk.certification.core import Certificate

    assert resolve_name("smoothsk.certification.core.certify") is smoothsk.certify
    with pytest.raises(ImportError, match="no_such_name"):
        resolve_name("smoothsk.certification.no_such_name")
    assert parameters_to_document(resolve_name("smoothsk.models.NETWORK_NAMES")) is None
    section, names = parameters_to_document(Certificate)
    assert section == "Attributes" and "radius" in names
    assert parameters_to_document(smoothsk.certify)[1][:3] == ["module", "X", "sigma"]
