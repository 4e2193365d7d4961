"""The docs site against the code: the CLI reference, the exit codes, the pages MkDocs builds.

The docs say what the commands do; these tests fail when the code moves and the pages do not:
a command added without regenerating ``docs/reference/cli.md``, a help text changed, an exit
code added to the table in :mod:`forestream.exit_codes` but not to the operations page, a page
written but left out of the site's navigation. (The strict MkDocs build, ``make docs-check``,
catches broken links and anchors; it needs the ``docs`` extra, these tests do not.)
"""

from __future__ import annotations

import importlib.util
import re
import sys
from types import ModuleType

import pytest
import yaml

from forestream.exit_codes import EXIT_CODES
from tests.conftest import ROOT

DOCS = ROOT / "docs"


def _generator(name: str = "gen_cli_reference") -> ModuleType:
    path = DOCS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    return _generator()


def test_every_command_of_the_app_is_in_the_cli_reference(gen: ModuleType) -> None:
    page = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    paths = gen.command_paths()
    assert len(paths) >= 15  # the root, groups and leaves: a walk that found nothing is a bug
    missing = [gen.heading(p) for p in paths if f"## `{gen.heading(p)}`" not in page]
    assert not missing, f"not in docs/reference/cli.md (run docs/gen_cli_reference.py): {missing}"


def test_the_committed_cli_reference_is_what_the_app_prints(gen: ModuleType) -> None:
    page = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    assert page == gen.render(), "docs/reference/cli.md is stale: run docs/gen_cli_reference.py"


@pytest.fixture(scope="module")
def settings_gen() -> ModuleType:
    return _generator("gen_settings_reference")


def test_the_committed_settings_reference_is_what_the_settings_classes_say(
    settings_gen: ModuleType,
) -> None:
    page = (DOCS / "reference" / "settings.md").read_text(encoding="utf-8")
    assert page == settings_gen.render(), (
        "docs/reference/settings.md is stale: run docs/gen_settings_reference.py"
    )


def test_every_forestream_variable_the_code_names_is_on_the_settings_page(
    settings_gen: ModuleType,
) -> None:
    """The settings classes' fields, and every ``FORESTREAM_*`` name spelled out in the code
    (read with os.environ, set for a child, named in a message)."""
    page = (DOCS / "reference" / "settings.md").read_text(encoding="utf-8")
    spelled: set[str] = set()
    for folder in ("forestream", "worker", "producer", "training"):
        for path in (ROOT / folder).rglob("*.py"):
            spelled |= set(re.findall(r"FORESTREAM_[A-Z0-9_]*[A-Z0-9]", path.read_text("utf-8")))
    spelled.discard("FORESTREAM_X")  # the placeholder in a comment on help texts
    names = spelled | set(settings_gen.all_env_names())
    assert len(names) >= 50  # a walk that found nothing is a bug
    missing = sorted(n for n in names if f"`{n}`" not in page)
    assert not missing, f"not on docs/reference/settings.md: {missing}"


def test_every_settings_class_and_command_is_covered(settings_gen: ModuleType) -> None:
    """A new settings class, or a command loading one the generator does not know, would
    leave settings off the page or commands out of its 'read by' column."""
    from pydantic_settings import BaseSettings

    import forestream.cli  # noqa: F401  (registers every component, importing its settings)

    def subclasses(cls: type) -> set[type]:
        found = set(cls.__subclasses__())
        return found | {s for c in found for s in subclasses(c)}

    known = set(settings_gen._classes().values())
    ours = {c for c in subclasses(BaseSettings) if c.__module__.startswith("forestream")}
    assert ours <= known, f"settings classes not on the page: {ours - known}"
    gen = _generator()
    leaves = {" ".join(p) for p in gen.command_paths() if p}
    loading = set(settings_gen.COMMAND_SETTINGS)
    assert loading <= leaves
    quiet = {"kafka", "kafka start", "kafka stop", "kafka status", "demo-data", "models", "topics"}
    quiet |= {
        "keys",
        "keys create",
        "registry",
        "registry start",
        "registry stop",
        "registry status",
    }
    assert leaves - loading == quiet, "a command's settings class is not in COMMAND_SETTINGS"


def test_exit_codes_are_documented_on_the_operations_page() -> None:
    """The table in forestream/exit_codes.py is what scripts see; the page must say the same."""
    page = (DOCS / "operations.md").read_text(encoding="utf-8")
    section = page.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    for code, meaning in EXIT_CODES.items():
        assert f"| {code} | {meaning} |" in section, f"operations page misses exit code {code}"
    rows = re.findall(r"^\| (\d+) \|", section, re.MULTILINE)
    assert sorted(map(int, rows)) == sorted(EXIT_CODES), "a code on the page is not in EXIT_CODES"


def test_every_exit_code_has_a_troubleshooting_entry() -> None:
    page = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    index = page.split("## Quick index by exit code", 1)[1].split("\n## ", 1)[0]
    for code in EXIT_CODES:
        if code != 0:
            assert f"| {code} |" in index, f"troubleshooting index misses exit code {code}"


def _nav_files(nav: object) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [f for item in nav for f in _nav_files(item)]
    if isinstance(nav, dict):
        return [f for value in nav.values() for f in _nav_files(value)]
    return []


def test_every_page_is_in_the_navigation_and_every_nav_entry_exists() -> None:
    class Loader(yaml.SafeLoader):
        pass

    # mkdocs.yml names a Python callable (the Mermaid fence); the nav does not need it
    Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda *_: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=Loader)
    assert config["strict"] is True
    listed = set(_nav_files(config["nav"]))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert listed == pages, f"only in nav: {listed - pages}; not in nav: {pages - listed}"


def test_the_architecture_page_draws_the_batch_cycle_and_its_failure_edges() -> None:
    page = (DOCS / "architecture.md").read_text(encoding="utf-8")
    diagram = page.split("```mermaid\nstateDiagram-v2", 1)[1].split("```", 1)[0]
    for edge in ("taken --> out", "out --> acknowledged", "acknowledged --> committed"):
        assert edge in diagram
    assert "out --> taken" in diagram  # acks failed: read again
    assert page.count("```mermaid") >= 3  # the system, the rooms, the cycle (and the edge)
