"""Configuration shared by every component: env prefix ``FORESTREAM_``, CLI flags override env.

Each component subclasses :class:`CommonSettings` with its own fields (one class per component).
Defaults work against the local broker started by ``forestream kafka start``.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from forestream.edge.connection import (
    DEFAULT_COMPRESSION,
    Compression,
    KafkaConnection,
    SaslMechanism,
    SecurityProtocol,
)
from forestream.edge.interface import KafkaClient
from forestream.errors import UserError

if TYPE_CHECKING:
    from forestream.edge.schema_registry import SchemaRegistryAccess
    from forestream.registry.store import ModelStore

FALLBACK_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_KAFKA_DIR = Path(".forestream/kafka")
BROKER_STATE_FILE = "broker.json"

DEFAULT_INPUT_TOPIC = "forestream.features"
DEFAULT_OUTPUT_TOPIC = "forestream.predictions"
DEFAULT_DLQ_TOPIC = "forestream.features.dlq"
DEFAULT_MODELS_TOPIC = "forestream.models"
DEFAULT_LABELS_TOPIC = "forestream.labels"
DEFAULT_MONITORING_TOPIC = "forestream.monitoring"
REPLAY_GROUP_PREFIX = "forestream-replay-"
"""An exactly-once replay's consumer group and transactional id start with this (one prefixed
ACL covers every replay)."""


def kafka_dir() -> Path:
    """Where the local broker keeps its data and state file (``FORESTREAM_KAFKA_DIR``)."""
    return Path(os.environ.get("FORESTREAM_KAFKA_DIR", str(DEFAULT_KAFKA_DIR)))


def read_broker_state(data_dir: Path) -> dict[str, Any] | None:
    """The local broker's state file, if one exists and its process is alive."""
    path = data_dir / BROKER_STATE_FILE
    try:
        state = json.loads(path.read_text())
        pid = int(state["pid"])
        if pid <= 0:  # stopped broker: the file only remembers its port
            return None
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state


def default_bootstrap() -> str:
    """The running local broker's address, else the conventional ``127.0.0.1:9092``."""
    state = read_broker_state(kafka_dir())
    if state is not None:
        return f"127.0.0.1:{state['port']}"
    return FALLBACK_BOOTSTRAP


_LEGAL_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
"""Kafka's own rule for topic names (``.`` and ``..`` excepted)."""


def illegal_topic_name(name: str) -> str | None:
    """Why Kafka would refuse ``name`` as a topic, or None when it is legal."""
    if _LEGAL_TOPIC.fullmatch(name) and name not in {".", ".."}:
        return None
    return (
        f"{name!r} is not a legal Kafka topic name "
        "(1-249 characters of letters, digits, '.', '_' and '-')"
    )


DEFAULT_KAFKA_PORT = 9092


def broker_addresses(bootstrap: str) -> list[tuple[str, int]]:
    """``(host, port)`` per listed broker, parsed as the Kafka clients parse the list (a
    ``PROTOCOL://`` prefix dropped, IPv6 in brackets or bare, default port 9092); empty when
    the list cannot be parsed or names no host. Pure: no client is imported to parse it."""
    addresses = []
    for entry in bootstrap.strip().split(","):
        parsed = _host_and_port(re.sub(r"^.*://", "", entry).strip())
        if parsed is None or not parsed[0]:
            return []
        addresses.append(parsed)
    return addresses


def _host_and_port(text: str) -> tuple[str, int] | None:
    try:
        if text.startswith("["):  # [IPv6] or [IPv6]:port
            host, rest = text[1:].split("]")
            return host, int(rest[1:]) if rest else DEFAULT_KAFKA_PORT
        if ":" not in text:
            return text, DEFAULT_KAFKA_PORT
        try:
            socket.inet_pton(socket.AF_INET6, text)  # a bare IPv6 address: no port
            return text, DEFAULT_KAFKA_PORT
        except OSError:
            host, port = text.rsplit(":", 1)
            return host, int(port)
    except ValueError:
        return None


class CommonSettings(BaseSettings):
    """Broker address and topic names: what every command that talks to Kafka needs."""

    # NaN and infinity pass ``ge``/``le`` checks with baffling messages: refuse them as such
    model_config = SettingsConfigDict(env_prefix="FORESTREAM_", extra="ignore", allow_inf_nan=False)

    bootstrap_servers: str = Field(default_factory=default_bootstrap)
    input_topic: str = DEFAULT_INPUT_TOPIC
    output_topic: str = DEFAULT_OUTPUT_TOPIC
    dlq_topic: str = DEFAULT_DLQ_TOPIC
    models_topic: str = DEFAULT_MODELS_TOPIC
    labels_topic: str = DEFAULT_LABELS_TOPIC
    monitoring_topic: str = DEFAULT_MONITORING_TOPIC
    shadow_topic: str | None = None
    """A shadow candidate's predictions (``models shadow``); unset: ``<output topic>.shadow``."""
    model_store: str = ".forestream/models"
    """A directory, or a URI: ``s3://bucket/prefix`` (also ``gs://``, ``az://``, ``file://``)."""
    s3_endpoint_url: str | None = None
    """An S3-compatible store (MinIO, Ceph, ...) for ``s3://`` URIs; unset, botocore decides
    (AWS, or its own ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``). Credentials come the AWS
    way: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, an instance role."""
    model_name: str = "model"
    log_format: str = "auto"

    # How to reach a secured cluster: env only (deployment config; a password in a flag would
    # show in `ps`), the same for every command. Secrets are SecretStr: never printed.
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr | None = None
    ssl_check_hostname: bool = True
    compression: Compression = DEFAULT_COMPRESSION
    kafka_client: KafkaClient = "kafka-python"
    """``confluent`` switches every Kafka client to librdkafka (see README, "Two Kafka
    clients")."""
    replication_factor: int | None = Field(default=None, ge=1, le=32767)
    min_insync_replicas: int | None = Field(default=None, ge=1, le=32767)

    @field_validator("model_store", mode="before")
    @classmethod
    def _store_location(cls, value: object) -> object:
        """A path or a URI fsspec can open (a typo'd scheme or bucket fails here, in one line)."""
        from forestream.registry.open import store_location

        if isinstance(value, str | os.PathLike):
            try:
                return store_location(value)
            except UserError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("s3_endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not re.match(r"^https?://[^/\s]+", value.strip()):
            raise ValueError(f"{value!r} is not an http(s):// URL, e.g. http://minio:9000")
        return value.strip()

    def open_store(self) -> ModelStore:
        """The model store these settings name: a directory, or an object store's URI."""
        from forestream.registry.open import open_store

        return open_store(self.model_store, endpoint_url=self.s3_endpoint_url)

    @field_validator("security_protocol", "sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("compression", "kafka_client", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _coherent_security(self) -> CommonSettings:
        """Half a security configuration fails at the first connection with a baffling client
        error; say here which setting is missing or contradicts the protocol."""
        sasl = self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")
        tls = self.security_protocol in ("SSL", "SASL_SSL")
        p = self.security_protocol
        if sasl:
            if self.sasl_mechanism is None:
                raise ValueError(f"FORESTREAM_SASL_MECHANISM is required with {p}")
            if not self.sasl_username:
                raise ValueError(f"FORESTREAM_SASL_USERNAME is required with {p}")
            if self.sasl_password is not None and self.sasl_password_file is not None:
                raise ValueError(
                    "give FORESTREAM_SASL_PASSWORD or FORESTREAM_SASL_PASSWORD_FILE, not both"
                )
            if self.sasl_password_file is not None:
                self.sasl_password = SecretStr(_read_secret(self.sasl_password_file))
            if self.sasl_password is None:
                raise ValueError(
                    f"FORESTREAM_SASL_PASSWORD or FORESTREAM_SASL_PASSWORD_FILE is required "
                    f"with {p}"
                )
        else:
            given = [
                name
                for name in (
                    "sasl_mechanism",
                    "sasl_username",
                    "sasl_password",
                    "sasl_password_file",
                )
                if getattr(self, name) is not None
            ]
            if given:
                raise ValueError(
                    f"FORESTREAM_{given[0].upper()} is set but FORESTREAM_SECURITY_PROTOCOL={p} "
                    "uses no SASL (SASL_SSL or SASL_PLAINTEXT do)"
                )
        files = {"ssl_cafile": self.ssl_cafile, "ssl_certfile": self.ssl_certfile,
                 "ssl_keyfile": self.ssl_keyfile}  # fmt: skip
        if not tls:
            given = [name for name, path in files.items() if path is not None]
            if given or self.ssl_key_password is not None:
                name = given[0] if given else "ssl_key_password"
                raise ValueError(
                    f"FORESTREAM_{name.upper()} is set but FORESTREAM_SECURITY_PROTOCOL={p} "
                    "uses no TLS (SSL or SASL_SSL do)"
                )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError(
                "mutual TLS needs both FORESTREAM_SSL_CERTFILE and FORESTREAM_SSL_KEYFILE"
            )
        for name, path in files.items():
            if path is not None and not path.is_file():
                raise ValueError(f"FORESTREAM_{name.upper()}={path} is not a readable file")
        return self

    def kafka(self) -> KafkaConnection:
        """What every Kafka client of this command is built from (``forestream.edge.factory``)."""
        same = {
            f.name: getattr(self, f.name) for f in fields(KafkaConnection) if f.name != "bootstrap"
        }
        return KafkaConnection(bootstrap=self.bootstrap_servers, **same)

    @field_validator(
        "input_topic",
        "output_topic",
        "dlq_topic",
        "models_topic",
        "labels_topic",
        "monitoring_topic",
        "shadow_topic",
    )
    @classmethod
    def _legal_topic(cls, name: str | None) -> str | None:
        problem = None if name is None else illegal_topic_name(name)
        if problem is not None:
            raise ValueError(problem)
        return name

    def shadow_topic_or_default(self) -> str:
        return self.shadow_topic or f"{self.output_topic}.shadow"

    def check_distinct_topics(self) -> None:
        """One topic in two roles (say input and output) would feed a worker its own output.

        Called by the commands that use every role (worker, ``topics create``); a replay may
        well read what is the DLQ topic of the live system.
        """
        roles: dict[str, str] = {}
        for role in ("input", "output", "dlq", "models", "labels", "monitoring", "shadow"):
            name = (
                self.shadow_topic_or_default()
                if role == "shadow"
                else getattr(self, f"{role}_topic")
            )
            if name in roles:
                raise UserError(
                    f"invalid settings: {roles[name]} and {role} topics are both {name!r}"
                )
            roles[name] = role

    @field_validator("bootstrap_servers")
    @classmethod
    def _some_address(cls, value: str) -> str:
        """Parsed the way the Kafka client will parse it (scheme, IPv6, default port 9092)."""
        if not broker_addresses(value):
            raise ValueError(f"{value!r} is not a list of broker addresses (host[:port],...)")
        return value.strip()


Guarantee = Literal["at-least-once", "exactly-once"]


class GuaranteeSettings(CommonSettings):
    """The delivery guarantee of a command that scores what it reads into topics (``worker``,
    ``replay``): ``FORESTREAM_GUARANTEE`` / ``--guarantee`` for both."""

    guarantee: Guarantee = "at-least-once"
    """``exactly-once``: each batch's predictions, dead letters and input offsets are
    committed in one Kafka transaction (readers with ``read_committed`` see every input once);
    ``at-least-once``: offsets are recorded after the outputs are acknowledged (a crash
    re-reads, downstream may see a duplicate)."""
    transaction_timeout_ms: int = Field(default=10_000, ge=1_000, le=900_000)
    """Exactly-once: the coordinator aborts a transaction left open this long (a process that
    died mid-batch): until then ``read_committed`` readers of its partitions wait."""

    @property
    def exactly_once(self) -> bool:
        return self.guarantee == "exactly-once"


class SchemaRegistrySettings(BaseSettings):
    """How to reach a Schema Registry (Confluent's REST API, or Apicurio's
    ``/apis/ccompat/v7``): mixed into ``worker`` (writer schemas by id) and ``models
    register-schema`` (the model's contract). Auth is env only, as the Kafka security is."""

    model_config = SettingsConfigDict(env_prefix="FORESTREAM_", extra="ignore")

    schema_registry_url: str | None = None
    """The registry's base URL, e.g. ``http://127.0.0.1:8081`` or an Apicurio
    ``.../apis/ccompat/v7`` (``forestream registry start`` prints a local one)."""
    schema_registry_username: str | None = None
    """Basic auth for the registry."""
    schema_registry_password: SecretStr | None = None
    schema_registry_cafile: Path | None = None
    """The CA that signed an ``https://`` registry's certificate (unset: the system's)."""

    @field_validator("schema_registry_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _coherent_schema_registry(self) -> SchemaRegistrySettings:
        url = self.schema_registry_url
        if url is not None and not re.match(r"^https?://[^/\s]+", url.strip()):
            raise ValueError(
                f"FORESTREAM_SCHEMA_REGISTRY_URL={url!r} is not an http(s):// URL, "
                "e.g. http://127.0.0.1:8081"
            )
        if self.schema_registry_password is not None and not self.schema_registry_username:
            raise ValueError(
                "FORESTREAM_SCHEMA_REGISTRY_PASSWORD is set without "
                "FORESTREAM_SCHEMA_REGISTRY_USERNAME"
            )
        cafile = self.schema_registry_cafile
        if cafile is not None and not cafile.is_file():
            raise ValueError(f"FORESTREAM_SCHEMA_REGISTRY_CAFILE={cafile} is not a readable file")
        return self

    def schema_registry(self) -> SchemaRegistryAccess:
        """The registry these settings name; a missing URL is the user's to fix, in one line."""
        from forestream.edge.schema_registry import SchemaRegistryAccess

        if not self.schema_registry_url:
            raise UserError(
                "no Schema Registry: set FORESTREAM_SCHEMA_REGISTRY_URL "
                "(`forestream registry start` prints a local one)"
            )
        return SchemaRegistryAccess(
            self.schema_registry_url.strip(),
            username=self.schema_registry_username,
            password=self.schema_registry_password,
            cafile=self.schema_registry_cafile,
        )


def _read_secret(path: Path) -> str:
    """A mounted secret: the whole file, without the trailing newline editors and
    ``kubectl create secret --from-file`` leave."""
    try:
        secret = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read FORESTREAM_SASL_PASSWORD_FILE={path}: {exc}") from None
    if not secret:
        raise ValueError(f"FORESTREAM_SASL_PASSWORD_FILE={path} is empty")
    return secret


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S], **flags: Any) -> S:
    """Build settings from env, with every flag the user actually gave (not None) on top."""
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return cls(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        if not where:  # a check across settings (e.g. two roles given one topic)
            raise UserError(f"invalid settings: {message}") from None
        raise UserError(f"invalid setting {where}: {message}") from None


ContractFormat = Literal["avro", "json-schema"]


class ContractSettings(SchemaRegistrySettings):
    """``train --register-schema`` and ``models register-schema``: the registry, and the
    format the model's contract is written in."""

    contract_format: ContractFormat = "avro"
    """The schema type of the contract: ``avro`` (an Avro record) or ``json-schema`` (a JSON
    Schema object), the one the input topic's producers serialize with."""

    @field_validator("contract_format", mode="before")
    @classmethod
    def _lower_format(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value
