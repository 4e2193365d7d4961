"""A real single-node Apache Kafka (KRaft) on 127.0.0.1, fetched from Maven Central.

Jars are fetched once by Maven into a per-user cache outside the repo; each data directory
holds one broker: its config, storage, log file and a state file with the pid and port.

``secure=True`` starts the same broker with no plaintext client port: SASL_SSL (PLAIN and
SCRAM) and mutual-TLS listeners, ACLs enforced, TLS material and passwords made per data dir.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

from pydantic import SecretStr

from forestream.edge.connection import KafkaConnection
from forestream.edge.interface import KafkaClient
from forestream.errors import UserError
from forestream.local.install import KAFKA_VERSION, ensure_jars, find_java
from forestream.local.tls import TlsFiles, ensure_tls
from forestream.runtime.settings import BROKER_STATE_FILE, read_broker_state

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0


APP_USER = "forestream"
OUTSIDER_USER = "outsider"
SUPER_USERS = ("broker", APP_USER, "admin")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
PRINCIPAL_RULES = "RULE:^CN=([^,]+).*$/$1/,DEFAULT"


@dataclass(frozen=True)
class BrokerInfo:
    pid: int
    port: int
    data_dir: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass(frozen=True)
class SecureBrokerInfo(BrokerInfo):
    """A secured broker: ``port``/``address`` is its SASL_SSL listener, ``mtls_port`` its SSL one.

    ``forestream`` is a super user (PLAIN and SCRAM, and the client certificate's CN);
    ``outsider`` authenticates but has no ACLs, so every topic is refused to it.
    """

    mtls_port: int

    @property
    def sasl_ssl_address(self) -> str:
        return self.address

    @property
    def mtls_address(self) -> str:
        return f"127.0.0.1:{self.mtls_port}"

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles(self.data_dir / "tls")

    @property
    def ca_file(self) -> Path:
        return self.tls.ca_file

    @property
    def client_cert_file(self) -> Path:
        return self.tls.client_cert_file

    @property
    def client_key_file(self) -> Path:
        return self.tls.client_key_file

    @property
    def untrusted_ca_file(self) -> Path:
        return self.tls.untrusted_ca_file

    @property
    def username(self) -> str:
        return APP_USER

    @property
    def password_file(self) -> Path:
        return _password_file(self.data_dir, APP_USER)

    @property
    def outsider_username(self) -> str:
        return OUTSIDER_USER

    @property
    def outsider_password_file(self) -> Path:
        return _password_file(self.data_dir, OUTSIDER_USER)

    def env(self) -> dict[str, str]:
        """What a forestream client sets to reach this broker over SASL_SSL + SCRAM-SHA-512."""
        return {
            "FORESTREAM_BOOTSTRAP_SERVERS": self.sasl_ssl_address,
            "FORESTREAM_SECURITY_PROTOCOL": "SASL_SSL",
            "FORESTREAM_SASL_MECHANISM": "SCRAM-SHA-512",
            "FORESTREAM_SASL_USERNAME": self.username,
            "FORESTREAM_SASL_PASSWORD_FILE": str(self.password_file),
            "FORESTREAM_SSL_CAFILE": str(self.ca_file),
        }

    def mtls_env(self) -> dict[str, str]:
        """What a forestream client sets to reach this broker with its client certificate."""
        return {
            "FORESTREAM_BOOTSTRAP_SERVERS": self.mtls_address,
            "FORESTREAM_SECURITY_PROTOCOL": "SSL",
            "FORESTREAM_SSL_CAFILE": str(self.ca_file),
            "FORESTREAM_SSL_CERTFILE": str(self.client_cert_file),
            "FORESTREAM_SSL_KEYFILE": str(self.client_key_file),
        }

    def export_lines(self) -> list[str]:
        """``env()`` as shell ``export`` lines (quoted; paths only, never a password)."""
        return [f"export {k}={shlex.quote(v)}" for k, v in self.env().items()]


def _password_file(data_dir: Path, user: str) -> Path:
    return data_dir / "secrets" / f"{user}.password"


def _ensure_password(data_dir: Path, user: str) -> str:
    """A random password per user and data dir, made once (0600) so restarts keep it."""
    path = _password_file(data_dir, user)
    try:
        password = path.read_text().strip()
        if password:
            return password
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    password = secrets.token_hex(24)  # hex: safe inside JAAS quotes and --add-scram brackets
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password)
    return password


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


def _plain_listeners(port: int, controller_port: int) -> list[str]:
    return [
        f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
    ]


def _secure_listeners(tls: TlsFiles, ports: dict[str, int], passwords: dict[str, str]) -> list[str]:
    """SASL_SSL for users, mutual TLS for certificate holders, the broker itself and KRaft.

    The controller listener also demands a client certificate: only the broker's own
    (CN=broker, a super user) may join the quorum or register.
    """
    sasl, mtls, ctl = ports["port"], ports["mtls_port"], ports["controller_port"]
    plain_users = " ".join(f'user_{name}="{pw}"' for name, pw in sorted(passwords.items()))
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    return [
        f"controller.quorum.voters=1@127.0.0.1:{ctl}",
        f"listeners=SASL_SSL://127.0.0.1:{sasl},SSL://127.0.0.1:{mtls},"
        f"CONTROLLER://127.0.0.1:{ctl}",
        f"advertised.listeners=SASL_SSL://127.0.0.1:{sasl},SSL://127.0.0.1:{mtls}",
        "listener.security.protocol.map=SASL_SSL:SASL_SSL,SSL:SSL,CONTROLLER:SSL",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=SSL",
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={tls.broker_keystore}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={tls.ca_file}",
        "ssl.endpoint.identification.algorithm=https",
        "listener.name.ssl.ssl.client.auth=required",
        "listener.name.controller.ssl.client.auth=required",
        f"ssl.principal.mapping.rules={PRINCIPAL_RULES}",
        f"listener.name.sasl_ssl.sasl.enabled.mechanisms={','.join(SASL_MECHANISMS)}",
        "listener.name.sasl_ssl.plain.sasl.jaas.config="
        f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain_users};",
        f"listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={scram}",
        f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        f"super.users={';'.join(f'User:{u}' for u in SUPER_USERS)}",
        "allow.everyone.if.no.acl.found=false",
    ]


def _write_configs(data_dir: Path, listeners: list[str]) -> Path:
    props = data_dir / "server.properties"
    text = "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            *listeners,
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
    # the secured config holds the PLAIN passwords: never readable by other users
    props.unlink(missing_ok=True)
    with os.fdopen(os.open(props, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(text)
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


def _broker_answers(conn: KafkaConnection, timeout_s: float) -> bool:
    """True once the broker answers a metadata request (not just accepts TCP)."""
    from forestream.edge.factory import topic_admin
    from forestream.errors import TransientKafkaError

    try:
        admin = topic_admin(conn, timeout_s=timeout_s)
    except (UserError, OSError):
        return False
    try:
        return admin.brokers() > 0
    except (UserError, TransientKafkaError, OSError):
        return False
    finally:
        admin.close()


def _probe_client() -> KafkaClient:
    """The client ``FORESTREAM_KAFKA_CLIENT`` names (the one the commands will use), so the
    readiness check proves that client gets in; kafka-python when unset or unknown."""
    wanted = os.environ.get("FORESTREAM_KAFKA_CLIENT", "").strip().lower()
    return "confluent" if wanted == "confluent" else "kafka-python"


def _readiness_connection(info: BrokerInfo) -> KafkaConnection:
    """Probe a secured broker as its app user over SCRAM: proves TLS, SCRAM and the ACL path."""
    if not isinstance(info, SecureBrokerInfo):
        return KafkaConnection(info.address, kafka_client=_probe_client())
    return KafkaConnection(
        info.address,
        kafka_client=_probe_client(),
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=info.username,
        sasl_password=SecretStr(info.password_file.read_text().strip()),
        ssl_cafile=info.ca_file,
    )


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
    return _info(int(state["pid"]), state, data_dir)


def _info(pid: int, ports: dict[str, Any], data_dir: Path) -> BrokerInfo:
    if ports.get("secure"):
        return SecureBrokerInfo(
            pid=pid, port=int(ports["port"]), data_dir=data_dir, mtls_port=int(ports["mtls_port"])
        )
    return BrokerInfo(pid=pid, port=int(ports["port"]), data_dir=data_dir)


MODE_FILE = "mode"


def _formatted_mode(data_dir: Path) -> str | None:
    """The mode storage was formatted in, None before (SCRAM users exist only if made then)."""
    if not (data_dir / "logs" / "meta.properties").exists():
        return None
    try:
        return (data_dir / MODE_FILE).read_text().strip() or "plain"
    except FileNotFoundError:  # formatted before the mode was recorded: always plain
        return "plain"


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@overload
def start(
    data_dir: Path,
    port: int | None = None,
    timeout_s: float = START_TIMEOUT_S,
    *,
    secure: Literal[True],
) -> SecureBrokerInfo: ...


@overload
def start(
    data_dir: Path,
    port: int | None = None,
    timeout_s: float = START_TIMEOUT_S,
    *,
    secure: bool = False,
) -> BrokerInfo: ...


def start(
    data_dir: Path,
    port: int | None = None,
    timeout_s: float = START_TIMEOUT_S,
    *,
    secure: bool = False,
) -> BrokerInfo:
    """Start the broker for ``data_dir`` unless it already runs; return once it answers.

    ``port`` is the client port: PLAINTEXT, or SASL_SSL when ``secure`` (then a SecureBrokerInfo
    is returned). A data dir stays in the mode it was first started in.
    """
    data_dir = data_dir.resolve()
    mode = "secured" if secure else "plain"
    running = status(data_dir)
    if running is not None:
        if isinstance(running, SecureBrokerInfo) != secure:
            raise UserError(
                f"a {'plain' if secure else 'secured'} broker already runs from {data_dir}; "
                f"stop it or use another --data-dir for a {mode} one"
            )
        if port is not None and port != running.port:
            raise UserError(
                f"a broker already runs from {data_dir} on port {running.port}; "
                f"stop it first to use port {port}"
            )
        return running
    formatted = _formatted_mode(data_dir)
    if formatted is not None and formatted != mode:
        raise UserError(
            f"{data_dir} holds a {formatted} broker's data; use another --data-dir for a {mode} one"
        )
    java = find_java()
    lib = ensure_jars()
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = _choose_ports(data_dir, port, secure)
    passwords: dict[str, str] = {}
    if secure:
        tls = ensure_tls(data_dir / "tls")
        passwords = {user: _ensure_password(data_dir, user) for user in (APP_USER, OUTSIDER_USER)}
        props = _write_configs(data_dir, _secure_listeners(tls, ports, passwords))
    else:
        props = _write_configs(data_dir, _plain_listeners(ports["port"], ports["controller_port"]))

    if formatted is None:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        scram = [
            arg
            for mechanism in SASL_MECHANISMS[1:]
            for user, password in passwords.items()
            for arg in ("--add-scram", f"{mechanism}=[name={user},password={password}]")
        ]
        fmt = subprocess.run(
            _java_cmd(java, lib, data_dir, "kafka.tools.StorageTool", "format",
                      # "=": a random id may start with "-", which the parser takes for a flag
                      f"--cluster-id={cluster_id}", "-c", str(props), *scram),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if fmt.returncode != 0:
            output = (fmt.stdout + fmt.stderr).strip()
            for password in passwords.values():
                output = output.replace(password, "***")
            raise UserError(f"formatting Kafka storage failed: {output}")
        (data_dir / MODE_FILE).write_text(mode)

    out = data_dir / "kafka.out"
    with out.open("ab") as sink:
        proc = subprocess.Popen(
            _java_cmd(java, lib, data_dir, "kafka.Kafka", str(props)),
            stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=data_dir,
        )  # fmt: skip
    info = _info(proc.pid, {**ports, "secure": secure}, data_dir)
    state: dict[str, Any] = {"pid": proc.pid, **ports}
    if secure:
        state["secure"] = True
    state |= {"version": KAFKA_VERSION, "started_at": time.time()}
    (data_dir / BROKER_STATE_FILE).write_text(json.dumps(state))
    probe = _readiness_connection(info)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            (data_dir / BROKER_STATE_FILE).unlink(missing_ok=True)
            raise UserError(
                f"Kafka exited with code {proc.returncode} during start; "
                f"see {data_dir / 'broker.log'}:\n{_tail(out)}"
            )
        if _broker_answers(probe, timeout_s=2.0):
            return info
        time.sleep(0.3)
    _terminate(proc.pid)
    (data_dir / BROKER_STATE_FILE).unlink(missing_ok=True)
    raise UserError(f"Kafka did not answer within {timeout_s:.0f}s; see {data_dir / 'broker.log'}")


def _choose_ports(data_dir: Path, port: int | None, secure: bool) -> dict[str, int]:
    """The client port asked for, else the ones this data dir used last time if still free."""
    remembered = _remembered_ports(data_dir)
    if port is None and "port" in remembered and port_is_free(remembered["port"]):
        port = remembered["port"]
    port = port or free_port()
    if not port_is_free(port):
        raise UserError(f"port {port} on 127.0.0.1 is in use; pick another with --port")
    chosen = {"port": port}
    for key in ("controller_port", "mtls_port") if secure else ("controller_port",):
        candidate = remembered.get(key, 0)
        while not candidate or candidate in chosen.values() or not port_is_free(candidate):
            candidate = free_port()
        chosen[key] = candidate
    return chosen


def _remembered_ports(data_dir: Path) -> dict[str, int]:
    try:
        state = json.loads((data_dir / BROKER_STATE_FILE).read_text())
        return {k: int(state[k]) for k in ("port", "controller_port", "mtls_port") if k in state}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


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
