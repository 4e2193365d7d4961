"""Write docs/reference/settings.md from the settings classes: every ``FORESTREAM_*`` setting.

The names, defaults, the commands that load each setting and the flags that set it come from
the code (the pydantic-settings classes, the typer app's help texts); only the one-line
descriptions below are written by hand, and a setting without one fails the generator. Run by
``make docs-build`` beside ``docs/gen_cli_reference.py``, and checked by
``tests/unit/test_docs.py``: a setting added, renamed or given another default without
regenerating the page fails the unit tests. ``--check`` exits 1 when the committed page
differs from what this script would write.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "reference" / "settings.md"
PREFIX = "FORESTREAM_"

SETTINGS_CLASSES = (
    "CommonSettings",
    "GuaranteeSettings",
    "WireFormatSettings",
    "WorkerSettings",
    "ReplaySettings",
    "ProducerSettings",
    "MonitorSettings",
    "EvaluatorSettings",
    "TrustSettings",
    "SigningSettings",
    "_TrainSettings",
    "_RegistrySettings",
    "_ShadowSettings",
    "SchemaRegistrySettings",
    "ContractSettings",
    "_SchemaSettings",
)
"""Every settings class, by name: found among the subclasses of ``CommonSettings`` once the
command tree and the components' settings modules are imported (not by module path, so a
class that moves between modules is still found)."""

COMMAND_SETTINGS: dict[str, str] = {
    "train": "_TrainSettings",
    "models list": "CommonSettings",
    "models show": "CommonSettings",
    "models promote": "_RegistrySettings",
    "models rollback": "_RegistrySettings",
    "models shadow": "_ShadowSettings",
    "models register-schema": "_SchemaSettings",
    "demo": "CommonSettings",
    "worker": "WorkerSettings",
    "replay": "ReplaySettings",
    "produce": "ProducerSettings",
    "topics create": "ProducerSettings",
    "monitor": "MonitorSettings",
    "evaluate": "EvaluatorSettings",
}
"""Which class each command loads its settings from (``load_settings`` in its module).
``kafka start|stop|status``, ``registry start|stop|status``, ``keys create`` and ``demo-data``
load none. The demo also passes its environment on to the commands it starts."""

SECTIONS: list[tuple[str, str, str]] = [
    ("CommonSettings", "Shared by every command", "the broker, the topics, the model store"),
    ("GuaranteeSettings", "Delivery guarantee", "`worker`, `replay` and `evaluate`"),
    (
        "WireFormatSettings",
        "Wire formats",
        "`worker` and `replay` ([wire contracts](../wire.md#schema-registry-formats))",
    ),
    ("WorkerSettings", "`worker`", ""),
    ("ReplaySettings", "`replay`", ""),
    ("ProducerSettings", "`produce` and `topics create`", ""),
    ("MonitorSettings", "`monitor`", ""),
    ("EvaluatorSettings", "`evaluate`", "[the evaluator](../evaluator.md)"),
    ("TrustSettings", "Verifying models", "`worker`, `replay`, `models promote|rollback`"),
    ("SigningSettings", "Signing models", "`train`"),
    (
        "SchemaRegistrySettings",
        "Schema Registry",
        "`worker` and `replay` (`--input-format avro|json-schema|protobuf`, "
        "`--output-format avro`), `produce --format avro`, "
        "`models register-schema`, `train --register-schema`",
    ),
    (
        "ContractSettings",
        "The model's contract",
        "`train --register-schema`, `models register-schema` "
        "([the contract in the registry](../wire.md#the-models-contract-in-the-registry))",
    ),
]

SECURITY = {
    "security_protocol", "sasl_mechanism", "sasl_username", "sasl_password",
    "sasl_password_file", "ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password",
    "ssl_check_hostname",
}  # fmt: skip
"""Listed in a section of their own, as on Connecting to a real cluster."""

DEFAULT_TEXT: dict[str, str] = {
    "bootstrap_servers": "the local broker's address while `forestream kafka start` runs one "
    "(found through `FORESTREAM_KAFKA_DIR`), else `127.0.0.1:9092`",
    "pipeline": "unset: on; always off under exactly-once",
    "transactional_id": "unset: `forestream-<group>-<host>-<worker index>`",
    "metrics_port": "unset: no endpoint",
    "evaluator_metrics_port": "unset: no endpoint",
    "schema_registry_url": "unset",
    "model_cache_dir": "unset: `.forestream/model-cache` when the store is a URI; a local "
    "store is read in place",
    "replication_factor": "unset: the broker's `default.replication.factor`",
    "min_insync_replicas": "unset: the broker's `min.insync.replicas`",
    "ssl_cafile": "unset: the system's trusted CAs",
}
"""Where the bare default (None, a factory) would not say what happens."""

DESCRIPTIONS: dict[str, str] = {
    "verify_key_file": "the Ed25519 public key (`verify.pub` of `forestream keys create`) every "
    "version is checked with before it is unpickled",
    "allow_unsigned": "accept unsigned versions (logged loudly, shown in `/readyz`); a bad "
    "signature is still refused while a key is set",
    "allow_version_mismatch": "serve a version pickled by another scikit-learn major.minor",
    "signing_key_file": "the Ed25519 private key (`signing.key`, mode 0600) `train` signs with",
    "metrics_host": "address `/metrics`, `/healthz`, `/readyz` bind to (loopback unless asked)",
    "bootstrap_servers": "Kafka brokers, `host[:port],...`",
    "input_topic": "feature records, read by workers and `replay`, written by `produce`",
    "output_topic": "predictions, written by workers and read by `evaluate` (`replay` writes "
    "to its own `--output-topic`, never read from this setting)",
    "dlq_topic": "dead letters: the original bytes and a reason (`replay` writes to its own "
    "`--dlq-topic`, by default `<output>.dlq`)",
    "shadow_topic": "a shadow candidate's predictions (`models shadow`), never the served ones, "
    "compared by `evaluate` when it exists; unset: `<output topic>.shadow`",
    "shadow_share": "share of each batch's predicted records a shadow candidate scores, chosen "
    "by a hash of the key (0 < share <= 1)",
    "models_topic": "the registry's events, one partition, compacted",
    "labels_topic": "late labels, read by `evaluate` (and by workers with "
    "`FORESTREAM_FOLLOW_LABELS=true`)",
    "monitoring_topic": "the workers' periodic reports, read by `monitor`, and the "
    "evaluators' count records",
    "model_store": "a directory, or `s3://bucket/prefix` (also `gs://`, `az://`, `file://`)",
    "s3_endpoint_url": "an S3-compatible store (MinIO, Ceph) for `s3://` URIs; unset, botocore "
    "decides (AWS, or its own `AWS_ENDPOINT_URL_S3`)",
    "model_name": "the model served, trained or promoted",
    "log_format": "`auto` (console on a terminal, else JSON), `json` or `console`",
    "security_protocol": "`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`",
    "sasl_mechanism": "`PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`; required with SASL",
    "sasl_username": "the SASL principal; required with SASL",
    "sasl_password": "its password (never printed); give this or the file, not both",
    "sasl_password_file": "a file holding the password (a mounted secret; trailing newlines "
    "ignored, an empty file refused); give this or the password, not both",
    "ssl_cafile": "PEM bundle of the CA(s) that signed the brokers' certificates",
    "ssl_certfile": "client certificate (PEM), for mutual TLS; needs the key",
    "ssl_keyfile": "its private key (PEM)",
    "ssl_key_password": "the key's password, if it has one (never printed)",
    "ssl_check_hostname": "the broker's certificate must name the address used",
    "compression": "codec of everything forestream writes: `none`, `gzip`, `snappy`, `lz4`, `zstd`",
    "kafka_client": "`kafka-python` (pure Python) or `confluent` (librdkafka), for every client "
    "of the command",
    "replication_factor": "replicas per partition of the topics forestream creates",
    "min_insync_replicas": "`min.insync.replicas` of the topics forestream creates",
    "guarantee": "`at-least-once` or `exactly-once` (one Kafka transaction per batch)",
    "transaction_timeout_ms": "exactly-once: the coordinator aborts a transaction left open "
    "this long (1,000 to 900,000)",
    "group": "the workers' consumer group",
    "max_batch": "a micro-batch closes at this many records...",
    "max_wait_ms": "...or this many ms after its first record",
    "adaptive_window": "close a small batch as soon as the input is drained instead of "
    "waiting out `max_wait_ms` (`false`: the fixed window)",
    "pipeline": "score the next batch while the previous one's outputs are acknowledged",
    "max_records": "exit 0 after this many input records (demos, tests)",
    "forest_engine": "`auto`: the compiled forest engine once it passed the parity gate "
    "(bit-identical); `sklearn`: sklearn's trees only, numba never imported (~90 MB less peak RSS)",
    "max_record_bytes": "larger input values are dead-lettered as `too_large` unparsed (1 MiB)",
    "summary_interval_s": "seconds between the throughput summaries in the log",
    "metrics_port": "serve `/metrics`, `/healthz`, `/readyz` here (plus the worker index: set by "
    "`--processes`, or claimed by an exactly-once worker)",
    "model_wait_log_s": "while no promoted model is known, say so at most this often (s)",
    "worker_index": "tells processes on one host apart (transactional id, metrics port); "
    "`--processes` sets it for its children; unset, an exactly-once worker without a "
    "transactional id claims the lowest index free on this host",
    "index_lock_dir": "where exactly-once workers lock the worker indexes they claim "
    "(`/tmp/forestream-<uid>`); mount one into containers that share a hostname",
    "drift_window": "records in the window drift, latency and online accuracy are computed over",
    "drift_threshold": "PSI at which a feature is flagged as drifting",
    "drift_min_records": "values of a feature in the window before it can be flagged",
    "fleet_window_s": "seconds per window of the bin and predicted-class counts each report "
    "carries for fleet drift (aligned on the epoch: 1 to 86,400)",
    "report_interval_s": "seconds between reports to the monitoring topic",
    "follow_labels": "read every labels partition for this worker's own online accuracy; off "
    "by default: `evaluate` reads each label once for the fleet",
    "session_timeout_ms": "a worker silent this long leaves the group (6,000 to 300,000)",
    "rebuild_without_broker_s": "confluent client: once the group consumer's client has heard "
    "from no broker this long (its statistics say so), a new one replaces it and rejoins; what "
    "the old one held uncommitted is re-read; the model follower and labels reader alike "
    "(5 to 3,600; kafka-python: never)",
    "model_cache_dir": "keep loaded artifacts here by sha256: restarts and rollbacks skip the "
    "store",
    "transactional_id": "exactly-once: this worker's `transactional.id`, unique among live workers",
    "value_format": "`json`, or `avro`: the Confluent wire format with the latest schema of "
    "`<input topic>-value` (`models register-schema` puts the model's contract there); "
    "`demo` reads it too, as its `--format`",
    "input_format": "`json`, or the Confluent wire format through a Schema Registry: `avro`, "
    "`json-schema`, `protobuf` ([wire contracts](../wire.md#schema-registry-formats))",
    "contract_format": "`avro` (an Avro record) or `json-schema` (an open JSON Schema object): "
    "the schema type the input topic's producers serialize with",
    "output_format": "predictions as `json`, or `avro` in the Confluent wire format, the "
    "schema registered at start as `<output topic>-value` "
    "([wire contracts](../wire.md#avro-predictions)); dead letters keep the input's bytes",
    "schema_registry_url": "the Schema Registry: writer schemas are fetched from it by id, "
    "contracts registered to it (Confluent API; Apicurio's `/apis/ccompat/v7`)",
    "schema_registry_username": "basic auth for the registry (env only)",
    "schema_registry_password": "its password (env only; never printed)",
    "schema_registry_cafile": "the CA of an `https://` registry (unset: the system's)",
    "schema_registry_wait_s": "a batch holding a schema id never fetched waits this long for "
    "an unreachable registry before such records go to the DLQ (`registry_unavailable`); "
    "0 to 240",
    "replay_max_batch": "records per replay batch",
    "partitions": "partitions of the topics `produce` and `topics create` create (input, "
    "output, DLQ, labels)",
    "rate": "records/s, 0 = as fast as possible",
    "malformed_share": "share of deliberately bad records (0 <= p < 1)",
    "monitor_refresh_s": "seconds between redraws",
    "monitor_backlog": "start this many reports before the end of each partition",
    "monitor_stale_s": "a worker whose newest report is older than this (s) is shown as stale",
    "monitor_horizon_s": "how far back (s) the fleet table sums the counts and window counts",
    "evaluator_group": "the evaluators' consumer group: instances in it share the partitions",
    "evaluator_max_pending": "per partition and side, records waiting for their other half "
    "beyond this many are evicted, oldest first",
    "evaluator_max_wait_s": "a record waits at most this long (s) for its other half, in "
    "record time (the newest timestamp seen on its partition)",
    "evaluation_window_s": "counts are kept per window of this length (s), by the label "
    "record's timestamp",
    "evaluator_publish_interval_s": "seconds between count publishes (each followed by an "
    "offset commit)",
    "evaluator_metrics_port": "the evaluator's Prometheus `/metrics` port",
    "evaluator_promote_policy": "a promotion rule on one line, or a `.toml` policy file adding "
    "a rollback guard: the evaluator then promotes a shadow candidate when it holds "
    "([Promotion by rule](../evaluator.md#promotion-by-rule)); unset: it never promotes",
}

OUTSIDE: list[tuple[str, str, str, str]] = [
    (
        "FORESTREAM_SIGNING_KEY",
        "unset",
        "`models promote`, `models rollback`, `worker`, `replay`",
        "legacy HMAC key: a version signed with it before Ed25519 loads only under "
        "`--allow-unsigned`, and its HMAC is then still checked; nothing signs with it any more",
    ),
    (
        "FORESTREAM_KAFKA_DIR",
        "`.forestream/kafka`",
        "`kafka start\\|stop\\|status` (`--data-dir`), `demo`, and every command's default "
        "`FORESTREAM_BOOTSTRAP_SERVERS`",
        "the local broker's data directory (`--secure`: that path + `-secure`)",
    ),
    (
        "FORESTREAM_CACHE_DIR",
        "`$XDG_CACHE_HOME/forestream`, else `~/.cache/forestream`",
        "`kafka start`, `registry start`, `demo`, `make kafka-jars schema-registry-app`",
        "where the Apache Kafka jars and Apicurio Registry are fetched to, once",
    ),
    (
        "FORESTREAM_SCHEMA_REGISTRY_DIR",
        "`.forestream/schema-registry`",
        "`registry start\\|stop\\|status` (`--data-dir`)",
        "the local Schema Registry's data directory (its schemas, pid, port, log)",
    ),
    (
        "FORESTREAM_WORKER_PROCESSES",
        "(set by `worker --processes K`)",
        "none: informational",
        "the number of worker processes the supervisor runs, given to each child beside "
        "`FORESTREAM_WORKER_INDEX`",
    ),
]
"""Read with ``os.environ`` rather than through a settings class."""

HEADER = """\
# Settings reference

<!-- Generated by docs/gen_settings_reference.py from the settings classes; do not edit.
     Regenerate with `make docs-build` or `python docs/gen_settings_reference.py`. -->

Every `FORESTREAM_*` environment variable forestream reads, its default, the commands that
read it and the flag that sets it where there is one.

- **Precedence**: a flag given on the command line wins over the environment variable, which
  wins over the default. There is no configuration file.
- **Validation**: a command checks every setting of its class (the sections below), so a bad
  value (an illegal topic name, half a security configuration) stops even a command that
  would not use it: one line, exit 2.
- **Commands**: *every command* below means `train`, `models list|show|promote|rollback`,
  `worker`, `replay`, `produce`, `topics create`, `monitor`, `evaluate` and `demo`; `kafka
  start|stop|status`, `keys create` and `demo-data` read none of these settings.
- **`FORESTREAM_SASL_PASSWORD` and `FORESTREAM_SASL_PASSWORD_FILE`**: neither wins; setting
  both is refused (`give FORESTREAM_SASL_PASSWORD or FORESTREAM_SASL_PASSWORD_FILE, not
  both`, exit 2), and so is either one with a protocol without SASL. With `SASL_SSL` or
  `SASL_PLAINTEXT` exactly one of them is required.

How the security settings fit together is on
[Connecting to a real cluster](../connecting.md#security); the words are in the
[glossary](../glossary.md).
"""


def _classes() -> dict[str, Any]:
    importlib.import_module("forestream.cli")  # registers every command (their modules too)
    for module in (
        "forestream.worker.settings",
        "forestream.worker.evaluator.settings",
        "forestream.producer.settings",
    ):
        importlib.import_module(module)  # imported lazily by their commands
    from forestream.registry.signing import SigningSettings, TrustSettings
    from forestream.runtime.settings import CommonSettings, SchemaRegistrySettings

    found: dict[str, Any] = {}
    todo: list[Any] = [CommonSettings, TrustSettings, SigningSettings, SchemaRegistrySettings]
    while todo:
        cls = todo.pop()
        found.setdefault(cls.__name__, cls)
        todo += cls.__subclasses__()
    missing = [name for name in SETTINGS_CLASSES if name not in found]
    if missing:
        raise SystemExit(f"settings classes not found: {missing}")
    return {name: found[name] for name in SETTINGS_CLASSES}


def env_name(field: str) -> str:
    return PREFIX + field.upper()


def own_fields(cls: Any, classes: dict[str, Any]) -> list[str]:
    """Fields a class adds to (or redefines against) the settings class it extends."""
    parents = [c for c in classes.values() if c is not cls and issubclass(cls, c)]
    inherited: set[str] = set()
    for parent in parents:
        inherited |= set(parent.model_fields)
    return [name for name in cls.model_fields if name not in inherited]


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    if isinstance(value, int):
        return f"`{value}`"
    return f"`{value}`"


def default_of(cls: Any, name: str) -> str:
    """The default one class gives a field, as the page shows it."""
    if name in DEFAULT_TEXT:
        return DEFAULT_TEXT[name]
    info: FieldInfo = cls.model_fields[name]
    if info.default is PydanticUndefined or info.default_factory is not None:
        raise SystemExit(f"{cls.__name__}.{name}: add its default to DEFAULT_TEXT")
    if info.default is None:
        return "unset"
    return _value(info.default)


def commands_loading(field: str, classes: dict[str, Any]) -> list[str]:
    return [cmd for cmd, cls in COMMAND_SETTINGS.items() if field in classes[cls].model_fields]


def _settings_kwargs(function: Any) -> dict[str, str]:
    """``{parameter: field}`` for the flags a command function hands to ``load_settings``
    (or the training commands' ``_settings``) as ``field=parameter``."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in (
            "load_settings",
            "_settings",
        ):
            for kw in node.keywords:
                if kw.arg is not None and isinstance(kw.value, ast.Name):
                    found[kw.value.id] = kw.arg
    return found


def flags_by_env() -> dict[str, set[str]]:
    """``FORESTREAM_X`` -> the flags that set it: read from each command's own source, where
    its flags are handed to the settings class (a flag wins over the variable)."""
    import typer

    from forestream.cli import app

    found: dict[str, set[str]] = {}

    def walk(command: Any) -> None:
        callback = getattr(command, "callback", None)
        function = getattr(callback, "__wrapped__", callback)
        if function is not None:
            to_field = _settings_kwargs(function)
            for param in getattr(command, "params", []):
                if param.name in to_field:
                    flag = "/".join(f"`{o}`" for o in (*param.opts, *param.secondary_opts))
                    found.setdefault(env_name(to_field[param.name]), set()).add(flag)
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(app))
    return found


def _commands_cell(field: str, classes: dict[str, Any]) -> str:
    cmds = commands_loading(field, classes)
    if set(cmds) == set(COMMAND_SETTINGS):
        return "every command"
    return ", ".join(f"`{c}`" for c in cmds)


def _row(field: str, cls: Any, classes: dict[str, Any], flags: dict[str, set[str]]) -> str:
    env = env_name(field)
    if field not in DESCRIPTIONS:
        raise SystemExit(f"{cls.__name__}.{field}: add a description to DESCRIPTIONS")
    default = default_of(cls, field)
    overrides = [
        f"`{cmd}`: {default_of(classes[c], field)}"
        for cmd, c in COMMAND_SETTINGS.items()
        if field in classes[c].model_fields and default_of(classes[c], field) != default
    ]
    if overrides:
        default += " (" + "; ".join(overrides) + ")"
    flag = ", ".join(sorted(flags.get(env, ()))) or "–"
    return (
        f"| `{env}` | {default} | {flag} | {_commands_cell(field, classes)} | "
        f"{DESCRIPTIONS[field]} |"
    )


TABLE_HEAD = ["| setting | default | flag | read by | what |", "|---|---|---|---|---|"]


def all_env_names() -> list[str]:
    """Every variable the page lists: the settings classes' fields and the others."""
    classes = _classes()
    names = {env_name(f) for cls in classes.values() for f in cls.model_fields}
    return sorted(names | {row[0] for row in OUTSIDE})


def render() -> str:
    classes = _classes()
    flags = flags_by_env()
    parts = [HEADER]
    seen: set[str] = set()  # a field two unrelated classes define is listed once
    for cls_name, title, note in SECTIONS:
        cls = classes[cls_name]
        fields = [f for f in own_fields(cls, classes) if f not in SECURITY and f not in seen]
        seen |= set(fields)
        parts.append(f"## {title}\n")
        if note:
            parts.append(f"{note[0].upper()}{note[1:]}.\n")
        parts += [*TABLE_HEAD, *(_row(f, cls, classes, flags) for f in fields), ""]
        if cls_name == "CommonSettings":
            parts.append("## Security (environment only)\n")
            parts.append(
                "Environment only, as deployment configuration is (a password in a flag would "
                "show in `ps`); the same for every Kafka client of every command.\n"
            )
            security = [f for f in cls.model_fields if f in SECURITY]
            parts += [*TABLE_HEAD, *(_row(f, cls, classes, flags) for f in security), ""]
    parts.append("## Read outside the settings classes\n")
    parts += [
        "| setting | default | read by | what |",
        "|---|---|---|---|",
        *(f"| `{name}` | {default} | {by} | {what} |" for name, default, by, what in OUTSIDE),
    ]
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    parser.add_argument("--output", type=Path, default=PAGE, help=f"[{PAGE}]")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run python docs/gen_settings_reference.py",
                  file=sys.stderr)  # fmt: skip
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"written {args.output}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
