"""The ``forestream`` command tree. Thin: it parses flags and dispatches to the components."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from forestream.errors import UserError
from forestream.exit_codes import USER_ERROR, exit_code_for
from forestream.runtime.settings import kafka_dir

app = typer.Typer(
    help="Streaming RandomForest inference on Apache Kafka.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts say "[env FORESTREAM_X]": text, not rich markup
)
kafka_app = typer.Typer(
    help="Run a real local Apache Kafka broker (KRaft, one node).", no_args_is_help=True
)
app.add_typer(kafka_app, name="kafka")
registry_app = typer.Typer(
    help="Run a real local Schema Registry (Apicurio Registry, Confluent-compatible API).",
    no_args_is_help=True,
)
app.add_typer(registry_app, name="registry")
keys_app = typer.Typer(
    help="Ed25519 keys that model versions are signed and verified with.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")

DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="broker data directory [env FORESTREAM_KAFKA_DIR; default .forestream/kafka, "
        "or that path + '-secure' with --secure]",
    ),
]
SecureOpt = Annotated[
    bool,
    typer.Option(
        "--secure",
        help="secured broker: SASL_SSL (PLAIN, SCRAM) and mutual-TLS listeners, ACLs enforced, "
        "no plaintext port",
    ),
]


def _data_dir(given: Path | None, secure: bool) -> Path:
    """A secured broker gets its own default dir: a data dir keeps the mode it was made in."""
    if given is not None:
        return given
    plain = kafka_dir()
    return plain.with_name(plain.name + "-secure") if secure else plain


@kafka_app.command("start")
def kafka_start(
    port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="client port: PLAINTEXT, or SASL_SSL with --secure (default: a free one, "
            "remembered)",
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    secure: SecureOpt = False,
) -> None:
    """Start the broker (idempotent) and print its bootstrap address once it answers.

    With --secure, `export` lines follow for a SASL_SSL + SCRAM-SHA-512 client; they name the
    password file, never the password.
    """
    from forestream.local import kafka as local_kafka

    info = local_kafka.start(_data_dir(data_dir, secure), port=port, secure=secure)
    typer.echo(info.address)
    if isinstance(info, local_kafka.SecureBrokerInfo):
        for line in info.export_lines():
            typer.echo(line)


@kafka_app.command("stop")
def kafka_stop(data_dir: DataDirOpt = None, secure: SecureOpt = False) -> None:
    """Stop the broker this data directory started (and nothing else)."""
    from forestream.local import kafka as local_kafka

    info = local_kafka.stop(_data_dir(data_dir, secure))
    typer.echo(f"stopped broker on {info.address}" if info else "not running")


@kafka_app.command("status")
def kafka_status(data_dir: DataDirOpt = None, secure: SecureOpt = False) -> None:
    """Say whether the local broker runs, and where (exit 1 when stopped)."""
    from forestream.local import kafka as local_kafka

    info = local_kafka.status(_data_dir(data_dir, secure))
    if info is None:
        typer.echo("stopped")
        raise typer.Exit(1)
    where = info.address
    if isinstance(info, local_kafka.SecureBrokerInfo):
        where = f"{info.sasl_ssl_address} SASL_SSL, {info.mtls_address} mutual TLS"
    typer.echo(f"running {where} (pid {info.pid}, Kafka {local_kafka.KAFKA_VERSION})")


RegistryDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="registry data directory (schemas, log) [env FORESTREAM_SCHEMA_REGISTRY_DIR; "
        "default .forestream/schema-registry]",
    ),
]


@registry_app.command("start")
def registry_start(
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="HTTP port (default: a free one, remembered)"),
    ] = None,
    data_dir: RegistryDirOpt = None,
) -> None:
    """Start the registry (idempotent; schemas kept in the data directory) and print its
    Confluent-compatible URL once it is ready, then the `export` line a worker needs."""
    from forestream.local import schema_registry

    info = schema_registry.start(data_dir or schema_registry.registry_dir(), port=port)
    typer.echo(info.url)
    typer.echo(f"export FORESTREAM_SCHEMA_REGISTRY_URL={info.url}")


@registry_app.command("stop")
def registry_stop(data_dir: RegistryDirOpt = None) -> None:
    """Stop the registry this data directory started (and nothing else); its schemas stay."""
    from forestream.local import schema_registry

    info = schema_registry.stop(data_dir or schema_registry.registry_dir())
    typer.echo(f"stopped registry on {info.url}" if info else "not running")


@registry_app.command("status")
def registry_status(data_dir: RegistryDirOpt = None) -> None:
    """Say whether the local registry runs, and where (exit 1 when stopped)."""
    from forestream.local import schema_registry

    info = schema_registry.status(data_dir or schema_registry.registry_dir())
    if info is None:
        typer.echo("stopped")
        raise typer.Exit(1)
    version = schema_registry.APICURIO_VERSION
    typer.echo(f"running {info.url} (pid {info.pid}, Apicurio Registry {version})")


@keys_app.command("create")
def keys_create(
    directory: Annotated[
        Path,
        typer.Option(
            "--dir", help="where to write signing.key (mode 0600) and verify.pub", show_default=True
        ),
    ] = Path(".forestream/keys"),
) -> None:
    """Make a key pair: the trainer signs with signing.key, workers verify with verify.pub.

    Refuses to overwrite an existing key: versions signed with it would stop loading.
    """
    from forestream.registry.signing import Signer, create_key_pair

    private, public = create_key_pair(directory)
    typer.echo(f"signing key (trainer only, keep secret): {private}")
    typer.echo(f"verify key (workers, replay, models promote): {public}")
    typer.echo(f"key id {Signer.from_file(private).key_id}")
    typer.echo(
        f"export FORESTREAM_SIGNING_KEY_FILE={private.resolve()} "
        f"FORESTREAM_VERIFY_KEY_FILE={public.resolve()}"
    )


def _register_components() -> None:
    """Each component adds its own commands; heavy imports wait until a command runs."""
    from forestream import demo, monitor
    from forestream.producer import cli as producer_cli
    from forestream.training import cli as training_cli
    from forestream.worker import cli as worker_cli
    from forestream.worker import replay
    from forestream.worker.evaluator import cli as evaluator_cli

    for module in (training_cli, worker_cli, replay, evaluator_cli, producer_cli, demo, monitor):
        module.register(app)


_register_components()


def main() -> None:
    """Entry point: a user mistake is one line on stderr and exit 2, never a traceback."""
    try:
        rc = app(standalone_mode=False)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exit_code_for(exc))
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except BrokenPipeError:  # `forestream demo-data | head`: the reader left, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except OSError as exc:  # a path the user gave (store, work dir, data file) cannot be used
        where = f" {exc.filename}" if exc.filename else ""
        typer.echo(f"error: cannot use{where}: {exc.strerror or exc}", err=True)
        sys.exit(USER_ERROR)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        # usage errors (unknown flag, bad value) from typer's bundled click: duck-typed, because
        # typer >= 0.29 vendors click as ``typer._click`` and a plain ``click`` may be absent
        show = getattr(exc, "show", None)
        if callable(show) and hasattr(exc, "exit_code"):
            show()
            sys.exit(USER_ERROR)
        from forestream.edge.factory import classify_stray

        fatal = classify_stray(exc)  # a client error no command classified
        if fatal is not None:
            typer.echo(f"error: {fatal}", err=True)
            sys.exit(exit_code_for(fatal))
        raise
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
