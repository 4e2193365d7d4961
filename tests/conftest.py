"""Shared fixtures: one real Kafka broker per test session (shared by xdist workers), unique topic
names per test, and which Kafka client runs which test (THE RULE below)."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

if TYPE_CHECKING:
    from forestream.local.kafka import SecureBrokerInfo
    from forestream.local.schema_registry import RegistryInfo
    from tests.s3_support import S3Server

ROOT = Path(__file__).resolve().parent.parent


# Two shared, noisy cores: a per-example deadline would make property tests flaky, not stricter.
settings.register_profile(
    "forestream", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=100
)
settings.load_profile("forestream")


# -- Which Kafka client runs which test ----------------------------------------------------------
#
# THE RULE. A test asks for the ``kafka_client`` fixture (or a fixture parametrised over
# KAFKA_CLIENTS) to run once per client; then:
#
# 1. The edge contract runs on BOTH clients in every run (``make test``): every test under
#    tests/integration/edge/ and every test marked ``edge`` (the fatal classification of auth,
#    ACL and TLS errors, which each adapter does its own way, is tested through the CLI).
# 2. An end-to-end flow runs on kafka-python, the default client, in every run. Its librdkafka
#    variant runs with ``--clients extra`` (``make test-extra``, CI's second step) only when it
#    is listed in LIBRDKAFKA_FLOWS below, with what it exercises that is the client's own
#    (transactions, a broker killed or frozen, rebalancing under load). Any other librdkafka
#    variant of a flow tests nothing the edge suite and the kafka-python variant do not, and
#    runs only with ``--clients all``.
# 3. Where a flow runs over a matrix (client x guarantee x shape), the variants whose every part
#    another variant or test covers are listed in COVERED_ELSEWHERE below, with those tests, and
#    run only with ``--clients all`` too: one variant per behaviour in every run.
#
# Deselected variants are reported by pytest ("N deselected") and named in the summary; none is
# skipped silently. --clients core: rules 1 and 2's kafka-python half; extra: the LIBRDKAFKA_FLOWS
# variants alone; ci: both of those in one session (.ci/run); all: every variant of every test.

LIBRDKAFKA_FLOWS: dict[str, str] = {
    "test_evaluator.py::test_two_evaluators_publish_counts_that_sum_to_the_offline_join": "the "
    "evaluator commits offsets of a topic it reads outside its subscription, and follows a "
    "cooperative assignment",
    "test_exactly_once.py": "transactions across kill -9 and a replacement; a thawed zombie fenced",
    "test_replay_exactly_once.py": "transactional replay: resume after kill -9, fencing of a "
    "second resume, a broker frozen mid-transaction (librdkafka#5301)",
    "test_broker_restart.py": "the broker SIGKILLed and restarted under a stream (pipelined "
    "at-least-once; exactly-once: COVERED_ELSEWHERE)",
    "test_sigterm_wedged.py": "SIGTERM with the broker frozen, then gone: the client's blocking "
    "calls bounded by the grace",
    "test_worker_delivery.py::test_survivor_takes_over_after_sigkill": "a member kill -9'd under "
    "load: cooperative rebalance, pipelined commits (librdkafka's default)",
    "test_worker_delivery.py::test_rebalance_publishes_and_commits_the_batch_in_hand": "a "
    "cooperative revocation while a batch is in flight",
    "test_worker_delivery.py::test_sigterm_exits_zero_with_offsets_committed_after_last_scored": ""
    "the last commit (or transaction) and the group leave on SIGTERM while input arrives",
    "test_worker_heals.py": "a group consumer that knew no broker past the bound (a frozen "
    "broker) rebuilt from librdkafka's statistics and rejoined, no input lost (librdkafka#5301)",
    "test_promotion_under_load.py": "a hot reload under a steady stream: librdkafka's fetch and "
    "commit queue across the model switch, with no rebalance",
    "test_training_cli.py::test_train_publish_promote_rollback_through_the_compacted_topic": "the "
    "registry's appends to and reads of a new compacted topic (a leader not yet elected)",
}
"""Flows whose librdkafka variant runs in ``make test-extra``: ``file`` or ``file::test``, and
what they exercise that only a flow on that client shows."""

COVERED_ELSEWHERE: dict[str, str] = {
    "test_broker_restart.py::test_scoring_resumes_soon_after_a_broker_sigkill_and_restart"
    "[kafka-python-at-least-once]": "serial at-least-once on kafka-python with the broker lost "
    "and back: test_worker_broker_outage; the flow itself: the two pairs kept",
    "test_broker_restart.py::test_scoring_resumes_soon_after_a_broker_sigkill_and_restart"
    "[confluent-exactly-once]": "librdkafka transactions with the broker lost and back: "
    "test_worker_heals[confluent-exactly-once], test_replay_exactly_once's frozen broker",
    "test_worker_delivery.py::test_survivor_takes_over_after_sigkill[kafka-python-default]": "the "
    "pipelined cycle under a member's kill -9: [confluent-default]; kafka-python's rebalance after "
    "a kill: [kafka-python-flipped]; its asynchronous commits: the edge suite "
    "(test_group_consumer); the pipelined ledger: unit/test_batch_cycle",
    "test_worker_delivery.py::test_survivor_takes_over_after_sigkill[confluent-flipped]": "the "
    "serial cycle under a member's kill -9: [kafka-python-flipped]; librdkafka's rebalance after "
    "a kill: [confluent-default]; its synchronous commits: the edge suite (test_group_consumer)",
    "test_replay_exactly_once.py::test_sigkilled_replay_resumes_without_loss"
    "[confluent-at-least-once]": "an at-least-once replay killed and resumed: "
    "[kafka-python-at-least-once]; a replay on librdkafka killed and resumed: "
    "[confluent-exactly-once]; its reader and acknowledged sends: the edge suite",
}
"""Variants of a matrix (client x guarantee x shape) whose every part another test covers:
``file::test[id]`` and which tests cover it. They run only with ``--clients all``, as
duplicates; the test's docstring says which variants cover what."""

EDGE_DIR = Path(__file__).resolve().parent / "integration" / "edge"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--clients",
        choices=("core", "all", "extra", "ci"),
        default="core",
        help="core (default): the edge contract on both clients, every flow on kafka-python; "
        "extra: the librdkafka variants of the flows in tests/conftest.py LIBRDKAFKA_FLOWS; "
        "ci: core and extra in one session (one broker, one start-up: what .ci/run runs); "
        "all: every variant of every test",
    )


def pytest_configure(config: pytest.Config) -> None:
    """One broker for every xdist worker, and one Ed25519 key pair per process, exported
    before any test or command runs: models saved by tests are signed and workers verify, as
    in a deployment (an xdist worker's tests and the commands they start share its pair)."""
    from tests.signing_support import install_session_keys

    _share_one_broker(config)
    install_session_keys()


def _on_librdkafka(item: pytest.Item) -> bool:
    """The ``kafka_client`` fixture, or a module-scoped fixture parametrised over the clients
    (test_worker_monitoring's ``stream``), is on ``confluent`` for this test."""
    callspec = getattr(item, "callspec", None)
    values = callspec.params.values() if callspec is not None else ()
    return any(isinstance(v, str) and v == "confluent" for v in values)


def client_slot(item: pytest.Item) -> str:
    """Where this test runs: ``core`` (every run), ``extra`` (``make test-extra``) or
    ``duplicate`` (only ``--clients all``); see THE RULE above and COVERED_ELSEWHERE."""
    if f"{item.path.name}::{item.name}" in COVERED_ELSEWHERE:
        return "duplicate"
    if not _on_librdkafka(item):
        return "core"
    if item.path.is_relative_to(EDGE_DIR) or item.get_closest_marker("edge"):
        return "core"
    name = getattr(item, "originalname", item.name)
    if item.path.name in LIBRDKAFKA_FLOWS or f"{item.path.name}::{name}" in LIBRDKAFKA_FLOWS:
        return "extra"
    return "duplicate"


def pytest_itemcollected(item: pytest.Item) -> None:
    """Everything under tests/integration needs the broker: mark it so `-m` can select it, and
    the edge suite ``edge``."""
    if "/tests/integration/" in str(item.path):
        item.add_marker(pytest.mark.integration)
    if item.path.is_relative_to(EDGE_DIR):
        item.add_marker(pytest.mark.edge)


SLOWEST_FIRST: tuple[str, ...] = (
    "test_replay_exactly_once.py",
    "test_exactly_once.py",
    "test_worker_delivery.py",
    "test_broker_restart.py",
    "test_sigterm_wedged.py",
    "test_schema_registry_flow.py",
    "test_worker_heals.py",
    "test_evaluator.py",
    "test_demo.py",
    "test_evaluator_fleet.py",
    "test_object_store_flow.py",
    "test_secure_flow.py",
    "test_secure_broker.py",
    "test_promotion_race.py",
    "test_worker_scaling.py",
    "test_worker_broker_outage.py",
)
"""Test files run first, the slowest first (their durations in a ``--durations`` run of
``--clients ci``, 2026-12-05): pytest-xdist hands out work in collection order, and a long
file started last would be the run's tail while the other worker idles. ``make test`` keeps
this order (``--no-loadscope-reorder``; xdist would otherwise put the files with the most
tests, the unit tests', first and these last)."""


def _run_order(item: pytest.Item) -> int:
    name = item.path.name
    return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``--clients`` selects the client variants (THE RULE above); deselected ones are counted
    by pytest and listed by slot in the summary, never hidden. The slowest files go first
    (SLOWEST_FIRST)."""
    items.sort(key=_run_order)  # stable: every other file, and each file's tests, in order
    clients = config.getoption("--clients")
    if clients == "all":
        return
    wanted = {"core": {"core"}, "extra": {"extra"}, "ci": {"core", "extra"}}[clients]
    kept: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        slot = client_slot(item)
        (kept if slot in wanted else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
    config.stash[_SLOTS] = {
        slot: sum(1 for item in deselected if client_slot(item) == slot)
        for slot in ("core", "extra", "duplicate")
    }


_SLOTS = pytest.StashKey[dict[str, int]]()


def pytest_report_header(config: pytest.Config) -> str:
    return f"kafka clients: --clients {config.getoption('--clients')} (rule: tests/conftest.py)"


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker hands its deselection counts to the controller, which prints them."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None and _SLOTS in session.config.stash:
        workeroutput["client_slots"] = session.config.stash[_SLOTS]


@pytest.hookimpl(optionalhook=True)  # an xdist hook: pytest -p no:xdist still runs
def pytest_testnodedown(node: object, error: object) -> None:
    """xdist controller: every worker collected the same tests, so one's counts are the run's."""
    slots = getattr(node, "workeroutput", {}).get("client_slots")
    config = getattr(node, "config", None)
    if slots is not None and config is not None:
        config.stash[_SLOTS] = slots


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    slots = terminalreporter.config.stash.get(_SLOTS, None)
    if slots is None:  # --clients all: nothing deselected
        return
    where = {
        "core": "run by `make test` (--clients core)",
        "extra": "librdkafka flow variants, run by `make test-extra` (--clients extra)",
        "duplicate": "duplicates (librdkafka variants of kafka-python flows, COVERED_ELSEWHERE "
        "variants), run only with --clients all",
    }
    lines = [f"{n} {where[slot]}" for slot, n in slots.items() if n]
    if lines:
        terminalreporter.write_line("deselected by --clients: " + "; ".join(lines))


# -- One broker for the session, shared by every xdist worker -----------------------------------

_SHARED_DIR_ENV = "FORESTREAM_TEST_SHARED_BROKER_DIR"


def _share_one_broker(config: pytest.Config) -> None:
    """Under ``pytest -n N`` the controller names a directory for one broker, which the first
    worker to need it starts (under a file lock) and every other worker then uses; the controller
    stops it when the session ends. Tests that kill or freeze a broker start a private one.
    ``make test`` distributes by file (``--dist loadfile``): a module's fixtures are built once.
    (Not ``loadgroup``: pytest-xdist 3.8 tags grouped node ids through an attribute pytest 9.2
    no longer reads, so its groups were silently split.)"""
    if os.environ.get("PYTEST_XDIST_WORKER") or os.environ.get("FORESTREAM_BOOTSTRAP_SERVERS"):
        return
    if not getattr(config.option, "numprocesses", None):
        return
    shared = Path(tempfile.mkdtemp(prefix="forestream-broker-"))
    os.environ[_SHARED_DIR_ENV] = str(shared)  # the workers inherit it
    config.add_cleanup(lambda: _stop_shared_broker(shared))


def _stop_shared_broker(shared: Path) -> None:
    from forestream.local import kafka as local_kafka

    os.environ.pop(_SHARED_DIR_ENV, None)
    if (shared / "address").exists():
        local_kafka.stop(shared / "kafka")
    if (shared / "kafka-secure").exists():
        local_kafka.stop(shared / "kafka-secure")
    shutil.rmtree(shared, ignore_errors=True)


def _shared_broker(shared: Path) -> str:
    from forestream.local import kafka as local_kafka

    with (shared / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        address = shared / "address"
        if not address.exists():
            address.write_text(local_kafka.start(shared / "kafka").address)
        return address.read_text()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Address of a real broker: FORESTREAM_BOOTSTRAP_SERVERS if given, else one we start (one
    for all xdist workers, see ``_share_one_broker``)."""
    given = os.environ.get("FORESTREAM_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    shared = os.environ.get(_SHARED_DIR_ENV)
    if shared and os.environ.get("PYTEST_XDIST_WORKER"):
        address = _shared_broker(Path(shared))
        os.environ["FORESTREAM_BOOTSTRAP_SERVERS"] = address  # subprocesses inherit it
        try:
            yield address
        finally:
            os.environ.pop("FORESTREAM_BOOTSTRAP_SERVERS", None)
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
    """A second, secured broker (SASL_SSL + mutual TLS, ACLs), started only if a test asks
    (under xdist one for every worker, like the plain one).

    It leaves the environment alone: tests that use it pass its ``env()`` or client settings
    explicitly, so the plain ``kafka_bootstrap`` broker stays the default for everyone else.
    """
    from forestream.local import kafka as local_kafka

    shared = os.environ.get(_SHARED_DIR_ENV)
    if shared and os.environ.get("PYTEST_XDIST_WORKER"):
        # one for every xdist worker, as the plain one: started by whichever asks first (its
        # two test files may go to different workers), stopped by the controller
        with (Path(shared) / "lock-secure").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            shared_info = local_kafka.start(Path(shared) / "kafka-secure", secure=True)
        yield shared_info
        return
    data_dir = tmp_path_factory.mktemp("kafka-secure")
    info = local_kafka.start(data_dir, secure=True)
    try:
        yield info
    finally:
        local_kafka.stop(data_dir)


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryInfo]:
    """A real Apicurio Registry (Confluent-compatible API), started only if a test asks; ~4 s.

    Its URL is ``.url``; tests pass it explicitly (``FORESTREAM_SCHEMA_REGISTRY_URL``), so the
    environment of every other test stays as it was.
    """
    from forestream.local import schema_registry as local_registry

    data_dir = tmp_path_factory.mktemp("schema-registry")
    info = local_registry.start(data_dir)
    try:
        yield info
    finally:
        local_registry.stop(data_dir)


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
