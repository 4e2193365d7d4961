"""When a librdkafka client is to be rebuilt for having known no broker (librdkafka#5301), and
what the worker does then: statistics reports in, "rebuild now?" out, on a fake clock; and the
worker's healer on the in-memory edge (its partitions handled as lost, nothing committed from
the old client, everything re-read by the new one).

The real client, a frozen broker and the rebuild end to end: tests/integration/
test_worker_heals.py.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forestream.edge.broker_loss import (
    BrokerLossWatch,
    last_heard_ago_s,
    stats_interval_ms,
)
from forestream.edge.interface import ConsumedRecord, TopicPartition
from forestream.errors import BrokersLost
from forestream.worker.cycle import BatchCycle
from forestream.worker.delivery import DeliveryEngine, Ledger, PipelinedAtLeastOnce, StopBudget
from forestream.worker.healing import ConsumerHealer
from forestream.worker.membership import Membership
from forestream.worker.processing import AckedPublisher, ProcessedBatch
from forestream.worker.settings import WorkerSettings
from tests.memory_edge import FakeClock, MemoryBroker, MemoryConsumer, MemoryProducer, score_each
from tests.waiting import wait_until

BOUND = 60.0


def broker(state: str = "UP", rxidle_us: int | None = 100_000, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"state": state, "source": "learned", "nodeid": 1, **extra}
    if rxidle_us is not None:
        entry["rxidle"] = rxidle_us
    return entry


def report(**brokers: dict[str, Any]) -> str:
    """A statistics report as librdkafka hands it to ``stats_cb`` (the fields read here)."""
    return json.dumps({"name": "rdkafka#consumer-1", "type": "consumer", "brokers": brokers})


COORDINATOR = {"state": "UP", "source": "logical", "nodeid": -1, "rxidle": 1_000}


# -- one report --------------------------------------------------------------------------------


def test_a_broker_up_is_heard_as_long_ago_as_its_last_receive() -> None:
    assert last_heard_ago_s({"brokers": {"h:9092/1": broker(rxidle_us=2_500_000)}}) == 2.5
    two = {"h:9092/1": broker(rxidle_us=9_000_000), "h:9093/2": broker(rxidle_us=300_000)}
    assert last_heard_ago_s({"brokers": two}) == pytest.approx(0.3)  # the freshest one


def test_brokers_down_logical_or_silent_on_a_new_connection_are_not_heard() -> None:
    for state in ("DOWN", "INIT", "CONNECT", "APIVERSION_QUERY", "TRY_CONNECT", "AUTH"):
        assert last_heard_ago_s({"brokers": {"h:9092/1": broker(state)}}) is None
    assert last_heard_ago_s({"brokers": {"GroupCoordinator": COORDINATOR}}) is None
    named_only = {k: v for k, v in COORDINATOR.items() if k != "source"}  # no source field
    assert last_heard_ago_s({"brokers": {"TxnCoordinator": named_only}}) is None
    internal = broker(source="internal")
    assert last_heard_ago_s({"brokers": {":0/internal": internal}}) is None
    assert last_heard_ago_s({"brokers": {"h:9092/1": broker(rxidle_us=-1)}}) is None
    assert last_heard_ago_s({"brokers": {}}) is None  # every broker dropped (#5301)
    assert last_heard_ago_s({}) is None


def test_a_bootstrap_broker_counts_and_one_without_rxidle_is_heard_now() -> None:
    bootstrap = broker(source="configured", nodeid=-1, rxidle_us=1_000_000)
    assert last_heard_ago_s({"brokers": {"h:9092/bootstrap": bootstrap}}) == 1.0
    assert last_heard_ago_s({"brokers": {"h:9092/1": broker(rxidle_us=None)}}) == 0.0


def test_statistics_come_often_enough_for_the_bound_and_never_floods() -> None:
    assert stats_interval_ms(60) == 10_000
    assert stats_interval_ms(5) == 1_000
    assert stats_interval_ms(1) == 500
    assert stats_interval_ms(3600) == 10_000


# -- the watch, over time ----------------------------------------------------------------------


def test_a_client_that_hears_from_its_broker_is_never_due() -> None:
    clock = FakeClock()
    watch = BrokerLossWatch(BOUND, clock)
    for _ in range(100):
        clock.advance(10)
        assert not watch.observe(report(**{"h:9092/1": broker(rxidle_us=150_000)}))
    assert watch.silent_s() == pytest.approx(0.15)


def test_silence_past_the_bound_is_due_and_a_broker_heard_again_ends_it() -> None:
    clock = FakeClock()
    watch = BrokerLossWatch(BOUND, clock)
    watch.observe(report(**{"h:9092/1": broker(rxidle_us=0)}))
    # the broker frozen: its connection stays UP, its rxidle grows with the clock
    for second in range(10, 61, 10):
        clock.advance(10)
        due = watch.observe(report(**{"h:9092/1": broker(rxidle_us=second * 1_000_000)}))
        assert due == (second >= BOUND)
    assert watch.due() and watch.silent_s() == pytest.approx(60)
    clock.advance(5)  # no report meanwhile: still due, and longer
    assert watch.due() and watch.silent_s() == pytest.approx(65)
    assert not watch.observe(report(**{"h:9092/1": broker(rxidle_us=200_000)}))


def test_every_broker_dropped_counts_from_the_last_one_heard() -> None:
    """librdkafka#5301: the brokers map empties (only the logical coordinator is left)."""
    clock = FakeClock()
    watch = BrokerLossWatch(BOUND, clock)
    clock.advance(10)
    watch.observe(report(**{"h:9092/1": broker(rxidle_us=4_000_000)}))  # heard 4 s ago
    clock.advance(30)
    assert not watch.observe(report(GroupCoordinator=dict(COORDINATOR, state="DOWN")))
    clock.advance(25)
    assert not watch.observe(report())  # heard 59 s ago
    clock.advance(1)
    assert watch.observe(report())
    assert watch.silent_s() == pytest.approx(60)


def test_a_new_client_gets_the_whole_bound_to_connect() -> None:
    clock = FakeClock()
    watch = BrokerLossWatch(BOUND, clock)
    clock.advance(BOUND - 0.1)
    assert not watch.observe(report(**{"h:9092/bootstrap": broker("CONNECT", rxidle_us=-1)}))
    clock.advance(0.1)
    assert watch.due()


def test_reports_that_say_nothing_change_nothing() -> None:
    clock = FakeClock()
    watch = BrokerLossWatch(BOUND, clock)
    clock.advance(30)
    for junk in ("", "{", "[]", "null", b"\xff", json.dumps({"brokers": []}), "42"):
        assert not watch.observe(junk)
    assert watch.silent_s() == 30
    watch.observe({"brokers": {"h:9092/1": broker(rxidle_us=0)}})  # already parsed
    assert watch.silent_s() == 0


def test_a_bound_must_be_positive() -> None:
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError):
            BrokerLossWatch(bad)


# -- properties --------------------------------------------------------------------------------

states = st.sampled_from(["UP", "DOWN", "INIT", "CONNECT", "APIVERSION_QUERY", "UPDATE"])
sources = st.sampled_from(["learned", "configured", "logical", "internal"])
entries = st.fixed_dictionaries(
    {"state": states, "source": sources},
    optional={"rxidle": st.integers(min_value=-1, max_value=10**9)},
)
reports = st.dictionaries(st.text(max_size=12), entries, max_size=4).map(
    lambda brokers: {"brokers": brokers}
)
junk = st.one_of(st.text(max_size=30), st.binary(max_size=30), st.none().map(lambda _: "null"))
steps = st.lists(
    st.tuples(st.floats(min_value=0, max_value=40), st.one_of(reports, junk)), max_size=30
)


@given(steps)
def test_the_watch_never_raises_and_silence_never_exceeds_the_time_since_the_start(
    script: list[tuple[float, Any]],
) -> None:
    clock = FakeClock()
    start = clock()
    watch = BrokerLossWatch(BOUND, clock)
    for wait, stats in script:
        clock.advance(wait)
        due = watch.observe(stats)
        silent = watch.silent_s()
        assert 0 <= silent <= clock() - start + 1e-9
        assert due == (silent >= BOUND)


@given(steps, st.integers(min_value=0, max_value=int(BOUND * 1e6) - 1))
def test_a_learned_broker_up_and_heard_within_the_bound_always_clears_it(
    script: list[tuple[float, Any]], rxidle_us: int
) -> None:
    clock = FakeClock()
    watch = BrokerLossWatch(BOUND, clock)
    for wait, stats in script:
        clock.advance(wait)
        watch.observe(stats)
    fresh = {"brokers": {"h:9092/1": {"state": "UP", "source": "learned", "rxidle": rxidle_us}}}
    assert not watch.observe(fresh)


@given(steps, st.floats(min_value=0, max_value=1000))
def test_with_no_report_silence_only_grows_and_due_stays_due(
    script: list[tuple[float, Any]], later: float
) -> None:
    clock = FakeClock()
    watch = BrokerLossWatch(BOUND, clock)
    for wait, stats in script:
        clock.advance(wait)
        watch.observe(stats)
    before, was_due = watch.silent_s(), watch.due()
    clock.advance(later)
    assert watch.silent_s() == pytest.approx(before + later)
    assert watch.due() or not was_due


@given(reports)
def test_only_learned_or_configured_brokers_up_are_ever_heard(stats: dict[str, Any]) -> None:
    heard = last_heard_ago_s(stats)
    counted = [
        b
        for name, b in stats["brokers"].items()
        if b["state"] == "UP"
        and b["source"] in ("learned", "configured")
        and name not in ("GroupCoordinator", "TxnCoordinator")
        and not name.endswith("/internal")
        and b.get("rxidle", 0) >= 0
    ]
    assert (heard is None) == (not counted)


# -- the worker's healer, on the in-memory edge ------------------------------------------------

TP0 = TopicPartition("in", 0)
TP1 = TopicPartition("in", 1)


def test_a_rebuild_handles_uncommitted_work_as_lost_and_the_new_client_reads_it_again() -> None:
    clock = FakeClock()
    broker_ = MemoryBroker()
    broker_.append(TP0, 3)
    broker_.append(TP1, 3)
    first = MemoryConsumer(broker_, [TP0, TP1])
    cycle, stop = BatchCycle(), StopBudget(clock=clock)
    delivered: list[ProcessedBatch] = []
    ledger = Ledger(
        first, cycle, score_each, delivered.append, stop, clock=clock, sleep=clock.sleep
    )
    producer = MemoryProducer(broker_, clock, mode="in_flight")
    engine = DeliveryEngine(ledger, PipelinedAtLeastOnce(ledger, AckedPublisher(producer)))
    membership = Membership(cycle, stop, session_timeout_ms=10_000)
    membership.engine = engine
    membership.owned = {TP0, TP1}
    built: list[MemoryConsumer] = []

    def build() -> MemoryConsumer:  # the group gives the new member both partitions back
        built.append(MemoryConsumer(broker_, [TP0, TP1]))
        return built[-1]

    settings = WorkerSettings(input_topic="in", rebuild_without_broker_s=BOUND)
    healer = ConsumerHealer(settings, None, "w-in", membership, build=build)  # type: ignore[arg-type]
    first.subscribe("in", membership)

    cycle.take(first.poll_batch(100, 0))
    engine.finish()  # pipelined: the batch is out, its acknowledgements not in yet
    assert healer.check(first, engine) is first  # the client has its broker: nothing happens

    first.no_broker_s = 61.0
    second = healer.check(first, engine)
    assert second is built[0] and ledger.consumer is second and first.closed
    assert second.handler is membership and healer.rebuilds == 1
    assert membership.owned == set()
    producer.deliver_all()  # the old batch is acknowledged after its partitions were lost
    engine.between_polls()
    assert broker_.committed == {}, "nothing committed for partitions the old client lost"

    producer.mode = "acked"
    cycle.take(second.poll_batch(100, 0))  # read again from the committed offsets (none)
    engine.finish(serial=True)
    engine.between_polls()  # the commit goes out from the new client only
    assert first.async_sent == [] and second.async_sent == [{TP0: 3, TP1: 3}]
    second.answer_async()
    engine.between_polls()
    assert broker_.committed == {TP0: 3, TP1: 3} and not cycle.holding
    keys = Counter(o.key for o in broker_.published)
    assert set(keys) == {b"k0", b"k1", b"k2"} and all(n == 4 for n in keys.values()), keys
    assert healer.check(second, engine) is second


# -- the labels reader, rebuilt, goes on where it was --------------------------------------------


class LabelsLog:
    """A labels topic of one partition in memory, read by :class:`ScriptedReader`s."""

    def __init__(self) -> None:
        self.records: list[ConsumedRecord] = []

    def append(self, count: int) -> None:
        for _ in range(count):
            offset = len(self.records)
            value = json.dumps({"label": "a"}).encode()
            self.records.append(ConsumedRecord("labels", 0, offset, 0, b"k%d" % offset, value))


class ScriptedReader:
    """A :class:`~forestream.edge.interface.PartitionReader` over a :class:`LabelsLog` that
    raises :class:`BrokersLost` once it has read up to ``lose_at`` (a client past its bound)."""

    def __init__(self, log: LabelsLog, lose_at: int | None) -> None:
        self.log = log
        self.lose_at = lose_at
        self.at = 0
        self.seeks: list[tuple[str, int | None]] = []
        self.closed = False

    def partitions(self, topic: str) -> set[int]:
        return {0}

    def assign(self, partitions: Any) -> None:
        pass

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks.append(("offset", offset))
        self.at = offset

    def seek_to_beginning(self, partitions: Any) -> None:
        self.seeks.append(("beginning", None))
        self.at = 0

    def seek_to_end(self, partitions: Any) -> None:
        self.seeks.append(("end", None))
        self.at = len(self.log.records)

    def position(self, partition: TopicPartition) -> int:
        return self.at

    def poll_batch(self, max_records: int, timeout_s: float) -> list[ConsumedRecord]:
        if self.lose_at is not None and self.at >= self.lose_at:
            raise BrokersLost(61.0, BOUND)
        out = self.log.records[self.at : self.at + max_records]
        self.at += len(out)
        if not out:
            time.sleep(0.01)
        return out

    def close(self) -> None:
        self.closed = True


def test_a_rebuilt_labels_reader_goes_on_from_the_offsets_it_had_reached(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Started at the end (labels older than the worker cannot join), it reads 3 labels, then
    its client loses its brokers; 4 more arrive, before or after the new client is built. The
    new client must read those 4 (sought to offset 5), not start at the end again."""
    from forestream.edge import factory
    from forestream.worker.evaluation import LabelConsumer, OnlineEvaluator

    labels = LabelsLog()
    labels.append(2)  # before the worker: never read
    readers: list[ScriptedReader] = []

    def partition_reader(*_args: Any, **kwargs: Any) -> ScriptedReader:
        assert kwargs["rebuild_without_broker_s"] == BOUND
        readers.append(ScriptedReader(labels, lose_at=None if readers else 5))
        return readers[-1]

    monkeypatch.setattr(factory, "partition_reader", partition_reader)
    counted: list[str] = []
    consumer = LabelConsumer(
        "127.0.0.1:1",
        "labels",
        OnlineEvaluator(window=100),
        rebuild_without_broker_s=BOUND,
        on_client_rebuilt=counted.append,
    ).start()
    try:
        wait_until(consumer.ready.is_set, "the labels reader positioned")
        labels.append(3)
        wait_until(
            lambda: consumer.labels_read == 3, "3 labels read", seen=lambda: consumer.labels_read
        )
        labels.append(4)
        wait_until(
            lambda: consumer.labels_read == 7, "7 labels read", seen=lambda: consumer.labels_read
        )
    finally:
        consumer.stop()
    first, second = readers[:2]
    assert first.seeks == [("end", None)] and first.closed
    assert second.seeks == [("offset", 5)], second.seeks
    assert counted == ["labels_reader"] and len(readers) == 2
