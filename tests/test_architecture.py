"""The house rules of docs/architecture.md, checked on the source: small modules, no
private name imported across modules, no module-level import cycle, one import of
scikit-learn's private validation module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "smoothsk"
MODULES = sorted(PACKAGE.rglob("*.py"))
# "no module over ~450 lines": the sampling loop is the largest room
MAX_LINES = 460


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path):
    """(imported module, names) of every import run when the module is imported: module
    level and inside ``if``/``try`` at module level, not inside functions."""
    tree = ast.parse(path.read_text())
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, (ast.If, ast.Try)):
            stack.extend(node.body + node.orelse + getattr(node, "finalbody", [])
                         + [h for handler in getattr(node, "handlers", [])
                            for h in handler.body])


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_a_second_application(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines: split it into rooms"


def test_no_private_name_is_imported_across_modules():
    offenders = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module \
                    and node.module.startswith("smoothsk"):
                offenders += [f"{module_name(path)}: {node.module}.{alias.name}"
                              for alias in node.names
                              if alias.name.startswith("_") and alias.name != "__version__"]
    assert offenders == []


def test_one_module_imports_scikit_learns_private_validation():
    importers = {module_name(path) for path in MODULES
                 if "sklearn.utils._param_validation" in path.read_text()}
    assert importers == {"smoothsk.validation"}


def test_no_module_level_import_cycle():
    names = {module_name(path): path for path in MODULES}
    graph = {name: set() for name in names}
    for name, path in names.items():
        for target, imported in top_level_imports(path):
            candidates = [target] + [f"{target}.{item}" for item in imported]
            graph[name] |= {c for c in candidates if c in names and c != name}
    # a package's __init__ re-exports its modules: importing a submodule runs the
    # package's __init__ first, which is not a cycle of the submodule's own making
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " → ".join(trail + [node, nxt]))
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
