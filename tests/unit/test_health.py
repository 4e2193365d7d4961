"""The worker's HTTP endpoint over real HTTP on a free port: probes, metrics, status codes."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kafka import TopicPartition

from forestream.errors import UserError
from forestream.worker.health import HealthServer, HealthState, serve_health, start_telemetry
from forestream.worker.metrics import WorkerMetrics


class FakeClock:
    """Time the test moves by hand, so stall detection is tested without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state(clock: FakeClock) -> HealthState:
    return HealthState(stall_after_s=30.0, clock=clock)


@pytest.fixture
def metrics() -> WorkerMetrics:
    return WorkerMetrics()


@pytest.fixture
def server(state: HealthState, metrics: WorkerMetrics) -> Iterator[HealthServer]:
    with HealthServer(state, metrics.registry, port=0, host="127.0.0.1") as running:
        yield running


def get(server: HealthServer, path: str) -> tuple[int, str, bytes]:
    """(status, content type, body) of a real GET; error statuses are returned, not raised."""
    url = f"http://127.0.0.1:{server.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def get_json(server: HealthServer, path: str) -> tuple[int, dict[str, Any]]:
    status, content_type, body = get(server, path)
    assert content_type == "application/json"
    return status, json.loads(body)


def test_port_zero_binds_a_real_free_port(server: HealthServer) -> None:
    assert server.port > 0
    status, _, _ = get(server, "/healthz")
    assert status == 200


def test_readyz_is_503_naming_what_is_missing_until_model_and_partitions(
    server: HealthServer, state: HealthState
) -> None:
    status, body = get_json(server, "/readyz")
    assert status == 503
    assert body["missing"] == ["model", "partitions"]

    state.set_model("v1")
    status, body = get_json(server, "/readyz")
    assert status == 503
    assert body["missing"] == ["partitions"]

    state.set_assignment([TopicPartition("in", 1), TopicPartition("in", 0)])
    status, body = get_json(server, "/readyz")
    assert status == 200
    assert body == {
        "status": "ready",
        "model_version": "v1",
        "partitions": ["in-0", "in-1"],
        "allow_unsigned": False,
        "allow_version_mismatch": False,
    }

    state.set_assignment([])  # all partitions revoked in a rebalance
    status, body = get_json(server, "/readyz")
    assert status == 503
    assert body["missing"] == ["partitions"]


def test_healthz_turns_503_when_the_loop_stops_ticking_and_recovers(
    server: HealthServer, state: HealthState, clock: FakeClock
) -> None:
    clock.now += 29
    assert get_json(server, "/healthz")[0] == 200

    clock.now += 2  # 31 s since the last tick, limit 30 s
    status, body = get_json(server, "/healthz")
    assert status == 503
    assert body["status"] == "stuck"
    assert "not ticked for 31s" in body["reason"]

    state.tick()
    status, body = get_json(server, "/healthz")
    assert status == 200
    assert body["status"] == "ok"


def test_healthz_is_503_with_kind_and_exit_code_never_the_error_text(
    server: HealthServer, state: HealthState
) -> None:
    state.set_fatal("not_authorized", "not authorized on consumer group 'g' as 'svc'")
    state.tick()  # a loop that still ticks is not healthy once the process is ending
    status, body = get_json(server, "/healthz")
    assert status == 503
    assert body["status"] == "fatal"
    assert body["kind"] == "not_authorized"
    assert body["exit_code"] == 5  # the CLI's table: a missing ACL
    assert "svc" not in json.dumps(body) and "group" not in json.dumps(body)


def test_readyz_says_when_unsigned_models_are_allowed(
    server: HealthServer, state: HealthState
) -> None:
    _status, body = get_json(server, "/readyz")
    assert body["allow_unsigned"] is False and "warning" not in body
    state.set_trust(allow_unsigned=True, allow_version_mismatch=False)
    _status, body = get_json(server, "/readyz")
    assert body["allow_unsigned"] is True
    assert "unsigned" in body["warning"]


def _other_local_address() -> str | None:
    """A non-loopback IPv4 address of this machine: the one a route out would use (a UDP
    connect sends nothing), else any from ``ip -4 addr``."""
    import ipaddress
    import re
    import subprocess

    candidates = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: routable in theory, never contacted
            candidates.append(probe.getsockname()[0])
        except OSError:
            pass
    try:
        out = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
        candidates += re.findall(r"inet (\d+\.\d+\.\d+\.\d+)", out)
    except OSError:
        pass
    for address in candidates:
        if not ipaddress.ip_address(address).is_loopback and address != "0.0.0.0":
            return address
    return None


def test_the_endpoint_on_loopback_by_default_refuses_the_hosts_other_address(
    state: HealthState, metrics: WorkerMetrics
) -> None:
    other = _other_local_address()
    if other is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect to")
    with HealthServer(state, metrics.registry, port=0) as default:
        assert default.host == "127.0.0.1"
        assert get_json(default, "/readyz")[0] == 503  # answers on loopback...
        with pytest.raises(ConnectionRefusedError):  # ...and nowhere else
            socket.create_connection((other, default.port), timeout=5).close()
    # the same address reaches an endpoint told to listen everywhere: the refusal above is
    # the binding, not a firewall or a wrong address
    with HealthServer(state, metrics.registry, port=0, host="0.0.0.0") as everywhere:
        socket.create_connection((other, everywhere.port), timeout=5).close()


def test_metrics_serves_the_worker_registry_as_prometheus_text(
    server: HealthServer, metrics: WorkerMetrics
) -> None:
    metrics.record_reject_codes(["not_json"] * 3)
    status, content_type, body = get(server, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    assert b'forestream_records_dead_lettered_total{reason="not_json"} 3.0' in body


def test_unknown_path_is_404(server: HealthServer) -> None:
    status, body = get_json(server, "/nope")
    assert status == 404
    assert "/nope" in body["error"]


def test_port_in_use_is_a_user_error(state: HealthState, metrics: WorkerMetrics) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"127.0.0.1:{port}"):
            HealthServer(state, metrics.registry, port=port, host="127.0.0.1")


def test_stop_frees_the_port_for_a_restarted_worker(
    state: HealthState, metrics: WorkerMetrics
) -> None:
    first = serve_health(state, metrics.registry, port=0, host="127.0.0.1")
    port = first.port
    first.stop()
    first.stop()  # idempotent
    second = serve_health(state, metrics.registry, port=port, host="127.0.0.1")
    try:
        assert get(second, "/healthz")[0] == 200
    finally:
        second.stop()


def test_stall_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        HealthState(stall_after_s=0)


def test_telemetry_serves_what_the_loop_reports() -> None:
    telemetry = start_telemetry(port=0, host="127.0.0.1")
    try:
        assert telemetry.server is not None
        telemetry.health.set_model("v3")
        telemetry.health.set_assignment([0])
        telemetry.metrics.set_model_version("v3")
        assert get_json(telemetry.server, "/readyz")[0] == 200
        _, _, body = get(telemetry.server, "/metrics")
        assert b'forestream_model_version_info{version="v3"} 1.0' in body
    finally:
        telemetry.stop()


def test_telemetry_without_a_port_serves_nothing_but_still_records() -> None:
    telemetry = start_telemetry(port=None)
    telemetry.metrics.record_reject_codes(["empty"])
    assert telemetry.server is None
    assert telemetry.metrics.registry.get_sample_value("forestream_records_consumed_total") == 1
    telemetry.stop()
