"""numpydoc docstrings assembled: an estimator's page lists the parameters it inherits.

A method's estimator names only its own parameters; the rest (σ, n, α, lr, ...) reach
it through ``**kwargs``.  :func:`with_shared_parameters` appends the base class's
Parameters entries to the subclass's docstring, so that ``help()``, IDEs and the API
reference document them all.  :func:`resolve_name` and :func:`parameters_to_document`
say what an API entry must document; the API-reference test and the site check use them.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect

__all__ = ["parameters_to_document", "resolve_name", "with_shared_parameters"]

_SECTIONS = ("Parameters", "Attributes", "Returns", "Examples", "Notes", "See Also",
             "References", "Methods")


def _sections(doc: str) -> list[tuple[str | None, list[str]]]:
    """A numpydoc docstring (dedented) as ``(heading, lines)`` pieces, in order."""
    lines, pieces, heading = doc.splitlines(), [], None
    current: list[str] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() in _SECTIONS and i + 1 < len(lines) \
                and set(lines[i + 1].strip()) == {"-"}:
            pieces.append((heading, current))
            heading, current = lines[i].strip(), []
            i += 2
            continue
        current.append(lines[i])
        i += 1
    pieces.append((heading, current))
    return pieces


def _entries(lines: list[str]) -> list[tuple[str, list[str]]]:
    """A Parameters section's entries: ``(names, lines)`` per unindented ``name : type``."""
    entries: list[tuple[str, list[str]]] = []
    for line in lines:
        if line and not line.startswith(" "):
            entries.append((line.split(":")[0].strip(), [line]))
        elif entries:
            entries[-1][1].append(line)
    return entries


def with_shared_parameters(doc: str | None, base_doc: str | None) -> str | None:
    """``doc`` with the base class's Parameters entries that it does not document itself
    appended to its Parameters section (made before its other sections if it has none),
    so that every estimator's page lists σ, n, α, lr, ... with its own parameters.

    Parameters
    ----------
    doc : str or None
        The subclass's docstring (numpydoc); None or empty is returned as it is.
    base_doc : str or None
        The base class's docstring, whose Parameters entries are appended.

    Returns
    -------
    str or None
        The assembled docstring (``doc`` itself when nothing is missing).
    """
    if not doc or not base_doc:
        return doc
    base = dict(_sections(inspect.cleandoc(base_doc)))
    shared = _entries(base.get("Parameters", []))
    pieces = _sections(inspect.cleandoc(doc))
    own = dict(pieces).get("Parameters", [])
    # "**kwargs" says where the rest goes; it does not document the base's group entry
    # ("criterion, optimizer, lr, ..., **kwargs"), which is then appended as well
    named = {name.strip() for names, _ in _entries(own) for name in names.split(",")} \
        - {"**kwargs"}
    extra = [line for names, lines in shared
             if not {n.strip() for n in names.split(",")} & named for line in lines]
    if not extra:
        return doc
    if "Parameters" not in dict(pieces):
        pieces.insert(1, ("Parameters", []))
    out: list[str] = []
    for heading, lines in pieces:
        if heading is not None:
            out += [heading, "-" * len(heading)]
        if heading == "Parameters":
            body = list(lines)
            while body and not body[-1].strip():
                body.pop()
            lines = body + extra + [""]
        out += lines
    return "\n".join(out)


def resolve_name(dotted: str):
    """The object a dotted name (``"smoothsk.certification.certify"``) names.

    Parameters
    ----------
    dotted : str
        A module path, then attribute names.

    Raises
    ------
    ImportError
        When no prefix is a module, or an attribute is missing.
    """
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for part in parts[cut:]:
                obj = getattr(obj, part)
        except AttributeError as exc:
            raise ImportError(f"{dotted}: {exc}") from exc
        return obj
    raise ImportError(f"no module in {dotted!r}")


def parameters_to_document(obj) -> tuple[str, list[str]] | None:
    """The numpydoc section ``obj``'s docstring must have and the names it must list.

    ``("Parameters", names)`` for a callable with named parameters (``self``, ``cls``,
    ``*args`` and ``**kwargs`` aside); ``("Attributes", fields)`` for a dataclass, whose
    fields are its parameters; None for what takes none (a constant, a module, a
    callable whose signature cannot be read or has no named parameter).

    Parameters
    ----------
    obj : object
        An API entry: a function, class, method or constant.
    """
    if not callable(obj) or inspect.ismodule(obj):
        return None
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    names = [p.name for p in signature.parameters.values()
             if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if not names:
        return None
    return ("Attributes" if dataclasses.is_dataclass(obj) else "Parameters"), names
