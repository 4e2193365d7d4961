"""The exactly-once step shared by the worker and replay (:mod:`forestream.worker.transactions`),
driven
through a stand-in for the edge's TransactionalProducer (our own protocol, not a client)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from forestream.edge.interface import Outgoing, TopicPartition
from forestream.errors import NotAuthorized, TransactionAborted, TransientKafkaError
from forestream.exit_codes import exit_code_for
from forestream.worker.transactions import replace_producer, retry_backoff_s, transact


@dataclass
class Handed:
    """What :meth:`FakeTxn.send` returns: every record handed over, or ``error`` for some."""

    failure: BaseException | None = None

    def unacknowledged(self) -> list[int]:
        return []

    def error(self) -> BaseException | None:
        return self.failure

    def settled(self) -> bool:
        return True


@dataclass
class FakeTxn:
    """Records the calls :func:`transact` makes, in order."""

    send_error: BaseException | None = None
    fatal_error: Exception | None = None
    abort_confirmed: bool = True
    calls: list[str] = field(default_factory=list)
    committed: list[tuple[dict[TopicPartition, int], object]] = field(default_factory=list)
    closed: list[float] = field(default_factory=list)

    def begin(self) -> None:
        self.calls.append("begin")

    def send(self, records: Sequence[Outgoing]) -> Handed:
        self.calls.append(f"send {len(records)}")
        return Handed(self.send_error)

    def fatal(self, exc: BaseException, topic: str | None = None) -> Exception | None:
        return self.fatal_error

    def abort(self, timeout_s: float) -> bool:
        self.calls.append("abort")
        return self.abort_confirmed

    def commit_transaction(
        self, offsets: dict[TopicPartition, int], group_metadata: object, timeout_s: float
    ) -> None:
        self.calls.append("commit")
        self.committed.append((offsets, group_metadata))

    def close(self, timeout_s: float) -> None:
        self.closed.append(timeout_s)

    # the rest of the AckingProducer protocol, unused by transact()
    def flush(self, timeout_s: float) -> bool:
        return True

    def await_delivery(self, delivery: object, timeout_s: float) -> bool:
        return True


OFFSETS = {TopicPartition("in", 0): 12, TopicPartition("in", 2): 40}
RECORDS = [Outgoing("out", b"k", b"v"), Outgoing("out.dlq", b"k2", None)]


def _transact(txn: FakeTxn, still_owned: bool = True) -> list[str]:
    asked: list[str] = []

    def metadata() -> object:
        asked.append("metadata")
        return "group-metadata"

    transact(
        txn,  # type: ignore[arg-type]
        RECORDS,
        OFFSETS,
        metadata,
        timeout_s=5,
        topic="out",
        still_owned=lambda: still_owned,
    )
    return asked


def test_a_batch_and_its_offsets_commit_in_one_transaction() -> None:
    txn = FakeTxn()
    assert _transact(txn) == ["metadata"]
    assert txn.calls == ["begin", "send 2", "commit"]
    assert txn.committed == [(OFFSETS, "group-metadata")]


def test_records_not_handed_over_abort_the_transaction() -> None:
    txn = FakeTxn(send_error=BufferError("queue full"))
    with pytest.raises(TransactionAborted, match="queue full"):
        _transact(txn)
    assert txn.calls == ["begin", "send 2", "abort"] and not txn.committed


def test_an_abort_not_confirmed_leaves_the_outcome_unknown() -> None:
    txn = FakeTxn(send_error=BufferError("queue full"), abort_confirmed=False)
    with pytest.raises(TransientKafkaError, match="abort unconfirmed"):
        _transact(txn)


def test_a_fatal_send_error_aborts_and_ends() -> None:
    fatal = NotAuthorized("not authorized on topic 'out'")
    txn = FakeTxn(send_error=RuntimeError("denied"), fatal_error=fatal)
    with pytest.raises(NotAuthorized):
        _transact(txn)
    assert txn.calls[-1] == "abort" and not txn.committed


def test_partitions_lost_before_the_commit_abort_it() -> None:
    txn = FakeTxn()
    with pytest.raises(TransactionAborted, match="partitions lost"):
        _transact(txn, still_owned=False)
    assert txn.calls == ["begin", "send 2", "abort"] and not txn.committed


def test_the_successor_is_built_after_its_predecessor_is_dropped() -> None:
    old, new = FakeTxn(), FakeTxn()
    built = replace_producer(old, lambda: new)  # type: ignore[arg-type, return-value]
    assert built is new and old.closed == [0]
    assert replace_producer(None, lambda: new) is new  # type: ignore[arg-type, return-value]


def test_a_successor_the_cluster_does_not_answer_is_retried_not_a_user_mistake() -> None:
    """At start "cannot reach Kafka" is the user's (exit 2, a hint); mid-run it is an outage:
    the settle that builds the successor backs off and tries again."""
    from forestream.edge.factory import _unreachable
    from forestream.errors import ClusterUnreachable, UserError

    unreachable = _unreachable("127.0.0.1:1")
    assert isinstance(unreachable, ClusterUnreachable) and isinstance(unreachable, UserError)
    assert exit_code_for(unreachable) == 2

    def away() -> FakeTxn:
        raise unreachable

    old = FakeTxn()
    with pytest.raises(TransientKafkaError, match=r"^no broker at 127\.0\.0\.1:1 answered$"):
        replace_producer(old, away)  # type: ignore[arg-type]
    assert old.closed == [0]

    def misconfigured() -> FakeTxn:
        raise UserError("a flag was wrong")

    with pytest.raises(UserError, match="a flag was wrong"):  # anything else raises as it was
        replace_producer(None, misconfigured)  # type: ignore[arg-type]


def test_failed_transactions_back_off_up_to_five_seconds() -> None:
    waits = [retry_backoff_s(n) for n in range(1, 10)]
    assert waits == sorted(waits) and waits[0] == 0.2 and waits[-1] == 5.0
