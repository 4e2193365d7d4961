"""SIGTERM ends a worker within the documented grace even when its Kafka client is wedged.

Each test runs its own broker (never the session one: it is frozen or killed here), starts a
real worker, waits until predictions flow, then takes the broker away and stops the worker.
A frozen broker (SIGSTOP) still accepts TCP connections but answers nothing, so the client
hangs inside its requests; a killed one refuses connections, so the client retries.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from forestream.edge.factory import TopicSpec, ensure_topics, make_producer
from forestream.runtime.shutdown import EVENT, EXIT_CODE, GRACE_S
from tests.kafka_helpers import read_topic
from tests.worker_support import (
    log_events,
    make_frame,
    publish_promotion,
    row_json,
    save_model,
    worker_command,
    worker_env,
)

pytestmark = pytest.mark.usefixtures("kafka_client")  # every test on both clients

ROOT = Path(__file__).resolve().parents[2]
RECORDS = 120
MARGIN_S = 5.0
"""Above the grace: the exit's own log line and flushes (at most 3 s), and a loaded machine."""


@dataclass
class Running:
    broker_pid: int
    data_dir: Path
    worker: subprocess.Popen[bytes]
    log_path: Path


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    """A private broker and a worker that has scored ``RECORDS`` records; both always cleaned."""
    from forestream.local import kafka as local_kafka

    data_dir = tmp_path / "kafka"
    info = local_kafka.start(data_dir)
    worker: subprocess.Popen[bytes] | None = None
    try:
        bootstrap = info.address
        topics = {k: f"wedged.{k}" for k in ("in", "out", "dlq", "models")}
        ensure_topics(bootstrap, [TopicSpec(topics["in"], 2)])
        frame = make_frame(RECORDS, seed=5)
        _pipeline, metadata = save_model(tmp_path / "store", "wedged", frame)
        publish_promotion(bootstrap, topics["models"], metadata)

        log_path = tmp_path / "worker.log"
        command = worker_command(
            bootstrap, topics, tmp_path / "store", "wedged", "wedged-group", "--max-batch", "20"
        )
        with log_path.open("wb") as sink:
            worker = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, env=worker_env(), cwd=ROOT
            )
        producer = make_producer(bootstrap)
        try:
            for i, (_, row) in enumerate(frame.iterrows()):
                producer.send(topics["in"], key=f"k{i}".encode(), value=row_json(row))
            producer.flush(timeout=60)
        finally:
            producer.close()
        read_topic(bootstrap, topics["out"], expected=RECORDS, timeout_s=90)
        assert worker.poll() is None, f"worker died early:\n{log_path.read_text()}"
        yield Running(info.pid, data_dir, worker, log_path)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(info.pid, signal.SIGCONT)
        if worker is not None and worker.poll() is None:
            worker.kill()
        if worker is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(timeout=10)
        local_kafka.stop(data_dir)


def _stop_worker(run: Running, bound_s: float) -> tuple[int, float]:
    """SIGTERM the worker; (exit code, seconds until it exited). Fails after ``bound_s``."""
    started = time.monotonic()
    run.worker.send_signal(signal.SIGTERM)
    try:
        code = run.worker.wait(timeout=bound_s)
    except subprocess.TimeoutExpired:
        tail = run.log_path.read_text(errors="replace")[-4000:]
        raise AssertionError(
            f"worker still running {bound_s:.0f}s after SIGTERM (grace {GRACE_S:.0f}s):\n{tail}"
        ) from None
    return code, time.monotonic() - started


def _check_exit(run: Running, code: int) -> list[dict]:
    """Exit 0 (orderly) or the watchdog's code with exactly one exit line naming what it left."""
    log = run.log_path.read_text(errors="replace")
    lines = log_events(run.log_path, EVENT)
    assert code in (0, EXIT_CODE), f"exit code {code}:\n{log[-4000:]}"
    if code == 0:
        assert not lines, lines
        assert log_events(run.log_path, "worker_final_summary"), log[-4000:]
    else:
        assert len(lines) == 1, f"{len(lines)} {EVENT} lines:\n{log[-4000:]}"
        assert "pending_records" in lines[0]["abandoned"], lines[0]
    return lines


def test_sigterm_ends_a_worker_whose_broker_is_frozen_within_the_grace(running: Running) -> None:
    os.killpg(running.broker_pid, signal.SIGSTOP)
    time.sleep(2)  # the client's fetches and heartbeats are now hanging on the frozen broker
    assert running.worker.poll() is None, running.log_path.read_text()[-4000:]

    code, elapsed = _stop_worker(running, GRACE_S + 30)
    lines = _check_exit(running, code)
    print(f"broker frozen: worker exited {code} {elapsed:.1f}s after SIGTERM; {lines}")
    assert elapsed <= GRACE_S + MARGIN_S, f"{elapsed:.1f}s > {GRACE_S + MARGIN_S:.0f}s"


def test_sigterm_exit_time_with_the_broker_gone(running: Running) -> None:
    """Measured, not asserted against the grace: the client refuses faster than it hangs."""
    os.killpg(running.broker_pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(running.broker_pid, 0)  # local_kafka.start made it our child
    time.sleep(2)
    assert running.worker.poll() is None, running.log_path.read_text()[-4000:]

    code, elapsed = _stop_worker(running, GRACE_S + 30)
    lines = _check_exit(running, code)
    print(f"broker gone: worker exited {code} {elapsed:.1f}s after SIGTERM; {lines}")
