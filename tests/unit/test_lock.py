"""Installs are reproducible: ``make`` installs requirements-dev.lock, and the lock keeps up with
pyproject.toml. A failure here means the venv drifted from the lock (re-run ``make``) or
pyproject changed without ``make lock``."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")
_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: Path) -> dict[str, str]:
    found = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line.strip())
        if match:
            found[_canonical(match[1])] = match[2]
    return found


def declared(extras: bool) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    specs = list(project["dependencies"])
    if extras:
        specs += [s for group in project["optional-dependencies"].values() for s in group]
    names = set()
    for spec in specs:
        match = _NAME.match(spec)
        if match is None:
            raise ValueError(f"cannot read a name from {spec!r}")
        names.add(_canonical(match[1]))
    return names


@pytest.mark.parametrize(
    ("lock", "extras"), [("requirements.lock", False), ("requirements-dev.lock", True)]
)
def test_the_lock_pins_every_declared_dependency(lock: str, extras: bool) -> None:
    missing = declared(extras) - set(pins(ROOT / lock))
    assert not missing, f"{lock} misses {sorted(missing)}: run `make lock`"


def test_the_environment_is_the_locked_one() -> None:
    """What ``make`` installed is exactly what the lock says (the check ``pip freeze`` against
    the lock would do, without a subprocess)."""
    locked = pins(ROOT / "requirements-dev.lock")
    installed = {_canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    drifted = {
        name: (want, installed.get(name))
        for name, want in locked.items()
        if installed.get(name) != want
    }
    assert not drifted, f"installed versions differ from the lock (want, have): {drifted}"


def test_the_pin_reader_reads_what_uv_writes(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    lock.write_text(
        "# via forestream\nmoto[server]==5.1.0 \\\n    --hash=sha256:ab\n"
        "scikit-learn==1.9.1\n    # via forestream\n"
        "zope-interface==7.0 ; sys_platform == 'linux'\n",
        encoding="utf-8",
    )
    assert pins(lock) == {"moto": "5.1.0", "scikit-learn": "1.9.1", "zope-interface": "7.0"}
