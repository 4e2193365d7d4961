"""The package's modules as files, for the tests that read the source without importing it."""

from __future__ import annotations

import os
from pathlib import Path

import forestream

PACKAGE = Path(forestream.__file__).resolve().parent


def package_modules() -> list[Path]:
    """Every module, the linked components (worker/, producer/, training/) included: ``rglob``
    does not follow the symlinks they are reached through."""
    return sorted(
        Path(root, name)
        for root, _, files in os.walk(PACKAGE, followlinks=True)
        for name in files
        if name.endswith(".py")
    )
