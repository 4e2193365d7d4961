"""``forestream replay --guarantee exactly-once`` against a real broker, on both clients.

A backfill is either fully written or resumable without duplicates: a ``read_committed``
reader of the output topic and of the DLQ sees every input key exactly once, whether the
replay was SIGKILLed mid-run and resumed, resumed from a checkpoint file that lags the group's
committed offsets, stopped by SIGTERM on the way, or resumed twice at once (the later resume
fences the earlier one, which exits 9). The input is itself written in transactions, one of
them aborted, so its partitions hold transaction markers and records no replay may score.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from forestream.edge.factory import TopicSpec, ensure_topics, make_producer
from tests.integration.test_exactly_once import assert_exactly_once, stream
from tests.kafka_helpers import read_topic
from tests.worker_support import (
    log_events,
    make_frame,
    row_json,
    save_model,
    wait_for_event,
    worker_env,
)

pytestmark = pytest.mark.usefixtures("kafka_client")  # every test on both clients

PARTITIONS = 3
MODEL = "backfilled"
CHUNK = 100
"""Input records per upstream transaction."""
ROOT = Path(__file__).resolve().parents[2]
GAVE_UP = ("transaction_outcome_unknown", "transaction_aborted")
"""What a replay logs when a transaction's commit fails (the broker frozen under it)."""
FREEZE_S = 20.0
"""The longest the broker stays frozen: past the 10 s a commit is given."""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("store")
    save_model(path, MODEL, make_frame(300, seed=5), trees=10)
    return path


@dataclass
class Backfill:
    bootstrap: str
    topics: dict[str, str]
    store: Path
    checkpoint: Path
    logs: Path
    valid: set[bytes]
    dead: set[bytes]
    aborted: set[bytes]

    def command(self, *flags: str) -> list[str]:
        return [
            sys.executable, "-m", "forestream", "replay",
            "--bootstrap-servers", self.bootstrap,
            "--input-topic", self.topics["in"],
            "--output-topic", self.topics["out"],
            "--store", str(self.store), "--name", MODEL,
            "--checkpoint", str(self.checkpoint),
            *flags,
        ]  # fmt: skip

    def resume_command(self, *flags: str) -> list[str]:
        return [
            sys.executable, "-m", "forestream", "replay",
            "--resume", str(self.checkpoint), "--bootstrap-servers", self.bootstrap,
            *flags,
        ]  # fmt: skip

    def start(
        self, command: list[str], name: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """A replay in the background, its output in ``logs/<name>.log`` (no pipe to fill)."""
        with (self.logs / f"{name}.log").open("wb") as sink:
            return subprocess.Popen(
                command,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=worker_env() | (env or {}),
                cwd=ROOT,
            )

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def resume_to_the_end(self) -> None:
        done = subprocess.run(
            self.resume_command(),
            capture_output=True,
            text=True,
            timeout=240,
            env=worker_env(),
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        assert "replayed" in done.stdout, done.stdout

    def state(self) -> dict[str, Any]:
        return dict(json.loads(self.checkpoint.read_text()))

    def remaining(self) -> int:
        return sum(end - nxt for nxt, end in self.state()["ranges"].values())

    def checkpointed(self) -> int:
        """Input offsets checkpointed, over all partitions (a whole-topic range starts at 0);
        0 before the replay's first save."""
        if not self.checkpoint.exists():
            return 0
        return sum(nxt for nxt, _ in self.state()["ranges"].values())


def write_input(
    bootstrap: str, topic_name: Callable[[str], str], store: Path, logs: Path
) -> Backfill:
    """An input topic written in transactions of ``CHUNK`` records (malformed ones mixed in),
    one transaction aborted: its keys must never be scored."""
    topics = {"in": topic_name("in"), "out": topic_name("out")}
    topics["dlq"] = f"{topics['out']}.dlq"
    ensure_topics(bootstrap, [TopicSpec(topics["in"], PARTITIONS)])
    records, valid, dead = stream(1500, seed=31)
    frame = make_frame(CHUNK, seed=32).reset_index(drop=True)
    aborted = {
        f"aborted-{i}".encode(): row_json(row) for i, (_, row) in enumerate(frame.iterrows())
    }
    producer = make_producer(bootstrap, transactional_id=f"{topics['in']}-upstream")
    producer.init_transactions()
    chunks = [records[i : i + CHUNK] for i in range(0, len(records), CHUNK)]
    for n, chunk in enumerate(chunks):
        if n == len(chunks) // 2:  # an aborted transaction in the middle of the range
            producer.begin_transaction()
            for key, value in aborted.items():
                producer.send(topics["in"], key=key, value=value)
            producer.abort_transaction()
        producer.begin_transaction()
        for key, value in chunk:
            producer.send(topics["in"], key=key, value=value)
        producer.commit_transaction()
    producer.close()
    return Backfill(bootstrap, topics, store, logs / "replay.json", logs, valid, dead, set(aborted))


@pytest.fixture
def backfill(
    kafka_bootstrap: str, topic_name: Callable[[str], str], store: Path, tmp_path: Path
) -> Backfill:
    return write_input(kafka_bootstrap, topic_name, store, tmp_path)


def kill_after(b: Backfill, proc: subprocess.Popen[bytes], outputs: int, name: str) -> int:
    """SIGKILL ``proc`` once a ``read_committed`` reader sees ``outputs`` predictions; returns
    how many it saw."""
    try:
        seen = len(read_topic(b.bootstrap, b.topics["out"], expected=outputs, timeout_s=120))
    finally:
        proc.kill()
        proc.wait(timeout=10)
    if proc.returncode == 0:
        pytest.fail(
            f"the replay finished before it could be killed; use a smaller batch\n{b.log(name)}"
        )
    return seen


def read_final(bootstrap: str, topic: str, keys: set[bytes], timeout_s: float) -> Counter[bytes]:
    """Keys of ``topic`` once every replay has exited (``read_committed``): read until all of
    them are there, then once more to the end offsets the broker gives after that. Nothing is
    written after the exit, so every duplicate shows without a settle time to wait out."""
    read_topic(
        bootstrap, topic, until=lambda got: {r.key for r in got} >= keys, timeout_s=timeout_s
    )
    return Counter(r.key for r in read_topic(bootstrap, topic, timeout_s=timeout_s))


def check_outputs(b: Backfill, exactly_once: bool = True) -> None:
    predictions = read_final(b.bootstrap, b.topics["out"], b.valid, timeout_s=60)
    dead_letters = read_final(b.bootstrap, b.topics["dlq"], b.dead, timeout_s=60)
    duplicated = sum(n - 1 for n in predictions.values()) + sum(
        n - 1 for n in dead_letters.values()
    )
    print(
        f"\npredictions {sum(predictions.values())} for {len(b.valid)} valid inputs, dead "
        f"letters {sum(dead_letters.values())} for {len(b.dead)}; keys scored more than once: "
        f"{duplicated}"
    )
    scored_aborted = b.aborted & (set(predictions) | set(dead_letters))
    assert not scored_aborted, f"{len(scored_aborted)} records of an aborted input transaction"
    if exactly_once:
        assert_exactly_once(predictions, b.valid, "predictions")
        assert_exactly_once(dead_letters, b.dead, "dead letters")
    else:  # at-least-once: nothing lost, duplicates allowed
        assert set(predictions) == b.valid, f"{len(b.valid - set(predictions))} predictions lost"
        assert set(dead_letters) == b.dead, f"{len(b.dead - set(dead_letters))} dead letters lost"


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
def test_sigkilled_replay_resumes_without_loss(backfill: Backfill, guarantee: str) -> None:
    """At-least-once on librdkafka runs only with ``--clients all`` (tests/conftest.py
    COVERED_ELSEWHERE): the resume is kafka-python's at-least-once variant's, the client's
    part the exactly-once variant's and the edge suite's."""
    b = backfill
    proc = b.start(b.command("--guarantee", guarantee, "--max-batch", "20"), "first")
    kill_after(b, proc, 300, "first")
    state = b.state()
    assert state["guarantee"] == guarantee
    assert b.remaining() > 0, state
    if guarantee == "exactly-once":
        assert state["group"].startswith("forestream-replay-"), state
        assert state["transactional_id"] == state["group"], state

    b.resume_to_the_end()
    assert b.remaining() == 0
    check_outputs(b, exactly_once=guarantee == "exactly-once")


def test_resume_goes_by_the_group_not_a_lagging_file_and_sigterm_stops_in_order(
    backfill: Backfill,
) -> None:
    """The file rewound to the range's start stands for a crash between a transaction's commit
    and the file's save (the file lags by one batch there; by all of them here): the resume
    must start from the group's committed offsets all the same."""
    b = backfill
    proc = b.start(b.command("--guarantee", "exactly-once", "--max-batch", "20"), "first")
    seen = kill_after(b, proc, 300, "first")
    state = b.state()
    state["ranges"] = {p: [0, end] for p, (_nxt, end) in state["ranges"].items()}
    b.checkpoint.write_text(json.dumps(state))

    resumed = b.start(b.resume_command("--max-batch", "5"), "resumed")  # slower: SIGTERM in time
    try:
        read_topic(b.bootstrap, b.topics["out"], expected=seen + 50, timeout_s=120)
        resumed.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        code = resumed.wait(timeout=30)
        stopped_in = time.monotonic() - sent
    finally:
        if resumed.poll() is None:
            resumed.kill()
    out = b.log("resumed")
    if code == 0:
        pytest.fail(f"the resumed replay finished before SIGTERM; use a smaller batch\n{out}")
    print(f"\nstopped {stopped_in:.2f}s after SIGTERM")
    assert code == 130, out[-3000:]
    assert f"Resume with: forestream replay --resume {b.checkpoint}" in out, out[-3000:]
    assert "Traceback" not in out
    assert b.remaining() > 0

    b.resume_to_the_end()
    check_outputs(b)


def test_a_second_resume_fences_the_first(backfill: Backfill) -> None:
    """The first replay is frozen (SIGSTOP) while the second starts, and thawed once the second
    has taken its transactional id over: whatever the machine's speed, the first is then a
    zombie with work left, and its next transactional step must end it with exit 9."""
    b = backfill
    first = b.start(b.command("--guarantee", "exactly-once", "--max-batch", "5"), "first")
    second: subprocess.Popen[bytes] | None = None
    try:
        read_topic(b.bootstrap, b.topics["out"], expected=100, timeout_s=120)
        first.send_signal(signal.SIGSTOP)
        try:
            second = b.start(b.resume_command("--max-batch", "5"), "second")
            wait_for_event(b.logs / "second.log", "replay_settled", second, timeout_s=120)
        finally:
            first.send_signal(signal.SIGCONT)
        first_code = first.wait(timeout=120)
        second_code = second.wait(timeout=240)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
    if first_code == 0:
        pytest.fail(f"the first replay finished before the second started\n{b.log('first')}")
    first_out = b.log("first")
    print(f"\nfenced replay said: {first_out.strip().splitlines()[-1]}")
    assert first_code == 9, first_out[-3000:]
    assert "fenced: transactional id 'forestream-replay-" in first_out
    assert "was taken over, by another process of this replay" in first_out
    assert "Traceback" not in first_out
    assert second_code == 0, b.log("second")[-3000:]
    assert b.remaining() == 0
    check_outputs(b)


def test_a_broker_frozen_mid_transaction_loses_and_duplicates_nothing(
    topic_name: Callable[[str], str], store: Path, tmp_path: Path
) -> None:
    """A broker frozen (SIGSTOP) for longer than a transaction may take to commit: the replay
    cannot know whether it committed, so it replaces its producer (which settles it) and its
    reader, and goes on from the group's committed offsets once the broker is back. The replay
    is held still from its second committed batch until the broker is frozen: it then has the
    rest of a partition read ahead, and its next transaction falls in the freeze. A private
    broker: freezing the session's would stall the other tests' clients."""
    import contextlib
    import os

    from forestream.local import kafka as local_kafka

    info = local_kafka.start(tmp_path / "kafka")
    try:
        b = write_input(info.address, topic_name, store, tmp_path)
        # the coordinator must not abort the frozen transaction on its own (that fences, exit 9)
        env = {"FORESTREAM_TRANSACTION_TIMEOUT_MS": "120000"}
        proc = b.start(b.command("--guarantee", "exactly-once", "--max-batch", "20"), "run", env)
        run_log = b.logs / "run.log"
        try:
            deadline = time.monotonic() + 120
            while b.checkpointed() < 2 * 20:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"no second batch checkpointed within 120 s\n{b.log('run')}")
                time.sleep(0.01)
            proc.send_signal(signal.SIGSTOP)
            try:
                os.killpg(info.pid, signal.SIGSTOP)
            finally:
                proc.send_signal(signal.SIGCONT)
            try:  # past the 10 s a commit is given, or until the replay gave the commit up
                # (kafka-python does within the freeze; librdkafka's call waits for the broker)
                frozen_until = time.monotonic() + FREEZE_S
                while time.monotonic() < frozen_until and not log_events(run_log, *GAVE_UP):
                    if proc.poll() is not None:
                        pytest.fail(f"the replay ended while the broker was frozen\n{b.log('run')}")
                    time.sleep(0.1)
            finally:
                os.killpg(info.pid, signal.SIGCONT)
            thawed = time.monotonic()
            code = proc.wait(timeout=180)
            print(f"\nfinished {time.monotonic() - thawed:.1f}s after the broker was thawed")
        finally:
            if proc.poll() is None:
                proc.kill()
        out = b.log("run")
        assert code == 0, out[-3000:]
        entries = [
            json.loads(line)
            for line in out.splitlines()
            if line.startswith("{") and '"event"' in line
        ]
        events = [e["event"] for e in entries]
        print(f"replay events: {events}")
        assert set(GAVE_UP) & set(events), out[-3000:]
        settles = [e["new_reader"] for e in entries if e["event"] == "replay_settled"]
        assert settles[:1] == [False] and len(settles) >= 2, "settled at start, after the freeze"
        assert all(settles[1:]), "every settle after the first with a new reader"
        check_outputs(b)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(info.pid, signal.SIGCONT)
        local_kafka.stop(tmp_path / "kafka")
