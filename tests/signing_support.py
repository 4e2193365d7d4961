"""The test session's Ed25519 key pair: every helper that saves a model signs with it.

Made once per session (``tests/conftest.py`` calls :func:`install_session_keys`) and exported
as ``FORESTREAM_SIGNING_KEY_FILE`` / ``FORESTREAM_VERIFY_KEY_FILE``, so the trainer, workers,
replay and registry commands started by tests sign and verify as a deployment would.
"""

from __future__ import annotations

import os
import tempfile
from functools import cache
from pathlib import Path

from forestream.registry.signing import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    Signer,
    Trust,
    create_key_pair,
    load_verify_key,
)

SIGNING_ENV = "FORESTREAM_SIGNING_KEY_FILE"
VERIFY_ENV = "FORESTREAM_VERIFY_KEY_FILE"
SESSION_KEY_ENV = frozenset({SIGNING_ENV, VERIFY_ENV})
"""What a test that hands a command a clean FORESTREAM_* environment still passes on: the
session's keys, as a deployment gives every command its own."""


@cache
def session_keys_dir() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="forestream-test-keys-"))
    create_key_pair(directory)
    return directory


def install_session_keys() -> None:
    """Export the session pair for this process and every command it starts."""
    directory = session_keys_dir()
    os.environ[SIGNING_ENV] = str(directory / PRIVATE_KEY_FILE)
    os.environ[VERIFY_ENV] = str(directory / PUBLIC_KEY_FILE)


def session_signer() -> Signer:
    return Signer.from_file(session_keys_dir() / PRIVATE_KEY_FILE)


def session_trust(**overrides: bool) -> Trust:
    return Trust(verify_key=load_verify_key(session_keys_dir() / PUBLIC_KEY_FILE), **overrides)


def other_key_pair(directory: Path) -> tuple[Path, Path]:
    """A second pair: versions it signs must be refused by the session's verify key."""
    return create_key_pair(directory)
