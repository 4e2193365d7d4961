"""The import graph of ``forestream`` has no cycles, and its three components stay apart.

A cycle works until someone moves an import to module level (or Python imports the other
end first) and a name is then read from a half-initialised module; components that import
each other can no longer be reshaped or shipped one at a time. Both are read from the source
with :mod:`ast`: nothing is imported, so the test needs no Kafka client and cannot be fooled
by an import that happens to have run already.

Every ``import`` counts, at module level or inside a function: a function-local import only
defers the circle to the first call. Imports under ``if TYPE_CHECKING:`` are left out: they
never run, so they cannot take part in an import-time circle. A submodule is not counted as
importing its parent package: Python has the parent in ``sys.modules`` before the child runs,
so an ``__init__`` that re-exports its submodules closes no circle (one importing a name from
its own package's ``__init__`` does, and is counted).
"""

from __future__ import annotations

import ast
import functools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "forestream"
"""The import root; ``worker``, ``producer`` and ``training`` are symlinks inside it, walked
as ``forestream.worker`` etc. (the names the code imports them by)."""

COMPONENTS = ("forestream.worker", "forestream.training", "forestream.producer")
"""Deployed and tested on their own: none may import another (the shared rooms are theirs)."""

SHARED_ROOMS = (
    "forestream.wire",
    "forestream.edge",
    "forestream.registry",
    "forestream.runtime",
    "forestream.errors",
    "forestream.local",
    "forestream.fleet",
)
"""Where the components meet: they may import each other, never a component or the shell."""


def _modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module under ``root`` by its dotted name, through the component symlinks."""
    found: dict[str, Path] = {}
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        package = Path(folder).relative_to(root.parent).parts
        for name in files:
            if not name.endswith(".py"):
                continue
            parts = package if name == "__init__.py" else (*package, name[:-3])
            found[".".join(parts)] = Path(folder) / name
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import in ``node``, at any depth, except under ``if TYPE_CHECKING:``."""
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        for statement in node.orelse:
            yield from _import_nodes(statement)
        return
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    for child in ast.iter_child_nodes(node):
        yield from _import_nodes(child)


def _imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The ``forestream`` modules ``module`` imports: ``from a import b`` is ``a.b`` when that
    is a module, else ``a`` (a name defined there, or re-exported by its ``__init__``)."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    targets: set[str] = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, base] if base else package)
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            targets.add(sub if sub in known else base)
    return {t for t in targets if t in known and t != module}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = _modules(root)
    known = set(modules)
    return {name: _imported(name, path, known) for name, path in sorted(modules.items())}


@functools.cache
def _forestream_graph() -> dict[str, set[str]]:
    """The graph of :data:`ROOT`, parsed once for all the tests here."""
    return import_graph()


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None (an iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        stack = [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            step = next(stack[-1], None)
            if step is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(step) == 1:
                return [*path[path.index(step) :], step]
            elif not state.get(step):
                state[step] = 1
                path.append(step)
                stack.append(iter(sorted(graph.get(step, ()))))
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per tangle (strongly connected component of more than one module), so a
    failure names every circle at once rather than the first found."""
    seen: set[str] = set()
    tangles: list[list[str]] = []
    for start in sorted(graph):
        if start in seen:
            continue
        ahead = _reachable(graph, start)
        tangle = {m for m in ahead if start in _reachable(graph, m)}
        seen |= tangle | {start}
        if len(tangle) > 1:
            inner = {m: graph[m] & tangle for m in tangle}
            tangles.append(find_cycle(inner) or sorted(tangle))
    return tangles


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    found, todo = {start}, [start]
    while todo:
        for step in graph.get(todo.pop(), ()):
            if step not in found:
                found.add(step)
                todo.append(step)
    return found


def _component(module: str) -> str | None:
    return next((c for c in COMPONENTS if module == c or module.startswith(f"{c}.")), None)


def test_the_graph_sees_every_component_through_its_symlink() -> None:
    graph = _forestream_graph()
    for component in (*COMPONENTS, "forestream.edge.factory"):
        assert component in graph, f"{component} not found under {ROOT}"


def test_forestream_has_no_import_cycle() -> None:
    found = cycles(_forestream_graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_worker_training_and_producer_do_not_import_each_other() -> None:
    crossings = sorted(
        f"{a} -> {b}"
        for a, targets in _forestream_graph().items()
        for b in targets
        if (source := _component(a)) and (target := _component(b)) and source != target
    )
    assert not crossings, "components import each other:\n" + "\n".join(crossings)


@pytest.mark.parametrize(
    ("sources", "cycle"),
    [
        ({"a.py": "import pkg.b\n", "b.py": "def f():\n    from pkg import a\n"}, True),
        ({"a.py": "from . import b\n", "b.py": "from .a import x\n"}, True),
        ({"a.py": "from pkg.b import x\n", "b.py": "import pkg.c\n", "c.py": ""}, False),
        ({"__init__.py": "from pkg.a import x\n", "a.py": "from pkg.b import y\n"}, False),
        ({"__init__.py": "from pkg.a import x\n", "a.py": "from pkg import y\n"}, True),
        (
            {
                "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.b\n",
                "b.py": "import pkg.a\n",
            },
            False,
        ),
    ],
)
def test_the_checker_finds_a_cycle_only_where_there_is_one(
    tmp_path: Path, sources: dict[str, str], cycle: bool
) -> None:
    """The checker itself, on a throwaway package: a function-local import closes a cycle,
    a relative one too, and one under ``TYPE_CHECKING`` does not; an ``__init__`` re-exporting
    a submodule's name does not, unless that submodule imports a name from the ``__init__``."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")  # unless the case brings its own
    for name, text in sources.items():
        (package / name).write_text(text)
    found = cycles(import_graph(package))
    assert bool(found) == cycle, found


def test_the_shared_rooms_import_no_component_and_not_the_shell() -> None:
    def room(module: str) -> bool:
        return any(module == r or module.startswith(f"{r}.") for r in SHARED_ROOMS)

    upward = sorted(
        f"{a} -> {b}"
        for a, targets in _forestream_graph().items()
        if room(a)
        for b in targets
        if not room(b) and b != "forestream"
    )
    assert not upward, "shared rooms importing upwards:\n" + "\n".join(upward)
