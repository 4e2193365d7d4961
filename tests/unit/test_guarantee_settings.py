"""The worker's delivery guarantee settings: what exactly-once turns off, and its ids."""

from __future__ import annotations

import socket

import pytest

from forestream.errors import UserError
from forestream.runtime.settings import load_settings
from forestream.worker.settings import WorkerSettings


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_at_least_once_is_the_default_and_pipelined_on_either_client(client: str) -> None:
    settings = load_settings(WorkerSettings, kafka_client=client)
    assert settings.guarantee == "at-least-once" and not settings.exactly_once
    assert settings.pipelined
    assert not load_settings(WorkerSettings, kafka_client=client, pipeline=False).pipelined


@pytest.mark.parametrize("pipeline", [None, True])
def test_exactly_once_runs_one_transaction_at_a_time(pipeline: bool | None) -> None:
    settings = load_settings(
        WorkerSettings, kafka_client="confluent", guarantee="exactly-once", pipeline=pipeline
    )
    assert settings.exactly_once and not settings.pipelined


def test_default_transactional_id_is_stable_per_group_host_and_index() -> None:
    first = load_settings(WorkerSettings, group="scoring", worker_index=3)
    again = load_settings(WorkerSettings, group="scoring", worker_index=3)
    other = load_settings(WorkerSettings, group="scoring", worker_index=4)
    expected = f"forestream-scoring-{socket.gethostname()}-3"
    assert first.transactional_id_or_default() == again.transactional_id_or_default() == expected
    assert other.transactional_id_or_default() != expected
    given = load_settings(WorkerSettings, transactional_id="billing-7")
    assert given.transactional_id_or_default() == "billing-7"


@pytest.mark.parametrize("value", ["exactly_once", "at-most-once", ""])
def test_an_unknown_guarantee_is_one_line_naming_the_setting(value: str) -> None:
    with pytest.raises(UserError, match=r"invalid setting guarantee"):
        load_settings(WorkerSettings, guarantee=value)


def test_transaction_timeout_has_sane_bounds() -> None:
    with pytest.raises(UserError, match=r"invalid setting transaction_timeout_ms"):
        load_settings(WorkerSettings, transaction_timeout_ms=10)
