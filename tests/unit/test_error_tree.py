"""One error module: every exception forestream raises on purpose is defined there, under one root,
and every class the CLI ends a command for has a documented exit code."""

from __future__ import annotations

import ast
import inspect

from forestream import errors
from forestream.exit_codes import BUG, EXIT_CODES, USER_ERROR, exit_code_for
from tests.package_walk import PACKAGE, package_modules

_BASES = {"Exception", "BaseException", "ValueError", "RuntimeError", "KeyError", "OSError"}


def _error_classes_outside_the_module() -> list[str]:
    found = []
    for path in package_modules():
        if path.name == "errors.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ClassDef):
                continue
            names = {
                b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases
            }
            if names & _BASES or any(n.endswith("Error") for n in names):
                found.append(f"{path.relative_to(PACKAGE)}: class {node.name}")
    return found


def test_no_exception_class_is_defined_outside_forestream_errors() -> None:
    assert _error_classes_outside_the_module() == []


def test_the_scan_sees_the_symlinked_components() -> None:
    """worker/, producer/, training/ are reached through links: the scan must walk them."""
    scanned = {p.relative_to(PACKAGE).parts[0] for p in package_modules()}
    assert {"worker", "producer", "training", "edge", "registry"} <= scanned


def test_every_error_has_one_root_and_a_cause() -> None:
    classes = [
        c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__
    ]
    assert len(classes) > 15
    for cls in classes:
        assert issubclass(cls, errors.ForestreamError), cls
        assert cls.kind and (cls is errors.ForestreamError or cls.kind != cls.__mro__[1].kind), cls


def test_exit_codes_follow_the_cause() -> None:
    assert exit_code_for(errors.UserError("x")) == USER_ERROR
    assert exit_code_for(errors.ArtifactRejected) == USER_ERROR
    assert exit_code_for(errors.DeliveryFailed) == BUG
    assert exit_code_for(RuntimeError("a bug")) == BUG
    assert exit_code_for(errors.TransientKafkaError("never reaches the CLI")) == BUG
    fatal = [errors.AuthenticationFailed, errors.TlsFailed, errors.NotAuthorized]
    fatal += [errors.TopicUnavailable, errors.UnreadableRecords, errors.ProducerFenced]
    codes = [exit_code_for(cls) for cls in fatal]
    assert len(set(codes)) == len(fatal) and USER_ERROR not in codes
    assert all(code in EXIT_CODES for code in codes)
