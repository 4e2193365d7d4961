"""Connection settings: one coherent, secret-safe description of how every client reaches Kafka."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from kafka import errors as kafka_errors

from forestream.edge.connection import SECURITY_ENV, KafkaConnection
from forestream.edge.factory import TopicSpec, topic_request
from forestream.edge.kafka_python import classify_client_error
from forestream.errors import (
    AuthenticationFailed,
    NotAuthorized,
    TlsFailed,
    UnreadableRecords,
    UserError,
)
from forestream.exit_codes import exit_code_for
from forestream.runtime.settings import CommonSettings, load_settings
from tests.conftest import ROOT

SECRET = "hunter2-very-secret"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SECURITY_ENV:
        monkeypatch.delenv(name, raising=False)


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> CommonSettings:
    for name, value in env.items():
        monkeypatch.setenv(f"FORESTREAM_{name.upper()}", value)
    return load_settings(CommonSettings, bootstrap_servers="broker:9093")


def test_defaults_are_the_local_plaintext_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = _settings(monkeypatch).kafka()
    assert conn.security_protocol == "PLAINTEXT"
    config = conn.kafka_python_config()
    assert config == {"bootstrap_servers": "broker:9093", "security_protocol": "PLAINTEXT"}


def test_sasl_ssl_scram_reaches_the_client_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    secret = tmp_path / "password"
    secret.write_text(SECRET + "\n")  # as `kubectl create secret --from-file` may leave it
    conn = _settings(
        monkeypatch,
        security_protocol="sasl_ssl",
        sasl_mechanism="scram-sha-512",
        sasl_username="svc",
        sasl_password_file=str(secret),
        ssl_cafile=str(ca),
    ).kafka()
    config = conn.kafka_python_config()
    assert config["security_protocol"] == "SASL_SSL"
    assert config["sasl_mechanism"] == "SCRAM-SHA-512"
    assert config["sasl_plain_username"] == "svc"
    assert config["sasl_plain_password"] == SECRET
    assert config["ssl_cafile"] == str(ca)
    assert config["ssl_check_hostname"] is True


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"security_protocol": "SASL_SSL"}, "FORESTREAM_SASL_MECHANISM is required"),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"},
            "FORESTREAM_SASL_USERNAME is required",
        ),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u"},
            "FORESTREAM_SASL_PASSWORD or FORESTREAM_SASL_PASSWORD_FILE is required",
        ),
        ({"sasl_username": "u"}, "FORESTREAM_SASL_USERNAME is set but"),
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "GSSAPI"}, "sasl_mechanism"),
        ({"security_protocol": "TLS"}, "security_protocol"),
        ({"compression": "brotli"}, "compression"),
        ({"replication_factor": "0"}, "replication_factor"),
    ],
)
def test_half_a_configuration_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], complaint: str
) -> None:
    with pytest.raises(UserError, match=complaint):
        _settings(monkeypatch, **env)


def test_tls_files_are_checked_and_belong_to_a_tls_protocol(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cert = tmp_path / "client.pem"
    cert.write_text("x")
    with pytest.raises(UserError, match="FORESTREAM_SSL_CERTFILE is set but"):
        _settings(monkeypatch, ssl_certfile=str(cert), ssl_keyfile=str(cert))
    monkeypatch.delenv("FORESTREAM_SSL_KEYFILE")
    with pytest.raises(UserError, match="needs both FORESTREAM_SSL_CERTFILE and"):
        _settings(monkeypatch, security_protocol="SSL", ssl_certfile=str(cert))
    monkeypatch.delenv("FORESTREAM_SSL_CERTFILE")
    with pytest.raises(UserError, match="is not a readable file"):
        _settings(monkeypatch, security_protocol="SSL", ssl_cafile=str(tmp_path / "absent.pem"))


def test_password_and_password_file_together_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "password"
    secret.write_text(SECRET)
    with pytest.raises(UserError, match="not both") as caught:
        _settings(
            monkeypatch,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="PLAIN",
            sasl_username="u",
            sasl_password=SECRET,
            sasl_password_file=str(secret),
        )
    assert SECRET not in str(caught.value)


def test_secrets_never_show_in_repr_or_descriptions(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(
        monkeypatch,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="svc",
        sasl_password=SECRET,
    )
    conn = settings.kafka()
    for text in (repr(settings), str(settings), repr(conn), conn.describe()):
        assert SECRET not in text
    assert "svc" in conn.describe()


def test_help_does_not_show_a_password_from_the_environment() -> None:
    env = {"FORESTREAM_SASL_PASSWORD": SECRET, "PATH": "/usr/bin:/bin"}
    for command in (["worker", "--help"], ["produce", "--help"], ["topics", "create", "--help"]):
        done = subprocess.run(
            [sys.executable, "-m", "forestream.cli", *command],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert SECRET not in done.stdout + done.stderr


def test_replication_factor_is_the_brokers_default_unless_set() -> None:
    spec = TopicSpec("t", 3, {"cleanup.policy": "compact"})
    default = topic_request(spec, KafkaConnection("b:9092"))
    assert default.replication_factor == -1  # "the broker's default.replication.factor"
    assert default.configs == {"cleanup.policy": "compact"}
    durable = topic_request(
        spec, KafkaConnection("b:9092", replication_factor=3, min_insync_replicas=2)
    )
    assert durable.replication_factor == 3
    assert durable.configs == {"cleanup.policy": "compact", "min.insync.replicas": "2"}


def test_output_compression_defaults_to_lz4_and_none_means_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _settings(monkeypatch).kafka().compression == "lz4"
    assert _settings(monkeypatch, compression="NONE").kafka().compression == "none"


@pytest.mark.parametrize(
    ("error", "fatal"),
    [
        (kafka_errors.SaslAuthenticationFailedError("bad password"), AuthenticationFailed),
        (kafka_errors.TopicAuthorizationFailedError(), NotAuthorized),
        (kafka_errors.GroupAuthorizationFailedError(), NotAuthorized),
        (kafka_errors.ClusterAuthorizationFailedError(), NotAuthorized),
        (kafka_errors.UnsupportedCodecError("snappy"), UnreadableRecords),
        (
            kafka_errors.KafkaConnectionError("Handshake failed: [SSL: CERTIFICATE_VERIFY_FAILED]"),
            TlsFailed,
        ),
        (kafka_errors.KafkaConnectionError("Connection refused"), None),
        (kafka_errors.NodeNotReadyError(), None),
        (kafka_errors.KafkaTimeoutError(), None),
        (kafka_errors.NotLeaderForPartitionError(), None),
        (kafka_errors.RequestTimedOutError(), None),
        (kafka_errors.UnknownTopicOrPartitionError(), None),
    ],
)
def test_client_errors_are_fatal_or_retried(
    error: Exception, fatal: type[Exception] | None
) -> None:
    conn = KafkaConnection(
        "b:9092", security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="svc"
    )
    got = classify_client_error(error, conn, topic="in", group="g")
    if fatal is None:
        assert got is None
    else:
        assert isinstance(got, fatal)
        assert "b:9092" in str(got)
        assert "\n" not in str(got)


def test_the_fatal_kafka_causes_have_distinct_exit_codes() -> None:
    """Documented on the docs' operations page: tests/unit/test_docs.py keeps it in step."""
    fatal = [AuthenticationFailed, TlsFailed, NotAuthorized, UnreadableRecords]
    assert len({exit_code_for(cls) for cls in fatal}) == len(fatal)


def test_a_send_refused_after_fencing_is_fatal_on_kafka_python() -> None:
    """kafka-python refuses sends after a fenced request with a bare KafkaError carrying the
    cause: taken for a transient error, the producer was replaced and fenced its fencer back."""
    from kafka.errors import KafkaError, KafkaTimeoutError, ProducerFencedError

    from forestream.edge.kafka_python import KafkaPythonTransactionalProducer
    from forestream.errors import ProducerFenced

    producer = object.__new__(KafkaPythonTransactionalProducer)  # its logic, not a client
    producer._id = "tx-7"
    producer._conn = None  # type: ignore[assignment]
    refused = KafkaError(
        "Cannot perform send because at least one previous transactional or idempotent "
        "request has failed with errors.",
        ProducerFencedError(),
    )
    fatal = producer.fatal(refused, "out")
    assert isinstance(fatal, ProducerFenced) and "tx-7" in str(fatal)
    assert isinstance(producer._fatal_or_transient(refused), ProducerFenced)
    assert producer.fatal(KafkaTimeoutError("slow"), "out") is None


def test_a_refused_producer_id_is_an_acl_to_grant_not_a_delivery_failure() -> None:
    """kafka-python wraps the InitProducerId refusal in a plain KafkaError: it is still the
    ACL's exit code, and the line says which ACL."""
    conn = KafkaConnection(
        "b:9092", security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="svc"
    )
    wrapped = kafka_errors.KafkaError(
        "Unexpected error in InitProducerIdResponse: [Error 31] ClusterAuthorizationFailedError"
    )
    fatal = classify_client_error(wrapped, conn, topic="in")
    assert isinstance(fatal, NotAuthorized) and exit_code_for(fatal) == 5
    assert "not authorized to produce to topic 'in' as 'svc'" in str(fatal)
    assert "WRITE and DESCRIBE" in str(fatal)
    assert classify_client_error(kafka_errors.KafkaError("something else"), conn) is None


def test_a_client_error_no_command_caught_is_classified_on_either_client() -> None:
    """``forestream.cli``'s last resort: one line and the exit code, whichever client raised."""
    from confluent_kafka import KafkaError, KafkaException

    from forestream.edge.factory import classify_stray

    assert isinstance(classify_stray(kafka_errors.TopicAuthorizationFailedError()), NotAuthorized)
    rd = KafkaException(KafkaError(KafkaError.SASL_AUTHENTICATION_FAILED))
    assert isinstance(classify_stray(rd), AuthenticationFailed)
    assert classify_stray(kafka_errors.NodeNotReadyError()) is None
    assert classify_stray(ValueError("not a client's")) is None
