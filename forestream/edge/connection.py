"""How every client of every command reaches Kafka: address, security, compression, topic layout.

One value, built once from settings (:meth:`forestream.runtime.settings.CommonSettings.kafka`) and
handed
to the client factory in :mod:`forestream.edge.factory`; nothing else builds a Kafka client, so a
secured cluster is reached the same way by the worker, its model follower and labels reader,
replay, the producer, the monitor, the admin commands and the trainer's publisher.

Pure data: importing this module imports no Kafka client. Secrets are :class:`SecretStr`, so
neither ``repr`` nor a log line nor an error message can show them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr

from forestream.edge.interface import KafkaClient

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
Compression = Literal["none", "gzip", "snappy", "lz4", "zstd"]

SECURITY_PROTOCOLS: tuple[str, ...] = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS: tuple[str, ...] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
COMPRESSIONS: tuple[str, ...] = ("none", "gzip", "snappy", "lz4", "zstd")
DEFAULT_COMPRESSION: Compression = "lz4"
"""Outputs are small JSON records of a few repeated keys: lz4 shrinks them several-fold for the
least CPU of the codecs (``bench/codecs.py``); the worker is CPU-bound, the broker's disk and
network are what compression saves."""

SECURITY_ENV: tuple[str, ...] = tuple(
    f"FORESTREAM_{name}"
    for name in (
        "SECURITY_PROTOCOL", "SASL_MECHANISM", "SASL_USERNAME", "SASL_PASSWORD",
        "SASL_PASSWORD_FILE", "SSL_CAFILE", "SSL_CERTFILE", "SSL_KEYFILE", "SSL_KEY_PASSWORD",
        "SSL_CHECK_HOSTNAME",
    )
)  # fmt: skip
"""The settings that say how to reach a secured cluster (env only)."""


@dataclass(frozen=True)
class KafkaConnection:
    """Where the cluster is and how to talk to it; ``PLAINTEXT`` with defaults (local broker)."""

    bootstrap: str
    kafka_client: KafkaClient = "kafka-python"
    """Which client library every component talks to Kafka with
    (:mod:`forestream.edge.interface`)."""
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr | None = None
    ssl_check_hostname: bool = True
    compression: Compression = DEFAULT_COMPRESSION
    replication_factor: int | None = None
    """Of topics this project creates; None means the broker's ``default.replication.factor``."""
    min_insync_replicas: int | None = None
    """``min.insync.replicas`` of topics this project creates; None keeps the broker's."""

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def describe(self) -> str:
        """For messages: the address and how we authenticate, never a secret."""
        parts = [self.bootstrap, self.security_protocol]
        if self.uses_sasl:
            parts.append(f"{self.sasl_mechanism} as {self.sasl_username!r}")
        if self.ssl_certfile is not None:
            parts.append(f"client certificate {self.ssl_certfile}")
        return " ".join(parts)

    def kafka_python_config(self) -> dict[str, Any]:
        """The security part of a kafka-python client's configuration."""
        config: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.security_protocol,
        }
        if self.uses_sasl:
            config["sasl_mechanism"] = self.sasl_mechanism
            config["sasl_plain_username"] = self.sasl_username
            config["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        if self.uses_tls:
            config["ssl_check_hostname"] = self.ssl_check_hostname
            if self.ssl_cafile is not None:
                config["ssl_cafile"] = str(self.ssl_cafile)
            if self.ssl_certfile is not None:
                config["ssl_certfile"] = str(self.ssl_certfile)
            if self.ssl_keyfile is not None:
                config["ssl_keyfile"] = str(self.ssl_keyfile)
            if self.ssl_key_password is not None:
                config["ssl_password"] = self.ssl_key_password.get_secret_value()
        return config

    def librdkafka_config(self) -> dict[str, Any]:
        """The security part of a librdkafka (``confluent-kafka``) client's configuration."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": self.security_protocol,
        }
        if self.uses_sasl:
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = self.sasl_username
            if self.sasl_password is not None:
                config["sasl.password"] = self.sasl_password.get_secret_value()
        if self.uses_tls:
            config["ssl.endpoint.identification.algorithm"] = (
                "https" if self.ssl_check_hostname else "none"
            )
            if self.ssl_cafile is not None:
                config["ssl.ca.location"] = str(self.ssl_cafile)
            if self.ssl_certfile is not None:
                config["ssl.certificate.location"] = str(self.ssl_certfile)
            if self.ssl_keyfile is not None:
                config["ssl.key.location"] = str(self.ssl_keyfile)
            if self.ssl_key_password is not None:
                config["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        return config

    def topic_configs(self) -> dict[str, str]:
        """Configs every topic this project creates gets on top of its own."""
        if self.min_insync_replicas is None:
            return {}
        return {"min.insync.replicas": str(self.min_insync_replicas)}
