"""A real local Schema Registry: Apicurio Registry on 127.0.0.1, fetched from Maven Central.

Apicurio Registry 3 serves the Confluent Schema Registry API at ``/apis/ccompat/v7``, so the
Confluent serializers and forestream's own decoder talk to it as to Confluent's registry. It is
one Quarkus jar plus its ``lib/`` (Java 17, no Docker), fetched once with Maven into the same
per-user cache as the broker's jars. Like the broker it keeps its data in its data directory
(an H2 database file under ``db/``), so schemas and their ids survive a stop and a start; each
data directory holds one registry: that database, its state file (pid, port) and its log.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forestream.errors import UserError
from forestream.local.install import DOCKER_HINT, cache_root, find_java
from forestream.local.kafka import _reap, _tail, _terminate, free_port, port_is_free

APICURIO_VERSION = "3.0.9"
ARTIFACT = f"io.apicurio:apicurio-registry-app:{APICURIO_VERSION}:tar.gz:all"
RUNNER_JAR = f"apicurio-registry-app-{APICURIO_VERSION}-runner.jar"
CCOMPAT_PATH = "/apis/ccompat/v7"
STATE_FILE = "registry.json"
LOG_FILE = "registry.log"
START_TIMEOUT_S = 60.0
DEFAULT_DIR = Path(".forestream/schema-registry")
_MARKER = "-Dforestream.schema-registry.dir="
"""On the java command line: lets ``stop`` tell our registry from a recycled pid."""


@dataclass(frozen=True)
class RegistryInfo:
    pid: int
    port: int
    data_dir: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """What ``FORESTREAM_SCHEMA_REGISTRY_URL`` and Confluent clients are given."""
        return self.base_url + CCOMPAT_PATH


def registry_dir() -> Path:
    """Where ``forestream registry`` keeps its state (``FORESTREAM_SCHEMA_REGISTRY_DIR``)."""
    return Path(os.environ.get("FORESTREAM_SCHEMA_REGISTRY_DIR", str(DEFAULT_DIR)))


def app_dir() -> Path:
    return cache_root() / f"apicurio-registry-{APICURIO_VERSION}"


def ensure_app() -> Path:
    """Fetch and unpack Apicurio Registry once; later calls find it in the cache.

    ``-Dtransitive=false``: the artifact's parent POM is not on Maven Central, and the tarball
    already holds every jar it needs.
    """
    home = app_dir()
    if (home / ".complete").exists():
        return home
    mvn = shutil.which("mvn")
    if mvn is None:
        raise UserError(
            "mvn not found on PATH: install Maven (e.g. `apt-get install maven`) to fetch "
            f"Apicurio Registry {APICURIO_VERSION} once, {DOCKER_HINT}"
        )
    home.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="apicurio-", dir=home.parent))
    try:
        tarball = staging / "app.tar.gz"
        cmd = [mvn, "-q", "-B", "dependency:get", "-Dtransitive=false",
               f"-Dartifact={ARTIFACT}", f"-Ddest={tarball}"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not tarball.exists():
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
            raise UserError(
                f"fetching Apicurio Registry {APICURIO_VERSION} from Maven Central failed "
                f"({'; '.join(tail)}); check network access to Maven Central, {DOCKER_HINT}"
            )
        unpacked = staging / "app"
        with tarfile.open(tarball) as tar:
            tar.extractall(unpacked, filter="data")
        if not (unpacked / RUNNER_JAR).exists():
            raise UserError(f"the Apicurio tarball holds no {RUNNER_JAR}; delete {home} and retry")
        (unpacked / ".complete").write_text(APICURIO_VERSION)
        if home.exists():
            shutil.rmtree(home)
        unpacked.rename(home)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return home


def _is_ours(pid: int, data_dir: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{_MARKER}{data_dir}".encode() in cmdline


def _state(data_dir: Path) -> dict[str, Any]:
    try:
        state = json.loads((data_dir / STATE_FILE).read_text())
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def status(data_dir: Path) -> RegistryInfo | None:
    data_dir = data_dir.resolve()
    state = _state(data_dir)
    try:
        pid, port = int(state["pid"]), int(state["port"])
    except (KeyError, TypeError, ValueError):
        return None
    if pid <= 0 or not _is_ours(pid, data_dir):
        return None
    return RegistryInfo(pid=pid, port=port, data_dir=data_dir)


def ready(base_url: str, timeout_s: float = 2.0) -> bool:
    """True once Quarkus says the registry is ready (storage up, API served)."""
    try:
        with urllib.request.urlopen(f"{base_url}/health/ready", timeout=timeout_s) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start(
    data_dir: Path, port: int | None = None, timeout_s: float = START_TIMEOUT_S
) -> RegistryInfo:
    """Start the registry for ``data_dir`` unless it already runs; return once it is ready."""
    data_dir = data_dir.resolve()
    running = status(data_dir)
    if running is not None:
        if port is not None and port != running.port:
            raise UserError(
                f"a registry already runs from {data_dir} on port {running.port}; "
                f"stop it first to use port {port}"
            )
        return running
    java = find_java()
    home = ensure_app()
    data_dir.mkdir(parents=True, exist_ok=True)
    remembered = _state(data_dir).get("port")
    if port is None and isinstance(remembered, int) and port_is_free(remembered):
        port = remembered
    port = port or free_port()
    if not port_is_free(port):
        raise UserError(f"port {port} on 127.0.0.1 is in use; pick another with --port")
    if ";" in str(data_dir):
        raise UserError(f"{data_dir}: a registry data directory cannot contain ';' (JDBC URL)")
    log_path = data_dir / LOG_FILE
    database = f"jdbc:h2:file:{data_dir / 'db' / 'registry'}"
    cmd = [
        java, "-Xms128m", "-Xmx512m", f"{_MARKER}{data_dir}",
        "-Dquarkus.http.host=127.0.0.1", f"-Dquarkus.http.port={port}",
        f"-Dapicurio.datasource.url={database}",
        "-jar", str(home / RUNNER_JAR),
    ]  # fmt: skip
    with log_path.open("ab") as sink:
        proc = subprocess.Popen(
            cmd, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=data_dir,
        )  # fmt: skip
    state = {"pid": proc.pid, "port": port, "version": APICURIO_VERSION, "started_at": time.time()}
    (data_dir / STATE_FILE).write_text(json.dumps(state))
    info = RegistryInfo(pid=proc.pid, port=port, data_dir=data_dir)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _forget_pid(data_dir)
            raise UserError(
                f"Apicurio Registry exited with code {proc.returncode} during start; "
                f"see {log_path}:\n{_tail(log_path)}"
            )
        if ready(info.base_url):
            return info
        time.sleep(0.25)
    _terminate(proc.pid)
    _forget_pid(data_dir)
    raise UserError(f"Apicurio Registry was not ready within {timeout_s:.0f}s; see {log_path}")


def _forget_pid(data_dir: Path) -> None:
    """Keep the port for the next start, drop the pid."""
    state = _state(data_dir)
    if state:
        state["pid"] = -1
        (data_dir / STATE_FILE).write_text(json.dumps(state))


def stop(data_dir: Path) -> RegistryInfo | None:
    """Stop the registry started from ``data_dir`` (and nothing else); its schemas stay."""
    data_dir = data_dir.resolve()
    info = status(data_dir)
    if info is None:
        return None
    _terminate(info.pid)
    _reap(info.pid)
    _forget_pid(data_dir)
    return info
