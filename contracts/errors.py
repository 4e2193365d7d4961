"""Errors that mean "the user asked for something we cannot do", as opposed to bugs."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in input or environment: reported as one line and exit code 2, no traceback."""

    exit_code = 2
