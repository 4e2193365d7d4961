"""Typer option types shared by every command, so flags and env twins are named one way."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

BootstrapOpt = Annotated[
    str | None,
    typer.Option(
        "--bootstrap-servers",
        help="Kafka bootstrap servers [env FORESTREAM_BOOTSTRAP_SERVERS; default: the local "
        "broker if running, else 127.0.0.1:9092]",
        show_default=False,
    ),
]
InputTopicOpt = Annotated[
    str | None,
    typer.Option(
        "--input-topic",
        help="feature records topic [env FORESTREAM_INPUT_TOPIC]",
        show_default=False,
    ),
]
OutputTopicOpt = Annotated[
    str | None,
    typer.Option(
        "--output-topic", help="predictions topic [env FORESTREAM_OUTPUT_TOPIC]", show_default=False
    ),
]
DlqTopicOpt = Annotated[
    str | None,
    typer.Option(
        "--dlq-topic", help="dead-letter topic [env FORESTREAM_DLQ_TOPIC]", show_default=False
    ),
]
ShadowTopicOpt = Annotated[
    str | None,
    typer.Option(
        "--shadow-topic",
        help="a shadow candidate's predictions [env FORESTREAM_SHADOW_TOPIC; default: "
        "<output topic>.shadow]",
        show_default=False,
    ),
]
ModelsTopicOpt = Annotated[
    str | None,
    typer.Option(
        "--models-topic",
        help="compacted models topic [env FORESTREAM_MODELS_TOPIC]",
        show_default=False,
    ),
]
LabelsTopicOpt = Annotated[
    str | None,
    typer.Option(
        "--labels-topic", help="late labels topic [env FORESTREAM_LABELS_TOPIC]", show_default=False
    ),
]
MonitoringTopicOpt = Annotated[
    str | None,
    typer.Option(
        "--monitoring-topic",
        help="drift/monitoring reports topic [env FORESTREAM_MONITORING_TOPIC]",
        show_default=False,
    ),
]
StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="model store: a directory or a URI such as s3://bucket/prefix "
        "[env FORESTREAM_MODEL_STORE]",
        show_default=False,
    ),
]
ModelNameOpt = Annotated[
    str | None,
    typer.Option("--name", help="model name [env FORESTREAM_MODEL_NAME]", show_default=False),
]
LogFormatOpt = Annotated[
    str | None,
    typer.Option(
        "--log-format", help="auto | json | console [env FORESTREAM_LOG_FORMAT]", show_default=False
    ),
]
VerifyKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--verify-key",
        help="Ed25519 public key (verify.pub) that model signatures are checked with "
        "[env FORESTREAM_VERIFY_KEY_FILE]",
        show_default=False,
    ),
]
AllowUnsignedOpt = Annotated[
    bool | None,
    typer.Option(
        "--allow-unsigned",
        help="accept versions without an Ed25519 signature (a bad signature is still refused "
        "when a verify key is set) [env FORESTREAM_ALLOW_UNSIGNED; default: refused]",
        show_default=False,
    ),
]
AllowVersionMismatchOpt = Annotated[
    bool | None,
    typer.Option(
        "--allow-version-mismatch",
        help="load models pickled by another scikit-learn major.minor "
        "[env FORESTREAM_ALLOW_VERSION_MISMATCH; default: refused]",
        show_default=False,
    ),
]
SigningKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--signing-key",
        help="Ed25519 private key (signing.key) the new version is signed with "
        "[env FORESTREAM_SIGNING_KEY_FILE]",
        show_default=False,
    ),
]
SchemaRegistryUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--schema-registry-url",
        help="the Schema Registry (Confluent API, or Apicurio's .../apis/ccompat/v7; "
        "`forestream registry start` prints a local one; auth and CA are env only) "
        "[env FORESTREAM_SCHEMA_REGISTRY_URL]",
        show_default=False,
    ),
]
SchemaRegistryWaitOpt = Annotated[
    float | None,
    typer.Option(
        "--schema-registry-wait-s",
        help="during a registry outage, how long records with a schema id never fetched are "
        "held before the DLQ (registry_unavailable); ids fetched before keep scoring "
        "[env FORESTREAM_SCHEMA_REGISTRY_WAIT_S; default 60, at most 240]",
        show_default=False,
    ),
]
