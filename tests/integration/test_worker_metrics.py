"""The operator's view of a real ``forestream worker``: probes and Prometheus metrics over HTTP.

A worker is started before any model is promoted (not ready, but alive), then a model is
announced on the models topic (ready), then a known mix of valid and malformed records is sent:
the counters scraped from ``/metrics`` must equal exactly what was sent, per reason code.
``--processes 2`` children each serve their own port (``--metrics-port`` + worker index).
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from forestream.edge.factory import TopicSpec, ensure_topics, make_producer
from forestream.wire.headers import ReasonCode
from tests.kafka_helpers import read_topic
from tests.worker_support import (
    make_frame,
    malformed_records,
    publish_promotion,
    row_json,
    save_model,
    worker_command,
    worker_env,
)

ROOT = Path(__file__).resolve().parents[2]
MODEL = "metered"
PARTITIONS = 2
VALID = 300


def free_port(consecutive: int = 1) -> int:
    """A port P such that P .. P+consecutive-1 were all free a moment ago."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = int(probe.getsockname()[1])
        if first + consecutive > 65535:
            continue
        with contextlib.ExitStack() as held:
            try:
                for port in range(first, first + consecutive):
                    sock = held.enter_context(socket.socket())
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind(("0.0.0.0", port))
            except OSError:
                continue
        return first
    raise AssertionError(f"found no {consecutive} consecutive free ports")


def http_get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of a GET; error statuses are returned, not raised."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def wait_for(
    what: str,
    probe: Callable[[], Any],
    proc: subprocess.Popen[bytes],
    log: Path,
    timeout_s: float = 60.0,
) -> Any:
    """Poll ``probe`` until it returns something truthy; fail clearly if the worker died."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            last = probe()
        except (OSError, urllib.error.URLError) as exc:  # endpoint not up yet
            last = exc
        else:
            if last:
                return last
        if proc.poll() is not None:
            tail = log.read_text()[-3000:]
            raise AssertionError(f"worker exited ({proc.returncode}) waiting for {what}:\n{tail}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s:.0f}s (last: {last!r})")
        time.sleep(0.25)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``: (name, sorted labels) -> value."""
    status, body = http_get(port, "/metrics")
    assert status == 200, body
    samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def lag_by_partition(samples: dict[Any, float]) -> dict[str, float]:
    return {
        dict(labels)["partition"]: v
        for (name, labels), v in samples.items()
        if name == "forestream_consumer_lag_records"
    }


@pytest.fixture
def stopped_at_end() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes the test started; anything still running at the end is killed."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


def start_worker(
    command: list[str], log: Path, started: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            command,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=worker_env(),
            cwd=ROOT,
        )
    started.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"worker did not exit within 60s of SIGTERM:\n{log.read_text()}"
        ) from None
    assert code == 0, log.read_text()[-3000:]


def test_probes_and_counters_match_what_was_sent(
    kafka_bootstrap: str,
    topic_name: Callable[[str], str],
    tmp_path: Path,
    stopped_at_end: list[subprocess.Popen[bytes]],
) -> None:
    topics = {k: topic_name(k) for k in ("in", "out", "dlq", "models")}
    ensure_topics(kafka_bootstrap, [TopicSpec(topics["in"], PARTITIONS)])
    _pipeline, metadata = save_model(tmp_path / "store", MODEL, make_frame(300, seed=3), trees=10)
    port = free_port()
    log = tmp_path / "worker.log"
    command = worker_command(
        kafka_bootstrap, topics, tmp_path / "store", MODEL, topic_name("group"),
        "--metrics-port", str(port), "--max-batch", "100",
    )  # fmt: skip
    worker = start_worker(command, log, stopped_at_end)

    # alive but not ready: no model has been announced on the models topic yet
    wait_for("/healthz 200", lambda: http_get(port, "/healthz")[0] == 200, worker, log)
    status, body = http_get(port, "/readyz")
    assert status == 503, body
    assert "model" in json.loads(body)["missing"]
    assert value(scrape(port), "forestream_records_consumed_total") == 0

    publish_promotion(kafka_bootstrap, topics["models"], metadata)
    wait_for("/readyz 200", lambda: http_get(port, "/readyz")[0] == 200, worker, log)
    ready = json.loads(http_get(port, "/readyz")[1])
    assert ready["model_version"] == metadata.version
    assert len(ready["partitions"]) == PARTITIONS

    frame = make_frame(VALID, seed=4)
    bad = malformed_records()
    records = [(f"ok-{i}".encode(), row_json(row)) for i, (_, row) in enumerate(frame.iterrows())]
    records += [(f"bad-{i}".encode(), v) for i, (v, _code) in enumerate(bad)]
    producer = make_producer(kafka_bootstrap)
    try:
        for key, record_value in records:
            producer.send(topics["in"], key=key, value=record_value)
        producer.flush(timeout=30)
    finally:
        producer.close()
    sent = len(records)

    # outputs first (counters are updated only after a batch is acknowledged and committed)
    read_topic(kafka_bootstrap, topics["out"], expected=VALID, timeout_s=60)
    read_topic(kafka_bootstrap, topics["dlq"], expected=len(bad), timeout_s=30)

    def settled() -> dict[Any, float] | None:
        """The samples once every record is counted and no partition lags (lag is measured
        every few seconds, so it may trail the counters)."""
        samples = scrape(port)
        lag = lag_by_partition(samples)
        counted = value(samples, "forestream_records_consumed_total") == sent
        caught_up = len(lag) == PARTITIONS and set(lag.values()) == {0.0}
        return samples if counted and caught_up else None

    samples = wait_for("every record counted and lag 0", settled, worker, log, timeout_s=30)

    print(
        "scraped:",
        {
            (n, dict(labels).get("reason")): v
            for (n, labels), v in samples.items()
            if n.endswith("_total") and n.startswith("forestream_records")
        },
    )
    assert value(samples, "forestream_records_consumed_total") == sent
    assert value(samples, "forestream_records_predicted_total") == VALID
    expected_reasons = Counter(code for _, code in bad)
    for reason in ReasonCode.ALL:
        got = value(samples, "forestream_records_dead_lettered_total", reason=reason)
        assert got == expected_reasons.get(reason, 0), f"dead_lettered{{reason={reason}}}: {got}"
    assert value(samples, "forestream_model_version_info", version=metadata.version) == 1
    # the test pipeline is a RandomForest behind imputers and one-hot: compiled, gate passed
    engine = {"version": metadata.version, "engine": "compiled"}
    assert value(samples, "forestream_model_engine_info", **engine) == 1
    assert (value(samples, "forestream_batch_size_records_count") or 0) > 0
    assert value(samples, "forestream_batch_size_records_sum") == sent
    assert (value(samples, "forestream_predict_seconds_count") or 0) > 0
    assert value(samples, "forestream_end_to_end_latency_seconds_count") == VALID
    assert set(lag_by_partition(samples)) == {str(p) for p in range(PARTITIONS)}

    stop(worker, log)


def test_each_supervised_child_serves_its_own_port(
    kafka_bootstrap: str,
    topic_name: Callable[[str], str],
    tmp_path: Path,
    stopped_at_end: list[subprocess.Popen[bytes]],
) -> None:
    """``--processes 2 --metrics-port P``: children answer on P and P+1 (no model needed)."""
    topics = {k: topic_name(k) for k in ("in", "out", "dlq", "models")}
    port = free_port(consecutive=2)
    log = tmp_path / "workers.log"
    command = worker_command(
        kafka_bootstrap, topics, tmp_path / "store", MODEL, topic_name("group"),
        "--metrics-port", str(port), "--processes", "2",
    )  # fmt: skip
    supervisor = start_worker(command, log, stopped_at_end)
    for child_port in (port, port + 1):
        wait_for(
            f"/healthz 200 on port {child_port}",
            lambda p=child_port: http_get(p, "/healthz")[0] == 200,
            supervisor,
            log,
        )
        assert http_get(child_port, "/readyz")[0] == 503
    stop(supervisor, log)
