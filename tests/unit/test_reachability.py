"""A mistyped broker address is answered at once, not after the clients' long retries."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from forestream.edge.factory import require_reachable
from forestream.errors import UserError


@pytest.fixture
def listening_port() -> Iterator[int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


@pytest.fixture
def closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    return port


def test_a_listening_address_passes(listening_port: int) -> None:
    require_reachable(f"127.0.0.1:{listening_port}")


def test_any_listed_address_that_listens_is_enough(listening_port: int, closed_port: int) -> None:
    require_reachable(f"127.0.0.1:{closed_port},127.0.0.1:{listening_port}")


def test_nothing_listening_is_one_user_error(closed_port: int) -> None:
    with pytest.raises(UserError, match=rf"cannot reach Kafka at 127.0.0.1:{closed_port}: start"):
        require_reachable(f"127.0.0.1:{closed_port}")


def test_the_clients_address_forms_are_understood(listening_port: int) -> None:
    require_reachable(f"PLAINTEXT://127.0.0.1:{listening_port}")
    require_reachable(f" 127.0.0.1:{listening_port} ")
