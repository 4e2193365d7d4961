"""The house's size rules, checked from the source: a module is one room, the worker loop thin.

Sizes are proxies, but cheap ones that fail before a room quietly becomes two (the worker loop
grew to 827 lines in one class before anyone looked)."""

from __future__ import annotations

import ast

from tests.package_walk import PACKAGE, package_modules

MAX_MODULE_LINES = 600
MAX_WORKER_CLASS_LINES = 300


def test_no_module_is_over_the_line_limit() -> None:
    too_long = {}
    for path in package_modules():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_MODULE_LINES:
            too_long[str(path.relative_to(PACKAGE))] = lines
    assert too_long == {}, f"modules over {MAX_MODULE_LINES} lines: {too_long}"


def test_the_worker_class_stays_thin() -> None:
    source = (PACKAGE / "worker" / "loop.py").read_text(encoding="utf-8")
    (worker,) = [
        node
        for node in ast.parse(source).body
        if isinstance(node, ast.ClassDef) and node.name == "Worker"
    ]
    assert worker.end_lineno is not None
    length = worker.end_lineno - worker.lineno + 1
    assert length <= MAX_WORKER_CLASS_LINES, f"Worker is {length} lines"


def test_the_walk_reaches_every_room() -> None:
    rooms = {p.relative_to(PACKAGE).parts[0] for p in package_modules()}
    assert {"worker", "producer", "training", "edge", "registry", "wire", "runtime"} <= rooms


def test_runtime_checks_are_exceptions_not_asserts() -> None:
    """``python -O`` drops ``assert``: a check the code relies on must raise on its own."""
    found = [
        f"{path.relative_to(PACKAGE)}:{node.lineno}"
        for path in package_modules()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Assert)
    ]
    assert found == [], f"assert statements in the package: {found}"
