"""User mistakes on the command line: one clear message and exit 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _forestream(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forestream", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "args",
    [
        ["produce", "--bogus"],
        ["worker", "--max-batch", "many"],
        ["no-such-command"],
        ["kafka", "start", "--port", "x"],
    ],
)
def test_usage_errors_exit_2_without_traceback(args: list[str]) -> None:
    done = _forestream(*args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip(), "the user must be told what was wrong"


def test_help_lists_every_command() -> None:
    done = _forestream("--help")
    assert done.returncode == 0, done.stderr
    for command in ("kafka", "train", "models", "worker", "produce", "replay", "demo"):
        assert command in done.stdout


def test_one_transactional_id_for_several_processes_is_refused_before_connecting() -> None:
    done = _forestream(
        "worker", "--processes", "2", "--guarantee", "exactly-once",
        "--transactional-id", "billing", "--bootstrap-servers", "127.0.0.1:1",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "--transactional-id names one producer" in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["worker", "--input-format", "avro"], "needs FORESTREAM_SCHEMA_REGISTRY_URL"),
        (
            ["worker", "--input-format", "avro", "--schema-registry-url", "registry:8081"],
            "is not an http(s):// URL",
        ),
        (
            [
                "worker",
                "--input-format",
                "avro",
                "--schema-registry-url",
                "http://127.0.0.1:1",
                "--schema-registry-wait-s",
                "900",
            ],
            "schema_registry_wait_s",
        ),
        (
            [
                "replay",
                "--input-format",
                "protobuf",
                "--schema-registry-url",
                "ftp://x",
                "--output-topic",
                "t.out",
                "--checkpoint",
                "/nonexistent/x.json",
            ],
            "is not an http(s):// URL",
        ),
        (
            [
                "models",
                "register-schema",
                "v1",
                "--contract-format",
                "xml",
                "--schema-registry-url",
                "http://127.0.0.1:1",
            ],
            "contract_format",
        ),
    ],
)
def test_schema_registry_flags_are_checked_before_anything_runs(
    args: list[str], message: str
) -> None:
    """The registry's flags reach the settings they are twins of, checked as the env is."""
    done = _forestream(*args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert message in done.stderr, done.stderr
