"""The layering of the walsess package, read from its source (nothing is imported).

* No import circles: the graph of imports between walsess modules (the
  benchmark package included) is acyclic. Imports inside ``if TYPE_CHECKING:``
  count too: a circle that only the type checker sees still couples the two
  modules both ways (session.py, for one, talks to its store through the
  :class:`~walsess.session.SessionBackend` protocol, not by importing store.py).
  A submodule's implicit import of its parent package is not an edge.
* No module imports another module's underscore names (``from .x import _y``)
  or reaches into one through a module it imported (``x._y``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import walsess

ROOT = Path(walsess.__file__).parent


def module_name(path: Path) -> str:
    parts = ["walsess", *path.relative_to(ROOT).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def package_of(name: str) -> str:
    """The package a relative import in module *name* starts from."""
    return name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]


def resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module an ``from ... import`` names."""
    if node.level == 0:
        return node.module or ""
    base = package_of(importer)
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    return f"{base}.{node.module}" if node.module else base


class Import:
    """One walsess module an import statement brings in, and the names taken from it."""

    def __init__(self, target: str, names: list[str], line: int) -> None:
        self.target, self.names, self.line = target, names, line


def imports_of(name: str) -> Iterator[Import]:
    """Every import of a walsess module in module *name*, TYPE_CHECKING blocks included."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    yield Import(alias.name, [], node.lineno)
        elif isinstance(node, ast.ImportFrom):
            source = resolve(name, node)
            if source not in MODULES:
                continue
            names: list[str] = []
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in MODULES:  # from . import record: the submodule itself
                    yield Import(sub, [], node.lineno)
                else:
                    names.append(alias.name)
            if names:
                yield Import(source, names, node.lineno)


def graph() -> dict[str, set[str]]:
    return {
        name: {imp.target for imp in imports_of(name) if imp.target != name} for name in MODULES
    }


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle (a list of modules, the first repeated at the end), or None."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(edges, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        stack.append(node)
        for nxt in sorted(edges[node]):
            if colour[nxt] == grey:
                return [*stack[stack.index(nxt) :], nxt]
            if colour[nxt] == white:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        colour[node] = black
        return None

    for node in sorted(edges):
        if colour[node] == white:
            found = visit(node)
            if found:
                return found
    return None


def test_the_modules_are_found() -> None:
    assert {"walsess", "walsess.store", "walsess.session", "walsess.benchmark.runner"} <= set(
        MODULES
    )
    assert "walsess.session" in graph()["walsess.store"]  # the parser sees relative imports


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circles() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_session_does_not_import_store() -> None:
    assert "walsess.store" not in graph()["walsess.session"]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_uses_another_modules_private_names(name: str) -> None:
    bad: list[str] = []
    aliases: dict[str, str] = {}  # local name -> walsess module, for x._y uses
    tree = ast.parse(MODULES[name].read_text())
    for imp in imports_of(name):
        bad += [
            f"line {imp.line}: from {imp.target} import {n}"
            for n in imp.names
            if n.startswith("_") and not n.startswith("__")
        ]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = resolve(name, node)
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:
                    aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES and alias.asname:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            bad.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    assert not bad, f"{name} uses private names of other modules: {bad}"
