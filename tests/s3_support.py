"""A real S3 API server on localhost for the object-store tests: moto's standalone server.

moto keeps its buckets in this process, not per server: two servers started here are two
endpoints onto the same objects, and a server stopped and started again on its port finds them
all. The tests use that to take the store away from the workers only (their endpoint stops)
while the registry commands keep theirs.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from moto.server import ThreadedMotoServer

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "forestream-test",
    "AWS_SECRET_ACCESS_KEY": "forestream-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
CLEARED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def aws_test_env() -> dict[str, str]:
    """Credentials moto accepts, and nothing from the developer's own AWS setup."""
    return {**CREDENTIALS, "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class S3Server:
    """One moto server on 127.0.0.1 that a test can stop and start again on the same port."""

    port: int = field(default_factory=_free_port)
    _server: ThreadedMotoServer | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        deadline = time.monotonic() + 10
        while True:
            try:
                server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
                server.start()
                break
            except OSError as exc:  # the port of a just-stopped server, still in TIME_WAIT
                if time.monotonic() > deadline:
                    raise AssertionError(f"moto server cannot bind {self.port}: {exc}") from None
                time.sleep(0.2)
        self._server = server
        self._wait_up()
        return self

    def _wait_up(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"moto server on {self.port} not up in 10s") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def env(self) -> dict[str, str]:
        """What a ``forestream`` subprocess needs to use this server for ``s3://`` stores."""
        return {**aws_test_env(), "FORESTREAM_S3_ENDPOINT_URL": self.endpoint}


def new_bucket(server: S3Server, prefix: str = "fs-test") -> str:
    """A bucket of its own for one test (names are global to every server here)."""
    import boto3

    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    client: Any = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    return name
