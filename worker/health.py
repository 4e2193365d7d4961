"""``/metrics``, ``/healthz`` and ``/readyz`` of one worker on one port, from a daemon thread.

Liveness and readiness are different questions: an orchestrator restarts a worker whose loop
is stuck (``/healthz``) but only stops routing work to one that has no model or no partitions
yet (``/readyz``). The scoring loop reports into a :class:`HealthState`; the HTTP thread only
reads it, so serving a probe never waits on Kafka.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from forestream.errors import UserError
from forestream.worker.metrics import MetricsObserver, WorkerMetrics

DEFAULT_STALL_AFTER_S = 60.0
"""Longer than any wait the loop does on purpose (poll, publish retry back-off, rebalance)."""


def _partition_name(partition: Any) -> str:
    """``topic-N`` for a kafka ``TopicPartition``, ``str()`` of anything else (e.g. an int)."""
    topic, number = getattr(partition, "topic", None), getattr(partition, "partition", None)
    return f"{topic}-{number}" if topic is not None and number is not None else str(partition)


class HealthState:
    """What the loop tells the probes: when it last ticked, which model, which partitions.

    ``clock`` is injectable so tests can move time instead of sleeping.
    """

    def __init__(
        self,
        stall_after_s: float = DEFAULT_STALL_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if stall_after_s <= 0:
            raise ValueError("stall_after_s must be > 0")
        self.stall_after_s = stall_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last_tick = clock()  # a fresh process gets one stall period to start its loop
        self._model_version: str | None = None
        self._partitions: list[str] = []
        self._fatal: tuple[str, int] | None = None
        self._trust: dict[str, bool] = {"allow_unsigned": False, "allow_version_mismatch": False}

    def tick(self) -> None:
        """Call once per loop iteration: proves the loop is not stuck."""
        now = self._clock()
        with self._lock:
            self._last_tick = now

    def set_model(self, version: str | None) -> None:
        with self._lock:
            self._model_version = version

    def set_fatal(self, kind: str, detail: object = None, *, exit_code: int | None = None) -> None:
        """A configuration error no retry fixes (see ``forestream.edge.errors``): the process
        is ending; until it has, the probe says *that* it failed, the error's kind and the exit
        code it will end with. Never ``detail`` (the message): it may name hosts, users or
        paths, and the probe answers anyone who can reach the port; the log has it."""
        from forestream.exit_codes import exit_code_for_kind

        code = exit_code if exit_code is not None else exit_code_for_kind(kind)
        with self._lock:
            self._fatal = (kind, code)

    def set_trust(self, *, allow_unsigned: bool, allow_version_mismatch: bool) -> None:
        """The checks this worker was told to skip: shown in ``/readyz`` so nobody has to
        grep start logs to learn that a worker serves unsigned models."""
        with self._lock:
            self._trust = {
                "allow_unsigned": allow_unsigned,
                "allow_version_mismatch": allow_version_mismatch,
            }

    def set_assignment(self, partitions: Iterable[Any]) -> None:
        """The partitions this worker owns now (``TopicPartition`` or ints); empty = none."""
        names = sorted(_partition_name(p) for p in partitions)
        with self._lock:
            self._partitions = names

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """(alive, JSON-able body) for ``/healthz``."""
        with self._lock:
            since = self._clock() - self._last_tick
            fatal = self._fatal
        body: dict[str, Any] = {"seconds_since_tick": round(since, 3)}
        if fatal is not None:
            body.update(status="fatal", kind=fatal[0], exit_code=fatal[1])
            return False, body
        if since > self.stall_after_s:
            body["status"] = "stuck"
            body["reason"] = (
                f"scoring loop has not ticked for {since:.0f}s (limit {self.stall_after_s:.0f}s)"
            )
            return False, body
        body["status"] = "ok"
        return True, body

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, JSON-able body) for ``/readyz``: ``missing`` lists what is not there yet."""
        with self._lock:
            version, partitions = self._model_version, list(self._partitions)
            trust = dict(self._trust)
        missing = []
        if version is None:
            missing.append("model")
        if not partitions:
            missing.append("partitions")
        body: dict[str, Any] = {
            "status": "not_ready" if missing else "ready",
            "model_version": version,
            "partitions": partitions,
            **trust,
        }
        if trust["allow_unsigned"]:
            body["warning"] = "unsigned models allowed (--allow-unsigned)"
        if missing:
            body["missing"] = missing
        return not missing, body


READINESS_PARTS = ("model", "partitions")
"""What ``/readyz`` may report missing; each has a series in ``forestream_ready_missing``."""


class ReadinessCollector(Collector):
    """``/readyz`` as metrics, read from the :class:`HealthState` at scrape time.

    A probe's answer is not scraped by Prometheus, so an alert on "a worker not ready" needs it
    as a series: ``forestream_ready`` (1 ready, 0 not) and ``forestream_ready_missing{part}``
    (1 for each part ``/readyz`` lists as missing). Nothing is stored: the loop's calls into the
    state stay as they are.
    """

    def __init__(self, state: HealthState) -> None:
        self._state = state

    def describe(self) -> list[Metric]:
        return list(self._families(ready=True, missing=()))

    def collect(self) -> Iterator[Metric]:
        ready, body = self._state.readiness()
        yield from self._families(ready, body.get("missing", ()))

    @staticmethod
    def _families(ready: bool, missing: Iterable[str]) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "forestream_ready",
            "1 while /readyz answers 200 (a model loaded and partitions assigned), else 0",
            value=1.0 if ready else 0.0,
        )
        absent = GaugeMetricFamily(
            "forestream_ready_missing",
            "1 for each part /readyz reports missing (model, partitions)",
            labels=["part"],
        )
        gone = set(missing)
        for part in READINESS_PARTS:
            absent.add_metric([part], 1.0 if part in gone else 0.0)
        yield absent


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(HTTPStatus.OK, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._send_json(*self.server.state.liveness())
        elif path == "/readyz":
            self._send_json(*self.server.state.readiness())
        else:
            self._send_json(False, {"error": f"no such path {path}"}, HTTPStatus.NOT_FOUND)

    def _send_json(
        self, ok: bool, body: dict[str, Any], failure: HTTPStatus = HTTPStatus.SERVICE_UNAVAILABLE
    ) -> None:
        payload = json.dumps(body).encode() + b"\n"
        self._send(HTTPStatus.OK if ok else failure, payload, "application/json")

    def _send(self, status: HTTPStatus, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: Prometheus scrapes and probes every few seconds would drown the real logs."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], state: HealthState, registry: CollectorRegistry
    ) -> None:
        self.state = state
        self.registry = registry
        super().__init__(address, _Handler)


class HealthServer:
    """The worker's HTTP endpoint. ``port=0`` picks a free port; read it back from ``.port``."""

    def __init__(
        self,
        state: HealthState,
        registry: CollectorRegistry,
        port: int = 0,
        host: str = "127.0.0.1",
    ) -> None:
        try:
            self._server = _Server((host, port), state, registry)
        except OSError as exc:
            raise UserError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from None
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"forestream-health-{self.port}",
            daemon=True,
        )

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_health(
    state: HealthState, registry: CollectorRegistry, port: int, host: str = "127.0.0.1"
) -> HealthServer:
    """Start the endpoint in a daemon thread and return it (``.port`` is the bound port)."""
    return HealthServer(state, registry, port=port, host=host).start()


@dataclass
class Telemetry:
    """What the loop reports into: metrics, health state, and the endpoint serving both.

    ``server`` is ``None`` when no ``--metrics-port`` was given: the loop updates the same
    objects either way, so it needs no ``if`` per call.
    """

    metrics: WorkerMetrics
    health: HealthState
    server: HealthServer | None = None

    @property
    def observer(self) -> MetricsObserver:
        return MetricsObserver(self.metrics)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def start_telemetry(
    port: int | None,
    host: str = "127.0.0.1",
    stall_after_s: float = DEFAULT_STALL_AFTER_S,
) -> Telemetry:
    """Metrics and health for one worker; serves them on ``port`` unless it is ``None``."""
    metrics = WorkerMetrics()
    health = HealthState(stall_after_s=stall_after_s)
    metrics.registry.register(ReadinessCollector(health))
    server = None if port is None else serve_health(health, metrics.registry, port, host)
    return Telemetry(metrics, health, server)
