"""A real single-node Apache Kafka (KRaft) on 127.0.0.1, fetched from Maven Central.

Jars are fetched once by Maven into a per-user cache outside the repo; each data directory
holds one broker: its config, storage, log file and a state file with the pid and port.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from contracts.errors import UserError
from contracts.settings import BROKER_STATE_FILE, read_broker_state

KAFKA_VERSION = "4.1.1"
MIN_JAVA = 17
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
DOCKER_HINT = "or run everything in containers with `docker compose up`"


@dataclass(frozen=True)
class BrokerInfo:
    pid: int
    port: int
    data_dir: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def cache_dir() -> Path:
    base = os.environ.get("FORESTREAM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "forestream"
    )
    return Path(base) / f"kafka-{KAFKA_VERSION}"


def _java_major(java: str) -> int:
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        return 0
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise UserError(
            f"java not found on PATH: install Java {MIN_JAVA}+ "
            f"(e.g. `apt-get install openjdk-17-jre-headless`), {DOCKER_HINT}"
        )
    major = _java_major(java)
    if major < MIN_JAVA:
        raise UserError(
            f"{java} is Java {major or '?'}; Kafka {KAFKA_VERSION} needs Java {MIN_JAVA}+"
        )
    return java


def ensure_jars() -> Path:
    """Fetch the broker's jars with Maven once; later calls find them in the cache."""
    lib = cache_dir() / "lib"
    if (lib / ".complete").exists():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise UserError(
            "mvn not found on PATH: install Maven (e.g. `apt-get install maven`) to fetch the "
            f"Kafka {KAFKA_VERSION} jars once, {DOCKER_HINT}"
        )
    lib.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="lib-", dir=lib.parent))
    pom = resources.files("forestream").joinpath("kafka/pom.xml")
    with resources.as_file(pom) as pom_path:
        cmd = [
            mvn, "-q", "-B", "-f", str(pom_path), "dependency:copy-dependencies",
            "-DincludeScope=runtime", f"-DoutputDirectory={staging}",
            f"-Dkafka.version={KAFKA_VERSION}",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise UserError(
            f"fetching Kafka {KAFKA_VERSION} from Maven Central failed ({'; '.join(tail)}); "
            f"check network access to Maven Central, {DOCKER_HINT}"
        )
    (staging / ".complete").write_text(KAFKA_VERSION)
    if lib.exists():
        shutil.rmtree(lib)
    staging.rename(lib)
    return lib


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _write_configs(data_dir: Path, port: int, controller_port: int) -> Path:
    props = data_dir / "server.properties"
    props.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={data_dir / 'logs'}",
                "num.partitions=1",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=10",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=true",
                "log.cleaner.backoff.ms=1000",
                "",
            ]
        )
    )
    (data_dir / "log4j2.properties").write_text(
        "\n".join(
            [
                "status = error",
                "appender.file.type = File",
                "appender.file.name = FILE",
                f"appender.file.fileName = {data_dir / 'broker.log'}",
                "appender.file.layout.type = PatternLayout",
                "appender.file.layout.pattern = [%d] %p %m (%c)%n",
                "rootLogger.level = INFO",
                "rootLogger.appenderRef.file.ref = FILE",
                "logger.kafka.name = kafka",
                "logger.kafka.level = WARN",
                "logger.org.name = org.apache.kafka",
                "logger.org.level = WARN",
                "",
            ]
        )
    )
    return props


def _java_cmd(java: str, lib: Path, data_dir: Path, *args: str) -> list[str]:
    return [
        java, "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={data_dir / 'log4j2.properties'}",
        "-cp", f"{lib}/*", *args,
    ]  # fmt: skip


def _broker_answers(address: str, timeout_s: float) -> bool:
    """True once the broker answers a metadata request (not just accepts TCP)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=address,
            request_timeout_ms=int(timeout_s * 1000),
            bootstrap_timeout_ms=int(timeout_s * 1000),
        )
    except (KafkaError, OSError):
        return False
    try:
        return bool(admin.describe_cluster().get("brokers"))
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


def _is_our_broker(pid: int, data_dir: Path) -> bool:
    """Guards ``stop`` against a recycled pid: the process must be our java with our config."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    props = str((data_dir / "server.properties").resolve()).encode()
    return b"kafka.Kafka" in cmdline and props in cmdline


def status(data_dir: Path) -> BrokerInfo | None:
    state = read_broker_state(data_dir)
    if state is None or not _is_our_broker(int(state["pid"]), data_dir.resolve()):
        return None
    return BrokerInfo(pid=int(state["pid"]), port=int(state["port"]), data_dir=data_dir)


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start(
    data_dir: Path, port: int | None = None, timeout_s: float = START_TIMEOUT_S
) -> BrokerInfo:
    """Start the broker for ``data_dir`` unless it already runs; return once it answers."""
    data_dir = data_dir.resolve()
    running = status(data_dir)
    if running is not None:
        if port is not None and port != running.port:
            raise UserError(
                f"a broker already runs from {data_dir} on port {running.port}; "
                f"stop it first to use port {port}"
            )
        return running
    java = find_java()
    lib = ensure_jars()
    data_dir.mkdir(parents=True, exist_ok=True)
    remembered = _remembered_ports(data_dir)
    if port is None and remembered and port_is_free(remembered[0]):
        port = remembered[0]
    port = port or free_port()
    if not port_is_free(port):
        raise UserError(f"port {port} on 127.0.0.1 is in use; pick another with --port")
    controller_port = remembered[1] if remembered and port_is_free(remembered[1]) else free_port()
    while controller_port == port:
        controller_port = free_port()
    props = _write_configs(data_dir, port, controller_port)

    logs = data_dir / "logs"
    if not (logs / "meta.properties").exists():
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        fmt = subprocess.run(
            _java_cmd(java, lib, data_dir, "kafka.tools.StorageTool", "format",
                      "-t", cluster_id, "-c", str(props)),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if fmt.returncode != 0:
            raise UserError(f"formatting Kafka storage failed: {(fmt.stdout + fmt.stderr).strip()}")

    out = data_dir / "kafka.out"
    with out.open("ab") as sink:
        proc = subprocess.Popen(
            _java_cmd(java, lib, data_dir, "kafka.Kafka", str(props)),
            stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=data_dir,
        )  # fmt: skip
    info = BrokerInfo(pid=proc.pid, port=port, data_dir=data_dir)
    (data_dir / BROKER_STATE_FILE).write_text(
        json.dumps({"pid": proc.pid, "port": port, "controller_port": controller_port,
                    "version": KAFKA_VERSION, "started_at": time.time()})
    )  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            (data_dir / BROKER_STATE_FILE).unlink(missing_ok=True)
            raise UserError(
                f"Kafka exited with code {proc.returncode} during start; "
                f"see {data_dir / 'broker.log'}:\n{_tail(out)}"
            )
        if _broker_answers(info.address, timeout_s=2.0):
            return info
        time.sleep(0.3)
    _terminate(proc.pid)
    (data_dir / BROKER_STATE_FILE).unlink(missing_ok=True)
    raise UserError(f"Kafka did not answer within {timeout_s:.0f}s; see {data_dir / 'broker.log'}")


def _remembered_ports(data_dir: Path) -> tuple[int, int] | None:
    try:
        state = json.loads((data_dir / BROKER_STATE_FILE).read_text())
        return int(state["port"]), int(state["controller_port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _terminate(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        _reap(pid)
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    _reap(pid)


def _reap(pid: int) -> None:
    """Collect our own child (when the broker was started in this process) so it disappears."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop(data_dir: Path) -> BrokerInfo | None:
    """Stop the broker started from ``data_dir``; the state file keeps the port for next start."""
    data_dir = data_dir.resolve()
    info = status(data_dir)
    if info is None:
        return None
    _terminate(info.pid)
    state_file = data_dir / BROKER_STATE_FILE
    try:
        state = json.loads(state_file.read_text())
        state["pid"] = -1
        state_file.write_text(json.dumps(state))
    except (OSError, ValueError):
        pass
    return info
