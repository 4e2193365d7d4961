"""`forestream registry start|stop|status` as a user runs it: a real Apicurio Registry on the
loopback, its Confluent-compatible API answering, idempotent start, a stop that ends only it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

CLI = [sys.executable, "-m", "forestream"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=120, env=os.environ.copy()
    )


def test_start_status_stop(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "sr")
    assert run("registry", "status", "--data-dir", data_dir).returncode == 1
    started = run("registry", "start", "--data-dir", data_dir)
    try:
        assert started.returncode == 0, started.stderr
        url, export = started.stdout.splitlines()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/apis/ccompat/v7")
        assert export == f"export FORESTREAM_SCHEMA_REGISTRY_URL={url}"
        with urllib.request.urlopen(f"{url}/subjects", timeout=10) as resp:
            assert json.load(resp) == []
        again = run("registry", "start", "--data-dir", data_dir)
        assert again.returncode == 0 and again.stdout.splitlines()[0] == url  # the same one
        status = run("registry", "status", "--data-dir", data_dir)
        assert status.returncode == 0 and status.stdout.startswith(f"running {url} (pid ")
        assert (tmp_path / "sr" / "registry.log").stat().st_size > 0  # its log is kept
    finally:
        stopped = run("registry", "stop", "--data-dir", data_dir)
    assert stopped.returncode == 0 and stopped.stdout.strip() == f"stopped registry on {url}"
    assert run("registry", "status", "--data-dir", data_dir).stdout.strip() == "stopped"
