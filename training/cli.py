"""Commands of this component, registered on the ``forestream`` app by ``forestream.cli``.

``train``, ``models list|show|promote|rollback|shadow`` and ``demo-data``. Heavy imports (pandas,
sklearn, kafka) happen inside the commands so ``forestream --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from forestream.registry.signing import SigningSettings, TrustSettings
from forestream.runtime.cli_options import (
    AllowUnsignedOpt,
    BootstrapOpt,
    InputTopicOpt,
    ModelNameOpt,
    ModelsTopicOpt,
    SchemaRegistryUrlOpt,
    SigningKeyOpt,
    StoreOpt,
    VerifyKeyOpt,
)
from forestream.runtime.settings import CommonSettings, ContractSettings, load_settings

if TYPE_CHECKING:
    from rich.console import Console

    from forestream.registry.announce import Action, Announced
    from forestream.registry.metadata import ModelMetadata
    from forestream.registry.store import ModelStore
    from forestream.training.quality import QualityReport

models_app = typer.Typer(
    help="The model registry: list, inspect, promote, roll back and shadow versions.",
    no_args_is_help=True,
)

ContractFormatOpt = Annotated[
    str | None,
    typer.Option(
        "--contract-format",
        help="the schema type of the contract: avro or json-schema, the one the input topic's "
        "producers serialize with [env FORESTREAM_CONTRACT_FORMAT; default avro]",
        show_default=False,
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="print machine-readable JSON only, on stdout")
]


def _console() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _settings(**flags: Any) -> CommonSettings:
    return load_settings(CommonSettings, **flags)


def _store(settings: CommonSettings) -> ModelStore:
    return settings.open_store()


class _TrainSettings(CommonSettings, SigningSettings, ContractSettings):
    """``train``: the common settings, the private key it signs with, the Schema Registry
    ``--register-schema`` publishes the contract to."""


class _SchemaSettings(CommonSettings, ContractSettings):
    """``models register-schema``: the store, the input topic and the Schema Registry."""


class _RegistrySettings(CommonSettings, TrustSettings):
    """``models promote|rollback``: the common settings and the public key they verify with."""


# -- train ---------------------------------------------------------------------------------------
def train(
    data: Annotated[Path, typer.Option("--data", help="training data, a CSV file with a header")],
    target: Annotated[str, typer.Option("--target", help="the column to predict")],
    trees: Annotated[int, typer.Option("--trees", help="number of trees in the forest")] = 100,
    max_depth: Annotated[
        int | None, typer.Option("--max-depth", help="maximum tree depth [default: unlimited]")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="seed of the split and the forest")] = 0,
    test_size: Annotated[
        float, typer.Option("--test-size", help="holdout share for the metrics")
    ] = 0.2,
    drop: Annotated[
        list[str] | None,
        typer.Option("--drop", help="exclude a column (identifier, known leak); repeatable"),
    ] = None,
    publish: Annotated[
        bool, typer.Option("--publish", help="announce the new version on the models topic")
    ] = False,
    promote: Annotated[
        bool,
        typer.Option("--promote", help="make the new version the served one (implies --publish)"),
    ] = False,
    register_schema: Annotated[
        bool,
        typer.Option(
            "--register-schema",
            help="register the version's features as a schema under <input topic>-value "
            "(FORESTREAM_SCHEMA_REGISTRY_URL), refused if incompatible with the latest",
        ),
    ] = False,
    contract_format: ContractFormatOpt = None,
    schema_registry_url: SchemaRegistryUrlOpt = None,
    name: ModelNameOpt = None,
    store: StoreOpt = None,
    bootstrap_servers: BootstrapOpt = None,
    models_topic: ModelsTopicOpt = None,
    input_topic: InputTopicOpt = None,
    signing_key: SigningKeyOpt = None,
    allow_unsigned: Annotated[
        bool | None,
        typer.Option(
            "--allow-unsigned",
            help="save the version unsigned when no signing key is set (workers refuse it "
            "unless they allow unsigned models) [env FORESTREAM_ALLOW_UNSIGNED; default: "
            "a signing key is required]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Train a RandomForest on a CSV: quality report, holdout metrics, a new registry version."""
    from forestream.training.fit import ForestParams
    from forestream.training.train import TrainRequest, run_training

    settings = load_settings(
        _TrainSettings,
        model_name=name,
        model_store=store,
        bootstrap_servers=bootstrap_servers,
        models_topic=models_topic,
        input_topic=input_topic,
        signing_key_file=signing_key,
        allow_unsigned=allow_unsigned,
        contract_format=contract_format,
        schema_registry_url=schema_registry_url,
    )
    signer = settings.signer()  # a missing or unreadable key fails before the fit
    if register_schema:  # no URL, or no registry there: say so before the fit
        from forestream.training.contract import check_reachable

        check_reachable(settings.schema_registry(), settings.input_topic)
    announce = publish or promote
    model_store = _store(settings)
    if announce:  # fail before a long fit, and before anything is written, if Kafka is away
        model_store.served(settings.model_name)  # or if the promotion history is unreadable
        _check_kafka(settings)
    console = _console()
    request = TrainRequest(
        data=data,
        target=target,
        name=settings.model_name,
        params=ForestParams(trees=trees, max_depth=max_depth, seed=seed, test_size=test_size),
        drop=tuple(drop or ()),
    )
    with _FitProgress() as on_progress:
        outcome = run_training(
            request,
            model_store,
            signer=signer,
            on_report=lambda report: _print_report(console, report),
            on_progress=on_progress,
        )
    meta = outcome.metadata
    _print_metrics(console, meta.metrics)
    console.print(
        f"saved {meta.name} {meta.version} to "
        f"{model_store.version_location(meta.name, meta.version)} "
        f"(sha256 {meta.artifact_sha256[:12]}, "
        f"{f'signed by key {meta.signing_key_id}' if meta.signature else 'UNSIGNED'})"
    )
    if register_schema:
        _register_schema(settings, meta, saved=True)
    if announce:
        _announce_new_version(console, settings, model_store, meta, promote)


def _register_schema(
    settings: _TrainSettings | _SchemaSettings, meta: ModelMetadata, saved: bool = False
) -> None:
    from forestream.errors import UserError
    from forestream.training.contract import register_contract

    try:
        done = register_contract(
            settings.schema_registry(),
            settings.input_topic,
            meta.feature_schema,
            meta.version,
            settings.contract_format,
        )
    except UserError as exc:
        if not saved:
            raise
        raise UserError(
            f"{meta.version} is saved but its schema was not registered: {exc}"
        ) from None
    level = f", compatibility {done.compatibility}" if done.compatibility else ""
    typer.echo(
        f"registered {meta.name} {meta.version} as {done.subject} version {done.version} "
        f"(schema id {done.schema_id}{level})"
    )


def _announce_new_version(
    console: Console,
    settings: CommonSettings,
    model_store: ModelStore,
    meta: ModelMetadata,
    promote: bool,
) -> None:
    from forestream.errors import UserError

    try:
        done = _change_serving(
            settings, model_store, "promote" if promote else "publish", meta.version
        )
    except UserError as exc:
        raise UserError(
            f"{meta.version} is saved but was not announced ({exc}); "
            f"retry with `forestream models promote {meta.version}`"
        ) from None
    console.print(f"{done.event.kind} {meta.name} {meta.version} on {settings.models_topic}")


class _FitProgress:
    """A rich progress bar on stderr while the forest grows, only when stderr is a terminal.

    It starts at the first progress call, after the quality report has been printed, so the
    live bar never interleaves with the report on a shared terminal.
    """

    def __init__(self) -> None:
        self._progress: Any = None

    def __enter__(self) -> Callable[[int, int], None] | None:
        if not sys.stderr.isatty():
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        progress = Progress(
            TextColumn("growing trees"),
            BarColumn(),
            MofNCompleteColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        task = progress.add_task("fit", total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)
            if self._progress is None:
                self._progress = progress
                progress.start()

        return on_progress

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def _print_report(console: Console, report: QualityReport) -> None:
    from rich.table import Table

    table = Table(title=f"data quality: {report.rows} rows, {report.columns} columns")
    for header in ("column", "type", "missing", "distinct", "status"):
        table.add_column(header, justify="right" if header in ("missing", "distinct") else "left")
    for column in report.column_quality:
        status = column.status if column.reason is None else f"{column.status}: {column.reason}"
        table.add_row(
            column.name,
            column.kind,
            f"{column.missing_share:.1%}",
            str(column.distinct),
            status,
        )
    console.print(table)
    total = sum(report.class_counts.values())
    balance = ", ".join(f"{c} {n} ({n / total:.0%})" for c, n in report.class_counts.items())
    console.print(f"classes of {report.target!r}: {balance}")
    console.print(
        f"duplicate rows: {report.duplicate_rows}; rows without target (dropped): "
        f"{report.target_missing_rows}"
    )
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")


def _print_metrics(console: Console, metrics: dict[str, Any]) -> None:
    from rich.table import Table

    console.print(
        f"holdout ({metrics['test_rows']} rows): accuracy {metrics['accuracy']:.3f}, "
        f"macro F1 {metrics['macro_f1']:.3f}; majority-class baseline "
        f"{metrics['baseline_accuracy']:.3f} ({metrics['baseline_class']})"
    )
    per_class = Table(title="per class")
    for header in ("class", "precision", "recall", "F1", "support"):
        per_class.add_column(header, justify="left" if header == "class" else "right")
    for label, row in metrics["per_class"].items():
        per_class.add_row(
            label,
            f"{row['precision']:.3f}",
            f"{row['recall']:.3f}",
            f"{row['f1']:.3f}",
            str(row["support"]),
        )
    console.print(per_class)
    confusion = Table(title="confusion matrix (rows: true, columns: predicted)")
    labels = metrics["confusion_matrix"]["labels"]
    confusion.add_column("")
    for label in labels:
        confusion.add_column(label, justify="right")
    for label, row in zip(labels, metrics["confusion_matrix"]["matrix"], strict=True):
        confusion.add_row(label, *(str(n) for n in row))
    console.print(confusion)


# -- models --------------------------------------------------------------------------------------
def _version_rows(model_store: ModelStore, name: str) -> list[dict[str, Any]]:
    from forestream.registry.announce import decided_by_rule

    served = model_store.served(name)
    previous = model_store.previously_served(name)
    last_entry = {str(entry["version"]): entry for entry in model_store.history(name)}
    rows = []
    for version in model_store.versions(name):
        meta = model_store.metadata(name, version)
        stage = "serving" if version == served else "previous" if version == previous else ""
        rows.append(
            {
                "version": version,
                "created_at": meta.created_at,
                "accuracy": meta.metrics.get("accuracy"),
                "macro_f1": meta.metrics.get("macro_f1"),
                "stage": stage,
                "sha256": meta.artifact_sha256,
                "signed": meta.signature is not None,
                "decided": decided_by_rule(last_entry.get(version)),
            }
        )
    return rows


@models_app.command("list")
def models_list(
    as_json: JsonOpt = False, name: ModelNameOpt = None, store: StoreOpt = None
) -> None:
    """Versions of a model, oldest first, with their holdout metrics and which one is served."""
    settings = _settings(model_name=name, model_store=store)
    model_store = _store(settings)
    rows = _version_rows(model_store, settings.model_name)
    served = model_store.served(settings.model_name)
    if served is not None and all(row["version"] != served for row in rows):
        typer.echo(
            f"warning: the promotion history names {served} as served, but {settings.model_store} "
            "has no such version: workers cannot load it; promote one that exists",
            err=True,
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no versions of {settings.model_name!r} in {settings.model_store}")
        return
    from rich.table import Table

    table = Table(title=f"{settings.model_name} in {settings.model_store}")
    for header in ("version", "created (UTC)", "accuracy", "macro F1", "stage", "sha256"):
        table.add_column(header, justify="right" if header in ("accuracy", "macro F1") else "left")
    for row in rows:
        table.add_row(
            row["version"],
            row["created_at"][:19].replace("T", " "),
            _fmt(row["accuracy"]),
            _fmt(row["macro_f1"]),
            row["stage"],
            row["sha256"][:12],
        )
    _console().print(table)
    from forestream.registry.announce import decision_line

    for row in (r for r in rows if r["decided"]):  # a rule's decision: its numbers
        typer.echo(decision_line(row["version"], row["decided"]))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@models_app.command("show")
def models_show(
    version: Annotated[str, typer.Argument(help="version to show, e.g. v3")],
    as_json: JsonOpt = False,
    name: ModelNameOpt = None,
    store: StoreOpt = None,
) -> None:
    """Everything recorded about one version: metadata, metrics, schema and quality report."""
    settings = _settings(model_name=name, model_store=store)
    model_store = _store(settings)
    meta = model_store.metadata(settings.model_name, version)
    report = model_store.quality_report(settings.model_name, meta.version)
    if as_json:
        typer.echo(json.dumps({"metadata": meta.model_dump(mode="json"), "quality_report": report}))
        return
    console = _console()
    served = model_store.served(settings.model_name)
    console.print(
        f"{meta.name} {meta.version}{' (serving)' if meta.version == served else ''}, "
        f"created {meta.created_at}, sklearn {meta.sklearn_version}"
    )
    console.print(f"artifact sha256 {meta.artifact_sha256}; signed: {meta.signature is not None}")
    console.print(
        f"data sha256 {meta.data_sha256[:12]}, {meta.data_rows} rows; target {meta.target!r}; "
        f"classes {', '.join(meta.classes)}; params {json.dumps(meta.params)}"
    )
    features = ", ".join(f"{f.name} ({f.kind})" for f in meta.feature_schema.features)
    console.print(f"features: {features}")
    if report:
        _print_stored_report(console, report)
    _print_metrics(console, meta.metrics)


def _print_stored_report(console: Console, report: dict[str, Any]) -> None:
    """A saved quality report as the training run printed it (raw JSON if its shape is older)."""
    import io

    from rich.console import Console

    from forestream.training.quality import ColumnQuality, LeakageSuspect, QualityReport

    try:
        parsed = QualityReport(
            **{
                **report,
                "column_quality": [ColumnQuality(**c) for c in report["column_quality"]],
                "leakage": [LeakageSuspect(**s) for s in report.get("leakage", [])],
            }
        )
        _print_report(Console(file=io.StringIO()), parsed)  # a hand-edited shape fails here
    except (TypeError, KeyError, AttributeError, ValueError, ArithmeticError):
        console.print_json(json.dumps(report))
        return
    _print_report(console, parsed)


@models_app.command("promote")
def models_promote(
    version: Annotated[str, typer.Argument(help="version workers should serve, e.g. v3")],
    name: ModelNameOpt = None,
    store: StoreOpt = None,
    bootstrap_servers: BootstrapOpt = None,
    models_topic: ModelsTopicOpt = None,
    verify_key: VerifyKeyOpt = None,
    allow_unsigned: AllowUnsignedOpt = None,
) -> None:
    """Serve a version: verified first, then announced to workers and recorded in the store."""
    settings = load_settings(
        _RegistrySettings,
        model_name=name,
        model_store=store,
        bootstrap_servers=bootstrap_servers,
        models_topic=models_topic,
        verify_key_file=verify_key,
        allow_unsigned=allow_unsigned,
    )
    settings.require_verification()
    model_store = _store(settings)
    # refuse to announce what no worker could load (altered, unsigned, signed by another key,
    # not a pickled object); checked on the bytes, without unpickling: importing scikit-learn
    # would cost the command seconds, and every worker unpickles and warms it up before serving
    meta = model_store.verify_artifact(settings.model_name, version, trust=settings.trust())
    model_store.served(settings.model_name)  # a broken promotion history: say so before Kafka
    _echo_announced(_change_serving(settings, model_store, "promote", meta.version))


@models_app.command("register-schema")
def models_register_schema(
    version: Annotated[str, typer.Argument(help="the version whose features to register")],
    name: ModelNameOpt = None,
    store: StoreOpt = None,
    input_topic: InputTopicOpt = None,
    contract_format: ContractFormatOpt = None,
    schema_registry_url: SchemaRegistryUrlOpt = None,
) -> None:
    """Publish a version's feature contract to the Schema Registry: an Avro record (or a JSON
    Schema) under <input topic>-value (a new subject gets BACKWARD compatibility), so producers'
    serializers refuse a record without a required feature; an incompatible one is refused."""
    settings = load_settings(
        _SchemaSettings,
        model_name=name,
        model_store=store,
        input_topic=input_topic,
        contract_format=contract_format,
        schema_registry_url=schema_registry_url,
    )
    _register_schema(settings, _store(settings).metadata(settings.model_name, version))


@models_app.command("rollback")
def models_rollback(
    name: ModelNameOpt = None,
    store: StoreOpt = None,
    bootstrap_servers: BootstrapOpt = None,
    models_topic: ModelsTopicOpt = None,
    verify_key: VerifyKeyOpt = None,
    allow_unsigned: AllowUnsignedOpt = None,
) -> None:
    """Serve again the version that was served before the current one, and announce it."""
    settings = load_settings(
        _RegistrySettings,
        model_name=name,
        model_store=store,
        bootstrap_servers=bootstrap_servers,
        models_topic=models_topic,
        verify_key_file=verify_key,
        allow_unsigned=allow_unsigned,
    )
    settings.require_verification()
    model_store = _store(settings)
    if model_store.served(settings.model_name) is None:  # never promoted here: say so first
        model_store.rollback_target(settings.model_name)
    # otherwise the target is decided under the store's lock, once the history follows the
    # models topic (it may know a promotion this store missed)
    _echo_announced(_change_serving(settings, model_store, "rollback"))


def _check_kafka(settings: CommonSettings) -> None:
    """Reach the broker (and the models topic) before a long fit whose result it announces."""
    from forestream.edge.factory import ensure_topics, models_topic_spec

    ensure_topics(settings.kafka(), [models_topic_spec(settings.models_topic)])


def _change_serving(
    settings: CommonSettings, model_store: ModelStore, action: Action, version: str | None = None
) -> Announced:
    """One registry write (store lock, compare-and-set on the models topic, then the history);
    notes about a repaired history or a concurrent writer go to stderr. A rollback's target is
    verified with the command's trust (``train --publish`` announces what it just signed)."""
    from forestream.edge.factory import require_reachable
    from forestream.registry.announce import change_serving

    trust = settings.trust() if isinstance(settings, TrustSettings) else None

    require_reachable(settings.kafka())  # one line now, not a client retrying for seconds
    done = change_serving(
        settings.kafka(),
        settings.models_topic,
        model_store,
        settings.model_name,
        action,
        version,
        trust=trust,
    )
    for note in done.notes:
        typer.echo(note, err=True)
    return done


def _echo_announced(done: Announced) -> None:
    event = done.event
    serving = event.serving.version if event.serving else "nothing"
    kind = event.kind.replace("_", " ")
    typer.echo(f"{kind} {event.name} {event.version}: now serving {serving}")


# -- demo data -----------------------------------------------------------------------------------
def demo_data(
    out: Annotated[Path, typer.Option("--out", help="CSV file to write")] = Path("penguins.csv"),
) -> None:
    """Write the Palmer penguins demo CSV (bundled, no download); train with --target species."""
    from forestream.training.demo_data import write_penguins_csv

    typer.echo(str(write_penguins_csv(out)))


def register(app: typer.Typer) -> None:
    """Add ``train``, ``models ...`` and ``demo-data`` to ``app``."""
    app.command("train")(train)
    from forestream.training.shadow import models_shadow

    models_app.command("shadow")(models_shadow)
    app.add_typer(models_app, name="models")
    app.command("demo-data")(demo_data)
