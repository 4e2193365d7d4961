"""Commands of this component, registered on the ``forestream`` app by ``forestream.cli``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this component's commands to ``app`` (none yet)."""
