"""How a worker reads writer schemas from a Schema Registry (Confluent's REST API).

One read-only call, ``GET /schemas/ids/{id}``, through the stdlib's HTTP client: basic auth and
a private CA as the settings give them, a short timeout, no retries of its own (the caller holds
records and decides when to ask again). Works against Confluent Schema Registry and Apicurio's
``/apis/ccompat/v7``.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from forestream.errors import SchemaRegistryUnavailable

DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class RegisteredSchema:
    schema_type: str | None
    """``AVRO`` (also when the registry leaves it out), ``JSON`` or ``PROTOBUF``."""
    text: str


@dataclass(frozen=True)
class SchemaRegistryAccess:
    """Where the registry is and how to authenticate; secrets stay :class:`SecretStr`."""

    url: str
    username: str | None = None
    password: SecretStr | None = None
    cafile: Path | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    def _request(self, path: str) -> urllib.request.Request:
        request = urllib.request.Request(self.url.rstrip("/") + path)
        request.add_header("Accept", "application/vnd.schemaregistry.v1+json, application/json")
        if self.username is not None:
            secret = self.password.get_secret_value() if self.password else ""
            token = base64.b64encode(f"{self.username}:{secret}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        return request

    def _context(self) -> ssl.SSLContext | None:
        if not self.url.startswith("https://"):
            return None
        return ssl.create_default_context(cafile=str(self.cafile) if self.cafile else None)

    def schema_by_id(self, schema_id: int) -> RegisteredSchema | None:
        """The schema registered under ``schema_id``; None when the registry has no such id.

        Raises :class:`SchemaRegistryUnavailable` for anything else (unreachable, timeout,
        5xx, 401/403): the answer may differ on the next try.
        """
        try:
            with urllib.request.urlopen(
                self._request(f"/schemas/ids/{schema_id}"),
                timeout=self.timeout_s,
                context=self._context(),
            ) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise SchemaRegistryUnavailable(
                f"schema registry {self.url} answered HTTP {exc.code} for schema id {schema_id}"
            ) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SchemaRegistryUnavailable(
                f"schema registry {self.url} unreachable: {reason}"
            ) from None
        if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
            raise SchemaRegistryUnavailable(
                f"schema registry {self.url} sent no schema for id {schema_id}"
            )
        schema_type = body.get("schemaType")
        return RegisteredSchema(
            schema_type if isinstance(schema_type, str) else None, body["schema"]
        )
