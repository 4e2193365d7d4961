"""Registry commands at the same time: the store's history and the models topic never disagree.

Two real ``forestream models`` processes started together on one store are serialized by the
store's lock; a writer the lock does not reach (another machine: here, a process on a copy of
the store, run between our decision and our announcement) is caught by the compare-and-set on
the models topic. Afterwards the store, the topic and a real :class:`ModelFollower` (what a
worker serves) agree, whatever order the commands ran in.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from forestream.edge.connection import KafkaConnection
from forestream.errors import RegistryConflict
from forestream.registry.local import PROMOTIONS, LocalModelStore
from forestream.training.publish import change_serving
from forestream.wire.messages import ModelEvent
from forestream.worker.models import ModelFollower, store_loader
from tests.kafka_helpers import on_client, read_topic
from tests.worker_support import ROOT, make_frame, save_model, worker_env

pytestmark = pytest.mark.usefixtures("kafka_client")  # every test on both clients

NAME = "m"
ROUNDS = 6


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v1, v2, v3 of a tiny model, with no promotion history."""
    store = tmp_path_factory.mktemp("trained") / "store"
    for seed in (1, 2, 3):
        save_model(store, NAME, make_frame(150, seed=seed), trees=3)
    (store / NAME / PROMOTIONS).unlink()
    return store


@pytest.fixture
def store(trained: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "store"))


@pytest.fixture
def models_topic(topic_name: Callable[[str], str]) -> str:
    return topic_name("models")


@pytest.fixture
def kafka(kafka_bootstrap: str, kafka_client: str) -> KafkaConnection:
    """The broker through this run's client, for what runs in-process (the commands started
    as processes inherit ``FORESTREAM_KAFKA_CLIENT``)."""
    return on_client(kafka_bootstrap, kafka_client)


@pytest.fixture
def follower(kafka: KafkaConnection, models_topic: str, store: Path) -> Iterator[ModelFollower]:
    running = ModelFollower(kafka, models_topic, NAME, store_loader(store, NAME))
    running.start()
    try:
        yield running
    finally:
        running.stop()


def models_cmd(bootstrap: str, topic: str, store: Path, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "forestream.cli", "models", *args,
        "--store", str(store), "--name", NAME,
        "--bootstrap-servers", bootstrap, "--models-topic", topic,
    ]  # fmt: skip


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, env=worker_env()
    )
    assert result.returncode == 0, f"{cmd[4:6]} failed:\n{result.stdout}{result.stderr}"
    return result


def start(cmd: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=worker_env(),
    )


def topic_events(bootstrap: str, topic: str) -> list[ModelEvent]:
    return [ModelEvent.model_validate_json(r.value) for r in read_topic(bootstrap, topic)]


def history(store: Path) -> list[tuple[str, str]]:
    return [(e["action"], e["version"]) for e in LocalModelStore(store).history(NAME)]


def as_history(events: list[ModelEvent]) -> list[tuple[str, str]]:
    """What the history should hold for these events: each one's action and served version."""
    return [
        ("rollback" if e.kind == "rolled_back" else "promote", e.serving.version)
        for e in events
        if e.serving is not None
    ]


def assert_agreement(bootstrap: str, topic: str, store: Path, follower: ModelFollower) -> str:
    """Store and topic say the same version, and the follower serves it; returns it."""
    events = topic_events(bootstrap, topic)
    served = LocalModelStore(store).served(NAME)
    assert events and events[-1].serving is not None
    assert served == events[-1].serving.version, (
        f"store serves {served}, topic {events[-1].serving.version}:\n"
        f"history {history(store)}\ntopic {as_history(events)}"
    )
    deadline = time.monotonic() + 30
    while (current := follower.current()) is None or current.version != served:
        assert time.monotonic() < deadline, (
            f"follower serves {current.version if current else None}, registry says {served}"
        )
        time.sleep(0.05)
    return served


def test_concurrent_promote_and_rollback_leave_store_topic_and_workers_agreeing(
    kafka_bootstrap: str, models_topic: str, store: Path, follower: ModelFollower
) -> None:
    for version in ("v1", "v2", "v3"):  # a deep enough history for every rollback
        run(models_cmd(kafka_bootstrap, models_topic, store, "promote", version))
    orders = []
    for _ in range(ROUNDS):
        registry = LocalModelStore(store)
        served = registry.served(NAME)
        # neither served nor the rollback's target: the history keeps its depth in either order
        (target,) = {"v1", "v2", "v3"} - {served, registry.previously_served(NAME)}
        promote = models_cmd(kafka_bootstrap, models_topic, store, "promote", target)
        rollback = models_cmd(kafka_bootstrap, models_topic, store, "rollback")
        procs = [start(cmd) for cmd in (promote, rollback)]  # the two start together
        outputs = [proc.communicate(timeout=120) for proc in procs]
        for proc, (out, err) in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, f"{proc.args[4:6]} exited {proc.returncode}:\n{out}{err}"
        now = assert_agreement(kafka_bootstrap, models_topic, store, follower)
        orders.append(f"{served}->{now}")
        # every announcement, in topic order, is one history entry: nothing lost or reordered
        assert history(store) == as_history(topic_events(kafka_bootstrap, models_topic))
    print(f"served before -> after each round: {orders}")


def test_a_rollback_that_loses_the_race_is_withdrawn(
    kafka_bootstrap: str,
    kafka: KafkaConnection,
    models_topic: str,
    store: Path,
    follower: ModelFollower,
    tmp_path: Path,
) -> None:
    """Another machine (its own copy of the store: our lock cannot reach it) promotes v1
    between our rollback's decision and its announcement."""
    for version in ("v2", "v3"):
        run(models_cmd(kafka_bootstrap, models_topic, store, "promote", version))
    elsewhere = Path(shutil.copytree(store, tmp_path / "elsewhere"))
    other = models_cmd(kafka_bootstrap, models_topic, elsewhere, "promote", "v1")

    with pytest.raises(RegistryConflict, match="rollback to v2 withdrawn, v1 is served"):
        change_serving(
            kafka, models_topic, LocalModelStore(store), NAME, "rollback",
            on_decided=lambda: run(other),
        )  # fmt: skip
    assert assert_agreement(kafka_bootstrap, models_topic, store, follower) == "v1"
    kinds = [(e.kind, e.version) for e in topic_events(kafka_bootstrap, models_topic)]
    assert kinds[2:] == [("promoted", "v1"), ("rolled_back", "v2"), ("promoted", "v1")]


def test_a_promotion_that_loses_the_race_stands_after_the_other(
    kafka_bootstrap: str,
    kafka: KafkaConnection,
    models_topic: str,
    store: Path,
    follower: ModelFollower,
    tmp_path: Path,
) -> None:
    for version in ("v1", "v2"):
        run(models_cmd(kafka_bootstrap, models_topic, store, "promote", version))
    elsewhere = Path(shutil.copytree(store, tmp_path / "elsewhere"))
    other = models_cmd(kafka_bootstrap, models_topic, elsewhere, "rollback")

    done = change_serving(
        kafka, models_topic, LocalModelStore(store), NAME, "promote", "v3",
        on_decided=lambda: run(other),
    )  # fmt: skip
    assert any("rolled back v1" in note for note in done.notes), done.notes
    assert assert_agreement(kafka_bootstrap, models_topic, store, follower) == "v3"
    assert history(store) == as_history(topic_events(kafka_bootstrap, models_topic))
    # the other machine's store learns of v3 on its next registry command: it rolls back from it
    assert LocalModelStore(elsewhere).served(NAME) == "v1"
    result = run(models_cmd(kafka_bootstrap, models_topic, elsewhere, "rollback"))
    assert "recorded v3 from it" in result.stderr and "now serving v1" in result.stdout


def test_a_publication_that_loses_the_race_keeps_what_the_other_serves(
    kafka_bootstrap: str,
    kafka: KafkaConnection,
    models_topic: str,
    store: Path,
    follower: ModelFollower,
    tmp_path: Path,
) -> None:
    run(models_cmd(kafka_bootstrap, models_topic, store, "promote", "v1"))
    elsewhere = Path(shutil.copytree(store, tmp_path / "elsewhere"))
    other = models_cmd(kafka_bootstrap, models_topic, elsewhere, "promote", "v2")

    done = change_serving(
        kafka, models_topic, LocalModelStore(store), NAME, "publish", "v3",
        on_decided=lambda: run(other),
    )  # fmt: skip
    assert done.event.serving is not None and done.event.serving.version == "v2"
    assert assert_agreement(kafka_bootstrap, models_topic, store, follower) == "v2"
    events = topic_events(kafka_bootstrap, models_topic)
    assert [(e.kind, e.version, e.serving and e.serving.version) for e in events[1:]] == [
        ("promoted", "v2", "v2"),
        ("published", "v3", "v1"),  # decided before v2 was promoted: stale, announced again
        ("published", "v3", "v2"),
    ]


def test_the_history_follows_the_topic_after_a_crash_between_announcing_and_recording(
    kafka_bootstrap: str, models_topic: str, store: Path, follower: ModelFollower
) -> None:
    run(models_cmd(kafka_bootstrap, models_topic, store, "promote", "v1"))
    run(models_cmd(kafka_bootstrap, models_topic, store, "promote", "v2"))
    path = store / NAME / PROMOTIONS
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))  # v2 announced, never recorded
    assert LocalModelStore(store).served(NAME) == "v1"

    result = run(models_cmd(kafka_bootstrap, models_topic, store, "rollback"))
    assert "recorded v2 from it" in result.stderr
    assert "now serving v1" in result.stdout  # rolled back from what workers served: v2
    assert assert_agreement(kafka_bootstrap, models_topic, store, follower) == "v1"


@pytest.mark.edge  # the factory loads only the chosen client
def test_registry_commands_import_no_scikit_learn_or_pandas_nor_the_other_client(
    kafka_bootstrap: str, models_topic: str, store: Path, kafka_client: str
) -> None:
    cmd = models_cmd(kafka_bootstrap, models_topic, store, "promote", "v1")
    result = subprocess.run(
        [cmd[0], "-X", "importtime", *cmd[1:]],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=worker_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    heavy = sorted(m for m in imported if m.split(".")[0] in ("sklearn", "pandas", "scipy"))
    assert not heavy, f"`models promote` imported {heavy[:5]}"
    other = {"kafka-python": "confluent_kafka", "confluent": "kafka"}[kafka_client]
    assert other not in imported, f"`models promote` on {kafka_client} imported {other}"
