"""Every private attribute forestream relies on exists on the installed kafka-python and
scikit-learn: the check that makes an upgrade past pyproject's bounds fail here, not in a
running worker. Real client objects (built offline: a pinned ``api_version`` needs no broker)
and a real fitted forest."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from forestream.errors import UnsupportedLibrary
from forestream.runtime.internals import (
    KAFKA_CONSUMER,
    KAFKA_TRANSACTIONAL_PRODUCER,
    NUMBA_CACHE,
    SKLEARN_FOREST,
    SKLEARN_PRIVATE_MODULES,
    SKLEARN_TREE,
    Internal,
    missing,
    require,
)
from tests.worker_support import fit_pipeline, make_frame

OFFLINE = {"bootstrap_servers": "127.0.0.1:1", "api_version": (3, 0)}


@pytest.fixture(scope="module")
def kafka_objects() -> Iterator[dict[str, Any]]:
    from kafka import KafkaConsumer, KafkaProducer

    consumer = KafkaConsumer(group_id="g", **OFFLINE)
    producer = KafkaProducer(transactional_id="t", **OFFLINE)
    try:
        yield {"KafkaConsumer": consumer, "KafkaProducer": producer}
    finally:
        consumer.close()
        producer.close(timeout=0)


@pytest.fixture(scope="module")
def sklearn_objects() -> dict[str, Any]:
    forest = fit_pipeline(make_frame(60), trees=2)[-1]
    return {"RandomForestClassifier": forest, "DecisionTreeClassifier": forest.estimators_[0]}


def check(obj: object, internal: Internal) -> None:
    """The one check every case runs: the attribute path resolves on ``obj``."""
    assert not missing(obj, [internal]), (
        f"{internal.library} lost {internal.owner}.{internal.path} ({internal.why}): "
        "adapt the code that uses it, then move pyproject's upper bound"
    )


@pytest.mark.parametrize(
    "internal", [*KAFKA_CONSUMER, *KAFKA_TRANSACTIONAL_PRODUCER], ids=lambda i: i.path
)
def test_kafka_python_has_what_we_rely_on(
    internal: Internal, kafka_objects: dict[str, Any]
) -> None:
    check(kafka_objects[internal.owner], internal)


@pytest.mark.parametrize("internal", [*SKLEARN_FOREST, *SKLEARN_TREE], ids=lambda i: i.path)
def test_scikit_learn_has_what_we_rely_on(
    internal: Internal, sklearn_objects: dict[str, Any]
) -> None:
    check(sklearn_objects[internal.owner], internal)


@pytest.mark.parametrize("dotted", SKLEARN_PRIVATE_MODULES)
def test_scikit_learn_private_modules_import(dotted: str) -> None:
    module, _, name = dotted.rpartition(".")
    assert hasattr(importlib.import_module(module), name), dotted


def test_the_check_fails_on_an_object_missing_one_attribute() -> None:
    """The check can fail: a stand-in coordinator without ``rejoining`` is caught, by name."""
    coordinator = SimpleNamespace(
        need_rejoin=lambda: False, request_rejoin=lambda: None, _commit_offsets_sync_async=None
    )
    stand_in = SimpleNamespace(
        _subscription=SimpleNamespace(assignment=set()),
        _coordinator=coordinator,
        _client=SimpleNamespace(cluster=SimpleNamespace(config={})),
    )
    [gone] = missing(stand_in, KAFKA_CONSUMER)
    assert gone.path == "_coordinator.rejoining"
    with pytest.raises(AssertionError, match=r"lost KafkaConsumer\._coordinator\.rejoining"):
        check(stand_in, gone)
    with pytest.raises(UnsupportedLibrary, match=r"^kafka-python \S+ has no KafkaConsumer"):
        require(stand_in, KAFKA_CONSUMER)
    coordinator.rejoining = False
    require(stand_in, KAFKA_CONSUMER)  # complete again: accepted


def test_clients_refuse_a_library_without_them_at_construction(
    kafka_objects: dict[str, Any],
) -> None:
    """Built on such a library, the group consumer says so in one line instead of running
    with a workaround silently off."""
    from forestream.edge.connection import KafkaConnection
    from forestream.edge.kafka_python.consumer import KafkaPythonGroupConsumer

    conn = KafkaConnection(bootstrap="127.0.0.1:1")
    KafkaPythonGroupConsumer(kafka_objects["KafkaConsumer"], conn, "g")
    stand_in = SimpleNamespace(_subscription=SimpleNamespace(assignment=set()))
    with pytest.raises(UnsupportedLibrary, match="_coordinator"):
        KafkaPythonGroupConsumer(stand_in, conn, "g")  # type: ignore[arg-type]


@pytest.mark.parametrize("internal", NUMBA_CACHE, ids=lambda i: i.path)
def test_numba_has_what_we_rely_on(internal: Internal) -> None:
    from numba.core import caching

    check(caching.Cache, internal)
