"""Settings refuse what Kafka or arithmetic would choke on, as one line naming the setting."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forestream.errors import UserError
from forestream.producer.settings import ProducerSettings
from forestream.runtime.settings import CommonSettings, load_settings


@pytest.mark.parametrize("name", ["", "bad topic", "bad!topic", "x" * 250, ".", "..", "é"])
def test_illegal_topic_names_are_refused(name: str) -> None:
    with pytest.raises(UserError, match=r"invalid setting output_topic: .*not a legal Kafka topic"):
        load_settings(CommonSettings, output_topic=name)


@given(
    st.from_regex(r"[A-Za-z0-9._-]{1,249}", fullmatch=True).filter(lambda n: n not in {".", ".."})
)
def test_legal_topic_names_are_kept(name: str) -> None:
    assert load_settings(CommonSettings, input_topic=name).input_topic == name


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_refused_as_such(value: float) -> None:
    with pytest.raises(UserError, match=r"invalid setting rate: Input should be a finite number"):
        load_settings(ProducerSettings, rate=value)


@pytest.mark.parametrize("value", ["", " , ", "host:port", "a:1,b:x"])
def test_bootstrap_must_parse_as_broker_addresses(value: str) -> None:
    with pytest.raises(UserError, match=r"invalid setting bootstrap_servers: .*broker addresses"):
        load_settings(CommonSettings, bootstrap_servers=value)


@pytest.mark.parametrize(
    "value", ["kafka", "kafka:9092", " a:1, b:2 ", "[::1]", "[::1]:9093", "PLAINTEXT://h:9092"]
)
def test_bootstrap_forms_the_client_accepts_are_kept(value: str) -> None:
    assert load_settings(CommonSettings, bootstrap_servers=value).bootstrap_servers == value.strip()


def test_one_topic_in_two_roles_is_refused_where_every_role_is_used() -> None:
    settings = load_settings(CommonSettings, input_topic="x", dlq_topic="x")  # replay may
    with pytest.raises(UserError, match=r"invalid settings: input and dlq topics are both 'x'"):
        settings.check_distinct_topics()


@pytest.mark.parametrize(
    "value",
    ["kafka", "kafka:9092", " a:1, b:2 ", "[::1]", "[::1]:9093", "::1", "fe80::1:9092",
     "SASL_SSL://h:9093,SSL://g", "", " , ", "host:port", "a:1,b:x", "a,,b", "[::1:9092", "h:"],
)  # fmt: skip
def test_bootstrap_lists_are_parsed_as_the_kafka_python_client_parses_them(value: str) -> None:
    """Parsed without importing a client, to the same hosts and ports kafka-python finds."""
    from kafka.cluster import collect_hosts

    from forestream.runtime.settings import broker_addresses

    try:
        hosts = collect_hosts(value, randomize=False)
        theirs = [] if any(not h for h, _p, _f in hosts) else [(h, p) for h, p, _f in hosts]
    except ValueError:
        theirs = []
    assert broker_addresses(value) == theirs


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"input_format": "avro"}, "--input-format avro needs FORESTREAM_SCHEMA_REGISTRY_URL"),
        ({"input_format": "xml"}, "Input should be 'json', 'avro', 'json-schema' or 'protobuf'"),
        ({"schema_registry_url": "localhost:8081"}, "is not an http(s):// URL"),
        (
            {"schema_registry_url": "http://r:8081", "schema_registry_password": "pw"},
            "FORESTREAM_SCHEMA_REGISTRY_PASSWORD is set without",
        ),
        (
            {"schema_registry_url": "https://r", "schema_registry_cafile": "/nonexistent/ca.pem"},
            "FORESTREAM_SCHEMA_REGISTRY_CAFILE=/nonexistent/ca.pem is not a readable file",
        ),
    ],
)
def test_schema_registry_settings_are_refused_in_one_line(
    flags: dict[str, str], message: str
) -> None:
    from forestream.worker.settings import WorkerSettings

    with pytest.raises(UserError, match=re.escape(message)):
        load_settings(WorkerSettings, **flags)


def test_the_producer_writes_avro_only_with_a_registry_and_without_malformed_records() -> None:
    with pytest.raises(UserError, match="--format avro needs FORESTREAM_SCHEMA_REGISTRY_URL"):
        load_settings(ProducerSettings, value_format="avro")
    with pytest.raises(UserError, match="--malformed-share makes JSON records"):
        load_settings(
            ProducerSettings,
            value_format="avro",
            schema_registry_url="http://r:8081",
            malformed_share=0.1,
        )
    with pytest.raises(UserError, match="--format avro needs"):  # a blank URL is unset
        load_settings(ProducerSettings, value_format="avro", schema_registry_url=" ")
