"""Errors that mean "the user asked for something we cannot do", as opposed to bugs."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in input or environment: reported as one line and exit code 2, no traceback."""

    exit_code = 2


class ClusterUnreachable(UserError):
    """No broker answered while a client was built. At start that is the user's to fix (the
    address, the local broker); in a process already running it is an outage, which
    :func:`forestream.edge.factory.rebuilt` turns into a transient error to retry."""

    def __init__(self, bootstrap: str, message: str) -> None:
        super().__init__(message)
        self.bootstrap = bootstrap
