"""The librdkafka adapter's pure parts: its configuration and how its errors are classified."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException
from pydantic import SecretStr

from forestream.edge.confluent.classify import classify_librdkafka_error
from forestream.edge.connection import KafkaConnection
from forestream.errors import AuthenticationFailed, NotAuthorized, TlsFailed, UnreadableRecords
from forestream.exit_codes import exit_code_for

SCRAM = KafkaConnection(
    "broker:9093",
    security_protocol="SASL_SSL",
    sasl_mechanism="SCRAM-SHA-512",
    sasl_username="svc",
    sasl_password=SecretStr("s3cret"),
    ssl_cafile=Path("/ca.pem"),
    ssl_check_hostname=False,
)


def test_sasl_ssl_maps_to_librdkafka_names() -> None:
    config = SCRAM.librdkafka_config()
    assert config == {
        "bootstrap.servers": "broker:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc",
        "sasl.password": "s3cret",
        "ssl.ca.location": "/ca.pem",
        "ssl.endpoint.identification.algorithm": "none",
    }
    assert "s3cret" not in repr(SCRAM)


def test_mutual_tls_maps_certificate_and_key() -> None:
    conn = KafkaConnection(
        "broker:9094",
        security_protocol="SSL",
        ssl_cafile=Path("/ca.pem"),
        ssl_certfile=Path("/client.pem"),
        ssl_keyfile=Path("/client.key"),
    )
    config = conn.librdkafka_config()
    assert config["ssl.certificate.location"] == "/client.pem"
    assert config["ssl.key.location"] == "/client.key"
    assert config["ssl.endpoint.identification.algorithm"] == "https"
    assert "sasl.mechanism" not in config


def test_plaintext_is_just_the_address() -> None:
    assert KafkaConnection("127.0.0.1:9092").librdkafka_config() == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "PLAINTEXT",
    }


@pytest.mark.parametrize(
    ("code", "fatal"),
    [
        (KafkaError._AUTHENTICATION, AuthenticationFailed),
        (KafkaError.SASL_AUTHENTICATION_FAILED, AuthenticationFailed),
        (KafkaError._SSL, TlsFailed),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, NotAuthorized),
        (KafkaError.GROUP_AUTHORIZATION_FAILED, NotAuthorized),
        (KafkaError.CLUSTER_AUTHORIZATION_FAILED, NotAuthorized),
        (KafkaError.UNSUPPORTED_COMPRESSION_TYPE, UnreadableRecords),
    ],
)
def test_errors_no_retry_fixes_are_fatal_with_their_exit_code(code: int, fatal: type) -> None:
    found = classify_librdkafka_error(KafkaError(code), SCRAM, topic="in", group="g")
    assert isinstance(found, fatal)
    assert "s3cret" not in str(found)
    wrapped = classify_librdkafka_error(KafkaException(KafkaError(code)), SCRAM)
    assert isinstance(wrapped, fatal)


@pytest.mark.parametrize(
    "code",
    [
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError.NOT_COORDINATOR,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.REQUEST_TIMED_OUT,
    ],
)
def test_a_cluster_away_or_busy_is_retried(code: int) -> None:
    assert classify_librdkafka_error(KafkaError(code), SCRAM) is None


def test_a_transport_error_that_is_a_tls_failure_is_fatal() -> None:
    error = KafkaError(KafkaError._TRANSPORT, "SSL handshake failed: certificate verify failed")
    assert isinstance(classify_librdkafka_error(error, SCRAM), TlsFailed)


@pytest.mark.parametrize(
    "code", [KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH]
)
def test_a_fenced_producer_is_its_own_fatal_error_not_a_format_mismatch(code: int) -> None:
    """librdkafka flags fencing as fatal; it must not read as "records this client cannot
    read" (exit 7) but as fencing (exit 9)."""
    from forestream.errors import ProducerFenced

    fatal = classify_librdkafka_error(KafkaError(code, "fenced", fatal=True), SCRAM)
    assert isinstance(fatal, ProducerFenced) and exit_code_for(fatal) == 9
    assert "transactional id" in str(fatal)


def test_a_refused_producer_id_names_the_write_acl() -> None:
    """librdkafka raises it as a fatal cluster authorization failure of the idempotent
    producer; any other cluster authorization failure stays generic."""
    said = "Failed to acquire idempotence PID from broker x/1: Broker: Cluster authorization failed"
    error = KafkaError(KafkaError.CLUSTER_AUTHORIZATION_FAILED, said, fatal=True)
    fatal = classify_librdkafka_error(KafkaException(error), SCRAM, topic="out")
    assert isinstance(fatal, NotAuthorized) and exit_code_for(fatal) == 5
    assert "not authorized to produce to topic 'out' as 'svc'" in str(fatal)
    assert "WRITE and DESCRIBE" in str(fatal)
    other = classify_librdkafka_error(KafkaError(KafkaError.CLUSTER_AUTHORIZATION_FAILED), SCRAM)
    assert isinstance(other, NotAuthorized) and "to produce" not in str(other)


@pytest.mark.parametrize(
    ("code", "retriable"),
    [
        (KafkaError._TIMED_OUT, True),
        (KafkaError.REQUEST_TIMED_OUT, True),
        (KafkaError._TRANSPORT, True),
        (KafkaError.INVALID_REPLICATION_FACTOR, False),
        (KafkaError.INVALID_PARTITIONS, False),
        (KafkaError.POLICY_VIOLATION, False),
        (KafkaError.INVALID_CONFIG, False),
    ],
)
def test_a_topic_creation_the_broker_refuses_is_not_retried(code: int, retriable: bool) -> None:
    """The admin adapter's split: a refusal is the user's to fix (one line, exit 2), a
    cluster that did not answer is transient."""
    from forestream.edge.confluent.admin import _retriable

    assert _retriable(KafkaError(code)) is retriable
