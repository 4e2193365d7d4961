"""The CLI layer's exit-code table: which error ends a command with which code.

Errors say what happened (:mod:`forestream.errors`); this table alone says how a process
reports it, so scripts and orchestrators can tell a bad secret from a missing ACL without
parsing text, and the docs' operations page (docs/operations.md) is checked against it by a
unit test.
"""

from __future__ import annotations

from forestream.errors import (
    AuthenticationFailed,
    DeliveryFailed,
    ForestreamError,
    NotAuthorized,
    ProducerFenced,
    TlsFailed,
    TopicUnavailable,
    UnreadableRecords,
    UserError,
)
from forestream.runtime import shutdown

OK = 0
BUG = 1
USER_ERROR = 2

_BY_CLASS: dict[type[BaseException], int] = {
    DeliveryFailed: BUG,
    AuthenticationFailed: 3,
    TlsFailed: 4,
    NotAuthorized: 5,
    TopicUnavailable: 6,
    UnreadableRecords: 7,
    ProducerFenced: 9,
    UserError: USER_ERROR,
}
"""Most specific first is not needed: :func:`exit_code_for` walks the error's own MRO."""

EXIT_CODES: dict[int, str] = {
    OK: "done, or stopped in order (SIGTERM/SIGINT)",
    BUG: "a bug (traceback), or records the producer could not deliver",
    USER_ERROR: "a user error: a flag, setting, file, broker or Schema Registry address that "
    "cannot work",
    3: "Kafka refused our credentials (SASL)",
    4: "TLS failed: untrusted or mismatched certificate, or not a TLS listener",
    5: "an ACL is missing on a topic, the consumer group or the cluster",
    6: "a topic does not exist and may not be created",
    7: "records in a codec or format this client cannot read",
    9: "exactly-once: another producer took this worker's or replay's "
    "transactional id (a replacement started, two live workers share one, or a replay was "
    "resumed twice)",
    shutdown.EXIT_CODE: f"the shutdown grace ({shutdown.GRACE_S:.0f} s after SIGTERM/SIGINT) ran "
    "out, or a second signal came: ended hard",
}
"""Documented on the docs' operations page ("Exit codes"); tests/unit/test_docs.py keeps the two
in step."""


def exit_code_for(error: BaseException | type[BaseException]) -> int:
    """The code a command ends with for this error (or error class); a bug is 1."""
    cls = error if isinstance(error, type) else type(error)
    for klass in cls.__mro__:
        if klass in _BY_CLASS:
            return _BY_CLASS[klass]
    return BUG


def exit_code_for_kind(kind: str) -> int:
    """The code for an error known only by its ``kind`` (what ``/healthz`` reports)."""
    pending: list[type[ForestreamError]] = [ForestreamError]
    while pending:
        cls = pending.pop()
        if cls.__dict__.get("kind") == kind:
            return exit_code_for(cls)
        pending.extend(cls.__subclasses__())
    return BUG
