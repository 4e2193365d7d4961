"""The secured local broker is real: SASL_SSL (PLAIN, SCRAM) and mutual TLS carry records, an
outside client (kcat) gets in, and certificates, passwords and ACLs keep strangers out.

Clients are built here by hand from the broker's files, so these tests check the broker, not
forestream's own client factories.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAuthorizationFailedError

from forestream.local.kafka import SecureBrokerInfo

KCAT = shutil.which("kcat") or shutil.which("kafkacat")
CLI = [sys.executable, "-m", "forestream"]
SASL_MECHANISMS = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


def sasl_client(
    info: SecureBrokerInfo, mechanism: str, user: str | None = None, password: str | None = None
) -> dict[str, Any]:
    """kafka-python settings for the SASL_SSL listener (the app user unless told otherwise)."""
    return {
        "bootstrap_servers": info.sasl_ssl_address,
        "security_protocol": "SASL_SSL",
        "ssl_cafile": str(info.ca_file),
        "sasl_mechanism": mechanism,
        "sasl_plain_username": user or info.username,
        "sasl_plain_password": password or info.password_file.read_text().strip(),
        "request_timeout_ms": 10_000,
        "bootstrap_timeout_ms": 10_000,
    }


def mtls_client(info: SecureBrokerInfo) -> dict[str, Any]:
    return {
        "bootstrap_servers": info.mtls_address,
        "security_protocol": "SSL",
        "ssl_cafile": str(info.ca_file),
        "ssl_certfile": str(info.client_cert_file),
        "ssl_keyfile": str(info.client_key_file),
        "request_timeout_ms": 10_000,
        "bootstrap_timeout_ms": 10_000,
    }


def client_from_env(env: dict[str, str]) -> dict[str, Any]:
    """What a FORESTREAM_* environment means in kafka-python terms."""
    config: dict[str, Any] = {
        "bootstrap_servers": env["FORESTREAM_BOOTSTRAP_SERVERS"],
        "security_protocol": env["FORESTREAM_SECURITY_PROTOCOL"],
        "ssl_cafile": env["FORESTREAM_SSL_CAFILE"],
        "request_timeout_ms": 10_000,
        "bootstrap_timeout_ms": 10_000,
    }
    if "FORESTREAM_SASL_MECHANISM" in env:
        config |= {
            "sasl_mechanism": env["FORESTREAM_SASL_MECHANISM"],
            "sasl_plain_username": env["FORESTREAM_SASL_USERNAME"],
            "sasl_plain_password": Path(env["FORESTREAM_SASL_PASSWORD_FILE"]).read_text().strip(),
        }
    if "FORESTREAM_SSL_CERTFILE" in env:
        config |= {
            "ssl_certfile": env["FORESTREAM_SSL_CERTFILE"],
            "ssl_keyfile": env["FORESTREAM_SSL_KEYFILE"],
        }
    return config


def create_topic(client: dict[str, Any], topic: str, partitions: int = 1) -> None:
    admin = KafkaAdminClient(**client)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()


def produce(client: dict[str, Any], topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(**client, acks="all", max_block_ms=10_000)
    try:
        for i, value in enumerate(values):
            producer.send(topic, key=f"k{i}".encode(), value=value).get(timeout=20)
    finally:
        producer.close(timeout=10)


def consume(
    client: dict[str, Any], topic: str, expected: int, timeout_s: float = 30.0
) -> list[bytes]:
    """All partitions from the beginning, no group; fails loudly at the deadline."""
    consumer = KafkaConsumer(**client, enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout_s
        partitions = consumer.partitions_for_topic(topic)
        while not partitions:
            assert time.monotonic() < deadline, f"topic {topic!r} did not appear"
            time.sleep(0.1)
            partitions = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        values: list[bytes] = []
        while len(values) < expected:
            assert time.monotonic() < deadline, f"read {len(values)}/{expected} from {topic!r}"
            for batch in consumer.poll(timeout_ms=200).values():
                values.extend(r.value for r in batch)
        return values
    finally:
        consumer.close()


def test_tls_material_and_secrets_are_private(secure_kafka: SecureBrokerInfo) -> None:
    info = secure_kafka
    for secret in (
        info.client_key_file,
        info.tls.broker_keystore,
        info.password_file,
        info.outsider_password_file,
        info.data_dir / "server.properties",  # holds the PLAIN users' passwords
    ):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret

    ca = x509.load_pem_x509_certificate(info.ca_file.read_bytes())
    broker = x509.load_pem_x509_certificate(info.tls.broker_cert_file.read_bytes())
    client = x509.load_pem_x509_certificate(info.client_cert_file.read_bytes())
    untrusted = x509.load_pem_x509_certificate(info.untrusted_ca_file.read_bytes())
    broker.verify_directly_issued_by(ca)
    client.verify_directly_issued_by(ca)
    with pytest.raises(ValueError):
        client.verify_directly_issued_by(untrusted)
    assert broker.subject.rfc4514_string() == "CN=broker"
    assert client.subject.rfc4514_string() == "CN=forestream"
    san = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]

    assert b"PRIVATE KEY" in info.tls.broker_keystore.read_bytes()
    assert b"ENCRYPTED" not in info.tls.broker_keystore.read_bytes()
    password = info.password_file.read_text().strip()
    assert len(password) >= 32 and password != info.outsider_password_file.read_text().strip()
    assert password not in (info.data_dir / "broker.json").read_text()
    props = (info.data_dir / "server.properties").read_text()
    assert "PLAINTEXT" not in props


def test_env_describes_working_clients(secure_kafka: SecureBrokerInfo) -> None:
    """Both FORESTREAM_* environments reach the broker as given, nothing else needed."""
    env = secure_kafka.env()
    assert env["FORESTREAM_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["FORESTREAM_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert secure_kafka.mtls_env()["FORESTREAM_SECURITY_PROTOCOL"] == "SSL"
    for environment in (env, secure_kafka.mtls_env()):
        admin = KafkaAdminClient(**client_from_env(environment))
        try:
            assert admin.describe_cluster()["brokers"]
        finally:
            admin.close()


@pytest.mark.parametrize("mechanism", SASL_MECHANISMS)
def test_sasl_ssl_round_trip(
    secure_kafka: SecureBrokerInfo, topic_name: Callable[[str], str], mechanism: str
) -> None:
    client = sasl_client(secure_kafka, mechanism)
    topic = topic_name("sasl")
    create_topic(client, topic, partitions=2)
    values = [f"{mechanism}-{i}".encode() for i in range(20)]
    produce(client, topic, values)
    assert sorted(consume(client, topic, expected=20)) == sorted(values)


def test_mutual_tls_round_trip(
    secure_kafka: SecureBrokerInfo, topic_name: Callable[[str], str]
) -> None:
    """CN=forestream maps to User:forestream (a super user): without the rule this is refused."""
    client = mtls_client(secure_kafka)
    topic = topic_name("mtls")
    create_topic(client, topic)
    values = [f"mtls-{i}".encode() for i in range(10)]
    produce(client, topic, values)
    assert sorted(consume(client, topic, expected=10)) == sorted(values)


def test_kcat_produces_over_sasl_ssl_plain(
    secure_kafka: SecureBrokerInfo, topic_name: Callable[[str], str], tmp_path: Path
) -> None:
    """An independent client (librdkafka) gets in with PLAIN; kcat 1.7/librdkafka 2.0 fails SCRAM
    against Kafka 4.x, so SCRAM is covered by kafka-python above."""
    assert KCAT, "kcat is not installed: `make setup` installs it (Debian package kcat)"
    topic = topic_name("kcat")
    client = sasl_client(secure_kafka, "SCRAM-SHA-512")
    create_topic(client, topic)
    config = tmp_path / "kcat.conf"  # the password stays out of the command line
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(
            "security.protocol=SASL_SSL\n"
            "sasl.mechanisms=PLAIN\n"
            f"sasl.username={secure_kafka.username}\n"
            f"sasl.password={secure_kafka.password_file.read_text().strip()}\n"
            f"ssl.ca.location={secure_kafka.ca_file}\n"
        )
    lines = "".join(f"k{i}:kcat-{i}\n" for i in range(5))
    subprocess.run(
        [KCAT, "-F", str(config), "-b", secure_kafka.sasl_ssl_address, "-P", "-t", topic,
         "-K", ":", "-m", "20"],
        input=lines, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    got = consume(client, topic, expected=5)
    assert sorted(got) == sorted(f"kcat-{i}".encode() for i in range(5))


def test_outsider_authenticates_but_is_refused_on_topics(
    secure_kafka: SecureBrokerInfo, topic_name: Callable[[str], str]
) -> None:
    topic = topic_name("acl")
    create_topic(sasl_client(secure_kafka, "SCRAM-SHA-512"), topic)
    outsider_pw = secure_kafka.outsider_password_file.read_text().strip()
    outsider = sasl_client(
        secure_kafka, "SCRAM-SHA-512", user=secure_kafka.outsider_username, password=outsider_pw
    )

    consumer = KafkaConsumer(**outsider)  # bootstrapping proves the login itself works
    try:
        assert topic not in consumer.topics()  # no DESCRIBE ACL: the topic is invisible
    finally:
        consumer.close()

    producer = KafkaProducer(**outsider, max_block_ms=10_000)
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            producer.send(topic, value=b"not allowed").get(timeout=20)
    finally:
        producer.close(timeout=5)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
@pytest.mark.edge  # fatal classification on both clients
def test_wrong_password_is_refused(
    secure_kafka: SecureBrokerInfo, mechanism: str, kafka_client: str
) -> None:
    """kafka-python reports a refused login only as "unable to bootstrap" (or a logged
    SaslAuthenticationFailedError, depending on timing), librdkafka to its error callback
    while it retries; our check names it either way, on both clients."""
    from pydantic import SecretStr

    from forestream.edge.connection import KafkaConnection
    from forestream.edge.factory import require_reachable
    from forestream.errors import AuthenticationFailed

    wrong = KafkaConnection(
        secure_kafka.sasl_ssl_address,
        kafka_client=kafka_client,  # type: ignore[arg-type]
        security_protocol="SASL_SSL",
        sasl_mechanism=mechanism,  # type: ignore[arg-type]
        sasl_username=secure_kafka.username,
        sasl_password=SecretStr("not-the-password"),
        ssl_cafile=secure_kafka.ca_file,
    )
    started = time.monotonic()
    with pytest.raises(AuthenticationFailed, match=f"as 'forestream' with {mechanism}"):
        require_reachable(wrong)
    assert time.monotonic() - started < 10


def _tls_handshake(address: str, context: ssl.SSLContext, read_s: float = 5.0) -> None:
    """Connect, handshake and read once: a TLS 1.3 server refuses a client cert after the
    handshake, so the client only learns of it on its first read."""
    host, port = address.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.settimeout(read_s)
        with contextlib.suppress(TimeoutError):  # nothing to read: the server kept us
            tls.recv(1)


def test_certificate_from_another_ca_is_not_trusted(secure_kafka: SecureBrokerInfo) -> None:
    context = ssl.create_default_context(cafile=str(secure_kafka.untrusted_ca_file))
    for address in (secure_kafka.sasl_ssl_address, secure_kafka.mtls_address):
        with pytest.raises(ssl.SSLCertVerificationError):
            _tls_handshake(address, context)
    # the right CA and 127.0.0.1 as host name verify fine on the SASL_SSL listener
    trusted = ssl.create_default_context(cafile=str(secure_kafka.ca_file))
    _tls_handshake(secure_kafka.sasl_ssl_address, trusted, read_s=1.0)


def test_mtls_listener_requires_a_client_certificate(secure_kafka: SecureBrokerInfo) -> None:
    context = ssl.create_default_context(cafile=str(secure_kafka.ca_file))
    with pytest.raises(ssl.SSLError, match=r"(?i)certificate"):
        _tls_handshake(secure_kafka.mtls_address, context)
    context.load_cert_chain(secure_kafka.client_cert_file, secure_kafka.client_key_file)
    _tls_handshake(secure_kafka.mtls_address, context, read_s=1.0)


def test_cli_secure_start_prints_exports_without_password(tmp_path: Path) -> None:
    data_dir = tmp_path / "kafka-secure"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, "kafka", *args, "--data-dir", str(data_dir)],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip

    start = run("start", "--secure")
    try:
        assert start.returncode == 0, start.stderr
        address, *exports = start.stdout.strip().splitlines()
        assert address.startswith("127.0.0.1:")
        env = {}
        for line in exports:
            assert line.startswith("export FORESTREAM_"), line
            key, value = line.removeprefix("export ").split("=", 1)
            env[key] = shlex.split(value)[0]
        assert env["FORESTREAM_BOOTSTRAP_SERVERS"] == address
        assert env["FORESTREAM_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env["FORESTREAM_SASL_MECHANISM"] == "SCRAM-SHA-512"
        assert env["FORESTREAM_SASL_USERNAME"] == "forestream"
        assert Path(env["FORESTREAM_SSL_CAFILE"]).is_file()
        password_file = Path(env["FORESTREAM_SASL_PASSWORD_FILE"])
        for secret in (password_file, data_dir / "secrets" / "outsider.password"):
            password = secret.read_text().strip()
            assert password and password not in start.stdout + start.stderr

        admin = KafkaAdminClient(**client_from_env(env))  # the exports are enough to connect
        try:
            assert admin.describe_cluster()["brokers"]
        finally:
            admin.close()

        status = run("status")
        assert status.returncode == 0, status.stderr
        assert f"running {address} SASL_SSL" in status.stdout
        assert json.loads((data_dir / "broker.json").read_text())["secure"] is True

        plain = run("start")  # a secured data dir never silently turns plain
        assert plain.returncode == 2 and "secured broker" in plain.stderr
    finally:
        stop = run("stop")
    assert stop.returncode == 0, stop.stderr
    assert stop.stdout.strip() == f"stopped broker on {address}"
    after = run("status")
    assert after.returncode == 1 and after.stdout.strip() == "stopped"
