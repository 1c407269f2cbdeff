"""kdray's module graph: no import cycles, and no module imports another module's ``_private`` name.

The graph is read from the source (every ``import`` statement, also those inside functions, since a lazy
import closes a circle just as well), so the test needs none of kdray's dependencies. An edge goes to the
module named, or to the submodule for ``from package import submodule``; the implicit import of a parent
package is not an edge (every package ``__init__`` that registers its submodules would otherwise be a circle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kdray"

# Private names imported across modules, listed one by one so a new private import still fails the test;
# strict, so a mark must go once its imports do. Empty since the bench split (issue #14 item 7).
KNOWN_PRIVATE: dict[str, set[tuple[str, str]]] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _absolute(node: ast.ImportFrom, importer: str) -> str:
    """The module an ``import from`` names, with relative imports resolved against ``importer``."""
    if not node.level:
        return node.module or ""
    base = importer.split(".") if _is_package(importer) else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str) -> list[tuple[str, str | None]]:
    """(imported kdray module, imported name or None) for every import statement of module ``name``."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names if alias.name.split(".")[0] == "kdray"]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, name)
            if source.split(".")[0] != "kdray":
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.append((sub, None) if sub in MODULES else (source, alias.name))
    return found


def graph() -> dict[str, set[str]]:
    return {name: {target for target, _ in imports_of(name) if target in MODULES and target != name}
            for name in MODULES}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path ``[a, b, ..., a]``, or None (iterative DFS with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(edges):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(edges[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(edges.get(nxt, ()))))
    return None


def private_imports(name: str) -> set[tuple[str, str]]:
    """(module, name) pairs of ``_private`` names ``name`` imports from another kdray module."""
    return {(source, item) for source, item in imports_of(name)
            if item is not None and item.startswith("_") and not item.startswith("__") and source != name}


def test_the_walker_sees_kdray() -> None:
    edges = graph()
    assert len(MODULES) > 30 and "kdray.registry" in MODULES
    assert "kdray.config" in edges["kdray.cli"]  # a module-level import
    assert "kdray.plots" in edges["kdray.report"]  # a lazy import inside a function
    assert "kdray.checkpoint" in edges["kdray.loop"]  # ``from kdray import checkpoint``


def test_find_cycle_finds_planted_circles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles() -> None:
    assert find_cycle(graph()) is None


def test_registry_is_a_leaf() -> None:
    """Config validation reads the names without importing anything of kdray (so nothing heavy either)."""
    assert graph()["kdray.registry"] == set()


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=f"{n} imports {sorted(KNOWN_PRIVATE[n])}; "
                                             "removed by the bench/loop split (issue #14 item 7)"))
    if n in KNOWN_PRIVATE else n
    for n in sorted(MODULES)
])
def test_no_private_imports_across_modules(name: str) -> None:
    assert private_imports(name) == set()


@pytest.mark.parametrize("name", sorted(KNOWN_PRIVATE))
def test_known_private_imports_are_the_only_ones(name: str) -> None:
    """While a module is marked above, it may import only the listed private names, no new ones."""
    assert private_imports(name) <= KNOWN_PRIVATE[name]
