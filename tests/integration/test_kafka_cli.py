"""`forestream kafka start|stop|status` as a user runs it: one broker, idempotent, clean stop;
the readiness check (a metadata round trip) on the client ``FORESTREAM_KAFKA_CLIENT`` names,
with nothing of the client's own connection noise in the output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from forestream.local.kafka import port_is_free

CLI = [sys.executable, "-m", "forestream"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=180, env=env or os.environ.copy()
    )


def broker_pids(data_dir: Path) -> list[int]:
    """Our java processes started with this data dir's config (from /proc, no ps parsing)."""
    props = str((data_dir / "server.properties").resolve()).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"kafka.Kafka" in cmdline and props in cmdline:
                pids.append(int(entry.name))
    return pids


@pytest.mark.usefixtures("kafka_client")
def test_start_twice_status_stop(tmp_path: Path) -> None:
    data_dir = tmp_path / "kafka"
    first = run("kafka", "start", "--data-dir", str(data_dir))
    try:
        assert first.returncode == 0, first.stderr
        assert first.stderr == "", first.stderr
        (address,) = first.stdout.strip().splitlines()
        assert address.startswith("127.0.0.1:")
        port = int(address.rsplit(":", 1)[1])

        second = run("kafka", "start", "--data-dir", str(data_dir))
        assert second.returncode == 0, second.stderr
        assert second.stdout.strip().splitlines()[-1] == address
        assert len(broker_pids(data_dir)) == 1

        status = run("kafka", "status", "--data-dir", str(data_dir))
        assert status.returncode == 0
        assert "running" in status.stdout and address in status.stdout
    finally:
        stop = run("kafka", "stop", "--data-dir", str(data_dir))
    assert stop.returncode == 0, stop.stderr
    assert broker_pids(data_dir) == []
    assert port_is_free(port)
    after = run("kafka", "status", "--data-dir", str(data_dir))
    assert after.returncode == 1 and after.stdout.strip() == "stopped"


def test_missing_java_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path / "empty-bin")}
    result = run("kafka", "start", "--data-dir", str(tmp_path / "k"), env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: java not found") and "Java 17+" in lines[0]
    assert "Traceback" not in result.stderr
