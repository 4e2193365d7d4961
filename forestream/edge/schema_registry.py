"""A Schema Registry through Confluent's REST API (Confluent's registry, Apicurio's
``/apis/ccompat/v7``): the worker reads writer schemas by id, ``models register-schema``
publishes the model's contract.

The stdlib's HTTP client: basic auth and a private CA as the settings give them, a short
timeout, no retries of its own (the worker holds records and decides when to ask again).
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import SecretStr

from forestream.errors import SchemaRegistryRefused, SchemaRegistryUnavailable

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

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        """One request; the parsed JSON answer. HTTPError for an answer that is not 2xx,
        SchemaRegistryUnavailable when none came."""
        request = self._request(path)
        request.method = method
        if body is not None:
            request.data = json.dumps(body).encode()
            request.add_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        try:
            with urllib.request.urlopen(
                request, timeout=self.timeout_s, context=self._context()
            ) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SchemaRegistryUnavailable(
                f"schema registry {self.url} unreachable: {reason}"
            ) from None

    def schema_by_id(self, schema_id: int, fmt: str | None = None) -> RegisteredSchema | None:
        """The schema registered under ``schema_id``; None when the registry has no such id.
        ``fmt``: the ``format`` query parameter (``serialized``: a Protobuf schema as a base64
        ``FileDescriptorProto``; registries that do not know it return the text registered).

        Raises :class:`SchemaRegistryUnavailable` for anything else (unreachable, timeout,
        5xx, 401/403): the answer may differ on the next try.
        """
        query = f"?format={quote(fmt, safe='')}" if fmt else ""
        try:
            body = self._call("GET", f"/schemas/ids/{schema_id}{query}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise SchemaRegistryUnavailable(
                f"schema registry {self.url} answered HTTP {exc.code} for schema id {schema_id}"
            ) from None
        if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
            raise SchemaRegistryUnavailable(
                f"schema registry {self.url} sent no schema for id {schema_id}"
            )
        schema_type = body.get("schemaType")
        return RegisteredSchema(
            schema_type if isinstance(schema_type, str) else None, body["schema"]
        )

    # -- publishing a contract (``models register-schema``) ----------------------------------

    def latest(self, subject: str) -> tuple[int, str, int] | None:
        """(version, schema text, schema id) of the subject's latest version; None for a new
        subject."""
        found = self.latest_typed(subject)
        return None if found is None else found[:3]

    def latest_typed(self, subject: str) -> tuple[int, str, int, str] | None:
        """:meth:`latest` with the schema's type (``AVRO`` when the registry names none)."""
        try:
            body = self._call("GET", f"/subjects/{quote(subject, safe='')}/versions/latest")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise SchemaRegistryRefused(self._refusal(exc, subject)) from None
        kind = body.get("schemaType") or "AVRO"
        return int(body["version"]), str(body["schema"]), int(body["id"]), str(kind).upper()

    def set_compatibility(self, subject: str, level: str) -> None:
        try:
            self._call("PUT", f"/config/{quote(subject, safe='')}", {"compatibility": level})
        except urllib.error.HTTPError as exc:
            raise SchemaRegistryRefused(self._refusal(exc, subject)) from None

    def register(self, subject: str, text: str, schema_type: str = "AVRO") -> int:
        """Register ``text`` (``AVRO`` or ``JSON``) under ``subject``; its schema id (the same
        id again for a schema already registered). SchemaRegistryRefused when the subject's
        compatibility rule refuses it."""
        try:
            body = self._call(
                "POST", f"/subjects/{quote(subject, safe='')}/versions", _schema(text, schema_type)
            )
        except urllib.error.HTTPError as exc:
            raise SchemaRegistryRefused(self._refusal(exc, subject)) from None
        return int(body["id"])

    def version_of(self, subject: str, text: str, schema_type: str = "AVRO") -> int | None:
        """The subject's version holding exactly ``text``, if any."""
        try:
            body = self._call(
                "POST", f"/subjects/{quote(subject, safe='')}", _schema(text, schema_type)
            )
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise SchemaRegistryRefused(self._refusal(exc, subject)) from None
        return int(body["version"])

    def _refusal(self, exc: urllib.error.HTTPError, subject: str) -> str:
        try:
            message = json.loads(exc.read()).get("message", "")
        except (ValueError, AttributeError, OSError):
            message = ""
        return f"schema registry refused {subject!r} (HTTP {exc.code}): {message}"[:300]


def _schema(text: str, schema_type: str) -> dict[str, str]:
    """The body naming a schema: Avro is the registry's default type and goes unnamed."""
    return (
        {"schema": text} if schema_type == "AVRO" else {"schema": text, "schemaType": schema_type}
    )
