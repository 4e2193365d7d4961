"""Shared fixtures: one real Kafka broker per test session, unique topic names per test."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

if TYPE_CHECKING:
    from forestream.local.kafka import SecureBrokerInfo
    from tests.s3_support import S3Server

ROOT = Path(__file__).resolve().parent.parent


# Two shared, noisy cores: a per-example deadline would make property tests flaky, not stricter.
settings.register_profile(
    "forestream", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=100
)
settings.load_profile("forestream")


LIBRDKAFKA_VARIANTS_IN_FULL_RUNS_ONLY = frozenset(
    {
        "test_broker_restart.py",  # a private broker killed and restarted: ~60 s a variant
        "test_demo.py",
        "test_kafka_cli.py",
        "test_producer_cli.py",
        "test_promotion_race.py",
        "test_promotion_under_load.py",
        "test_sigterm_wedged.py",  # a private broker frozen, then gone: ~30 s a variant
        "test_training_cli.py",
        "test_worker_monitoring.py",
    }
)
"""Modules whose librdkafka variants run only with ``--clients all`` (CI) or alone with
``--clients extra``: every other test of the Kafka edge (delivery incl. SIGTERM, hot reload, replay,
exactly-once, the DLQ, security, compression, the adapters' own tests) runs on both clients in
every run, and a warm ``make test`` stays near 20 minutes on two cores."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--clients",
        choices=("core", "all", "extra"),
        default="core",
        help="core (default): every test, except the librdkafka variants of the modules in "
        "LIBRDKAFKA_VARIANTS_IN_FULL_RUNS_ONLY; all: every variant; extra: only those core "
        "leaves out",
    )


def _extra_variant(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    client = callspec.params.get("kafka_client") if callspec is not None else None
    return client == "confluent" and item.path.name in LIBRDKAFKA_VARIANTS_IN_FULL_RUNS_ONLY


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/integration needs the broker: mark it so `-m` can select it.
    ``--clients`` then selects the client variants (deselected ones are counted, not hidden)."""
    for item in items:
        if "/tests/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)
    clients = config.getoption("--clients")
    if clients == "all":
        return
    wanted = clients == "extra"
    kept: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        (kept if _extra_variant(item) == wanted else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


def pytest_configure(config: pytest.Config) -> None:
    """One Ed25519 key pair for the session, exported before any test or command runs:
    models saved by tests are signed and workers verify, as in a deployment."""
    from tests.signing_support import install_session_keys

    install_session_keys()


def pytest_report_header(config: pytest.Config) -> str:
    return f"kafka clients: --clients {config.getoption('--clients')}"


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Address of a real broker: FORESTREAM_BOOTSTRAP_SERVERS if given, else one we start."""
    given = os.environ.get("FORESTREAM_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    from forestream.local import kafka as local_kafka

    data_dir = tmp_path_factory.mktemp("kafka")
    info = local_kafka.start(data_dir)
    os.environ["FORESTREAM_BOOTSTRAP_SERVERS"] = info.address  # subprocesses inherit it
    try:
        yield info.address
    finally:
        os.environ.pop("FORESTREAM_BOOTSTRAP_SERVERS", None)
        local_kafka.stop(data_dir)


@pytest.fixture(scope="session")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBrokerInfo]:
    """A second, secured broker (SASL_SSL + mutual TLS, ACLs), started only if a test asks.

    It leaves the environment alone: tests that use it pass its ``env()`` or client settings
    explicitly, so the plain ``kafka_bootstrap`` broker stays the default for everyone else.
    """
    from forestream.local import kafka as local_kafka

    data_dir = tmp_path_factory.mktemp("kafka-secure")
    info = local_kafka.start(data_dir, secure=True)
    try:
        yield info
    finally:
        local_kafka.stop(data_dir)


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Factory of topic names unique to this test (and this run): ``topic_name("in")``."""
    stem = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[:60].strip("-")
    run = uuid.uuid4().hex[:8]
    return lambda suffix="t": f"test.{stem}.{run}.{suffix}"


@pytest.fixture(params=["kafka-python", "confluent"])
def kafka_client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once per Kafka client: ``FORESTREAM_KAFKA_CLIENT`` for this process and
    every command it starts (one body of tests, two clients)."""
    monkeypatch.setenv("FORESTREAM_KAFKA_CLIENT", request.param)
    return str(request.param)


@pytest.fixture(scope="session")
def aws_test_credentials() -> Iterator[None]:
    """The fake AWS credentials the local S3 server takes, for this process and its children
    (none of the developer's own AWS settings leak into the tests)."""
    from tests.s3_support import CLEARED, aws_test_env

    wanted = aws_test_env()
    saved = {k: os.environ.get(k) for k in (*wanted, *CLEARED)}
    os.environ.update(wanted)
    for key in CLEARED:
        os.environ.pop(key, None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def s3_server(aws_test_credentials: None) -> Iterator[S3Server]:
    """A real S3 API server (moto's) on 127.0.0.1, a free port, shared by the session: give
    each test a bucket of its own (``tests.s3_support.new_bucket``), and never stop it."""
    from tests.s3_support import S3Server

    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_s3_server(s3_server: S3Server) -> Iterator[S3Server]:
    """A second endpoint onto the same objects, for a test that stops it (and starts it again
    on its port): what a store that goes away looks like to whoever uses this endpoint."""
    from tests.s3_support import S3Server

    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()
