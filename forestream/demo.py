"""``forestream demo``: the whole product on a local real broker, end to end, in one command.

Trains v1 and v2 on the Palmer penguins data, promotes v1, starts two worker processes and an
evaluator, announces v2 as a shadow candidate, streams the data at a steady rate with a few
malformed records and a drifted second half, and sends the true labels a little later. The
evaluator joins labels with both versions' predictions and promotes v2 by its rule once v2 has
proved itself on the same records (or refuses it); then everything stops and the summary shows
what happened, the decision and its evidence.

Every step goes through the real commands (``forestream train``, ``worker``, ``evaluate``,
``models shadow``) as subprocesses, so the demo exercises exactly what a user runs. Only the feed is
in-process, because it must know each record's key and label to send labels late.
``--format avro`` is the same story through a Schema Registry (:mod:`forestream.demo_format`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from forestream.demo_format import DemoRegistry, FormatPlan, feed_values, format_plan
from forestream.demo_observer import Observed, OutputObserver
from forestream.demo_summary import print_summary, summarize
from forestream.edge.connection import SECURITY_ENV as _SECURITY_ENV
from forestream.edge.connection import KafkaConnection
from forestream.errors import UserError
from forestream.registry.signing import DEFAULT_KEYS_DIR, ensure_key_pair
from forestream.runtime.cli_options import BootstrapOpt

MODEL_NAME = "penguins"
TARGET = "species"
DRIFTED_FEATURE = "bill_length_mm"
LABEL_DELAY_S = 2.0


@dataclass(frozen=True)
class DemoPlan:
    """Timeline of one demo run; the short mode (for tests) is the same story, compressed."""

    rate: float
    seconds: float
    malformed_share: float = 0.01
    promote_rule: str = "labelled>=2000 and accuracy>=served-0.02 and agreement>=0.9"
    """The evaluator's rule for v2 (``--promote-policy``): proved on this many labelled
    records, no worse than v1 on the same records beyond a small margin, mostly agreeing."""
    drift_from: float = 0.5
    drift_std: float = 2.0
    drift_window: int = 2000

    @property
    def records(self) -> int:
        return int(self.rate * self.seconds)


def _forestream(*args: str) -> list[str]:
    return [sys.executable, "-m", "forestream", *args]


class _Topics:
    def __init__(self, run_id: str) -> None:
        prefix = f"demo.{run_id}"
        self.features = f"{prefix}.features"
        self.predictions = f"{prefix}.predictions"
        self.dlq = f"{prefix}.features.dlq"
        self.models = f"{prefix}.models"
        self.labels = f"{prefix}.labels"
        self.monitoring = f"{prefix}.monitoring"
        self.shadow = f"{prefix}.shadow"

    def env(self) -> dict[str, str]:
        return {
            "FORESTREAM_INPUT_TOPIC": self.features,
            "FORESTREAM_OUTPUT_TOPIC": self.predictions,
            "FORESTREAM_DLQ_TOPIC": self.dlq,
            "FORESTREAM_MODELS_TOPIC": self.models,
            "FORESTREAM_LABELS_TOPIC": self.labels,
            "FORESTREAM_MONITORING_TOPIC": self.monitoring,
            "FORESTREAM_SHADOW_TOPIC": self.shadow,
        }


class Demo:
    """One run: owns every process it starts and stops all of them, whatever happens."""

    def __init__(
        self,
        plan: DemoPlan,
        bootstrap: str | None,
        workdir: Path,
        fmt: FormatPlan | None = None,
        registry_url: str | None = None,
    ) -> None:
        self.plan = plan
        self.format = fmt or format_plan("json")
        self.registry = DemoRegistry(registry_url)
        self.run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
        self.dir = workdir / self.run_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.topics = _Topics(self.run_id)
        self.given_bootstrap = bootstrap
        self.bootstrap = bootstrap or ""
        self.started_broker_dir: Path | None = None
        self.workers: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []
        self.evaluator: tuple[subprocess.Popen[bytes], IO[bytes]] | None = None
        self.observer = OutputObserver(self.kafka, self.topics)
        self.sent = 0
        self.sent_bad: Counter[str] = Counter()
        self.labels_sent = 0
        self.phase = "starting"
        self.keys = ensure_key_pair(DEFAULT_KEYS_DIR)  # made on the first run, then reused

    # -- environment -----------------------------------------------------------------------
    def kafka(self) -> KafkaConnection:
        """A cluster the user named is reached with their FORESTREAM_* security settings; the
        local broker the demo starts is plaintext."""
        if not self.given_bootstrap:
            return KafkaConnection(bootstrap=self.bootstrap)
        from forestream.runtime.settings import CommonSettings, load_settings

        return load_settings(CommonSettings, bootstrap_servers=self.bootstrap).kafka()

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if not self.given_bootstrap:  # our plaintext broker: the user's cluster settings don't fit
            for name in _SECURITY_ENV:
                env.pop(name, None)
        env.update(self.topics.env())
        env.update(
            {
                "FORESTREAM_BOOTSTRAP_SERVERS": self.bootstrap,
                "FORESTREAM_MODEL_STORE": str(self.dir / "models"),
                "FORESTREAM_MODEL_NAME": MODEL_NAME,
                "FORESTREAM_SIGNING_KEY_FILE": str(self.keys[0]),
                "FORESTREAM_VERIFY_KEY_FILE": str(self.keys[1]),
                "FORESTREAM_DRIFT_WINDOW": str(self.plan.drift_window),
                "FORESTREAM_REPORT_INTERVAL_S": "2",
                "FORESTREAM_SUMMARY_INTERVAL_S": "5",
                "FORESTREAM_OUTPUT_FORMAT": "json",  # the accounting reads JSON predictions
                "PYTHONUNBUFFERED": "1",
            }
        )
        for name, value in self.registry.env().items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def start_broker(self) -> None:
        if self.given_bootstrap:
            return
        from forestream.local import kafka as local_kafka
        from forestream.runtime.settings import kafka_dir

        data_dir = kafka_dir()
        already = local_kafka.status(data_dir)
        info = local_kafka.start(data_dir)
        self.bootstrap = info.address
        if already is None:
            self.started_broker_dir = data_dir

    def start_registry(self) -> None:
        """Only for a format that needs one: the user's, or the local one (stopped at the end
        if this run started it)."""
        if self.format.needs_registry:
            self.registry.start()

    def run_command(self, *args: str, log_name: str) -> None:
        log_path = self.dir / f"{log_name}.log"
        with log_path.open("wb") as log:
            done = subprocess.run(
                _forestream(*args), env=self.env(), stdout=log, stderr=subprocess.STDOUT
            )
        if done.returncode != 0:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise UserError(f"`forestream {' '.join(args)}` failed; see {log_path}: {tail}")

    def create_topics(self, partitions: int = 4) -> None:
        """Before the workers start, so they find a 4-partition input and size outputs alike."""
        from forestream.edge.factory import TopicSpec, ensure_topics, models_topic_spec

        t = self.topics
        ensure_topics(
            self.kafka(),
            [TopicSpec(t.features, partitions), TopicSpec(t.labels, partitions)]
            + [
                TopicSpec(name, partitions)
                for name in (t.predictions, t.dlq, t.monitoring, t.shadow)
            ]
            + [models_topic_spec(t.models)],
        )

    def start_workers(self, count: int = 2) -> None:
        for index in range(count):
            log = (self.dir / f"worker-{index}.log").open("wb")
            env = self.env() | {"FORESTREAM_WORKER_INDEX": str(index)}
            args = (
                "worker", "--group", f"demo-{self.run_id}", "--log-format", "json",
                "--no-follow-labels",  # the evaluator reads each label once, for the fleet
            )  # fmt: skip
            process = subprocess.Popen(
                _forestream(*args, *self.format.worker_args),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            self.workers.append((process, log))

    def start_evaluator(self) -> None:
        """One ``forestream evaluate``: joins labels with both versions' predictions, publishes
        the counts every second and decides on v2 by the plan's rule."""
        log = (self.dir / "evaluator.log").open("wb")
        args = (
            "evaluate", "--group", f"demo-eval-{self.run_id}", "--log-format", "json",
            "--publish-interval-s", "1", "--window-s", "10",
            "--promote-policy", self.plan.promote_rule,
        )  # fmt: skip
        process = subprocess.Popen(
            _forestream(*args), env=self.env(), stdout=log, stderr=subprocess.STDOUT
        )
        self.evaluator = (process, log)

    def stop_evaluator(self, timeout_s: float = 15.0) -> int | None:
        if self.evaluator is None:
            return None
        process, log = self.evaluator
        self.evaluator = None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            code: int | None = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
            code = None
        log.close()
        return code

    def wait_workers_ready(self, partitions: int = 4, timeout_s: float = 60.0) -> bool:
        """Until every worker's newest assignment is non-empty and together they own every
        partition once, so the clock of the story starts with a settled group."""
        from forestream.worker.assignment_log import owned_partitions

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            latest = [
                owned_partitions(self.dir / f"worker-{index}.log")
                for index in range(len(self.workers))
            ]
            owned = [p for parts in latest for p in parts]
            if all(latest) and len(owned) == len(set(owned)) == partitions:
                return True
            for process, _ in self.workers:
                if process.poll() is not None:
                    raise UserError(f"a worker exited early ({process.returncode}); see {self.dir}")
            time.sleep(0.2)
        return False

    def stop_workers(self, timeout_s: float = 25.0) -> list[int | None]:
        for process, _ in self.workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes: list[int | None] = []
        for process, log in self.workers:
            try:
                codes.append(process.wait(timeout=timeout_s))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
                codes.append(None)
            log.close()
        self.workers = []
        return codes

    @property
    def observed(self) -> Observed:
        return self.observer.seen

    @property
    def reader_error(self) -> str | None:
        return self.observer.error

    def accounted(self) -> int:
        return self.observer.accounted()

    def cleanup(self) -> None:
        self.observer.stop()
        self.stop_workers(timeout_s=10)
        self.stop_evaluator(timeout_s=10)
        if self.started_broker_dir is not None:
            from forestream.local import kafka as local_kafka

            local_kafka.stop(self.started_broker_dir)
            self.started_broker_dir = None
        self.registry.stop()

    # -- data ------------------------------------------------------------------------------
    def write_data(self) -> Path:
        from forestream.training.demo_data import write_penguins_csv

        return write_penguins_csv(self.dir / "penguins.csv")

    def train(self, csv: Path) -> None:
        self.phase = "training v1 and v2"
        common = ["--data", str(csv), "--target", TARGET, *self.format.train_args]
        self.run_command("train", *common, "--seed", "1", "--promote", log_name="train-v1")
        self.run_command("train", *common, "--seed", "2", "--publish", log_name="train-v2")

    # -- the feed --------------------------------------------------------------------------
    def feed(self, csv: Path, on_progress: Any) -> None:
        """Send ``plan.records`` records at ``plan.rate``; labels follow ``LABEL_DELAY_S`` later."""
        import pandas as pd

        from forestream.edge.factory import acking_producer
        from forestream.edge.interface import Outgoing
        from forestream.producer.encoding import frame_rows
        from forestream.producer.malformed import MalformedMixer
        from forestream.producer.pacing import RateSchedule
        from forestream.producer.sending import make_oversize_producer
        from forestream.wire.headers import ReasonCode

        plan = self.plan
        frame = pd.read_csv(csv).dropna(subset=[TARGET])
        labels = frame.pop(TARGET).astype(str).tolist()
        rows = frame_rows(frame)
        numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
        complete = [c for c in frame.columns if not frame[c].isna().any()]
        shift = plan.drift_std * float(frame[DRIFTED_FEATURE].std())
        mixer = MalformedMixer(
            plan.malformed_share, complete, [c for c in numeric if c in complete], seed=7
        )
        values = feed_values(self.format, self.registry, self.topics.features, mixer)
        producer = acking_producer(self.kafka(), client_id="forestream-demo-feed")
        oversize = make_oversize_producer(self.kafka())
        pending_labels: deque[tuple[float, bytes, str]] = deque()
        schedule = RateSchedule(rate=plan.rate, start=time.monotonic())
        try:
            for n in range(plan.records):
                while (wait := schedule.wait_s(now := time.monotonic())) > 0:
                    self._send_due_labels(producer, pending_labels, now)
                    time.sleep(min(0.005, wait))
                progress = n / plan.records
                drifted = progress >= plan.drift_from
                self.phase = (
                    "streaming (drifted: bill_length_mm +2 std)" if drifted else "streaming"
                )
                row = dict(rows[n % len(rows)])
                drifting = row.get(DRIFTED_FEATURE)
                if drifted and isinstance(drifting, float):
                    row[DRIFTED_FEATURE] = drifting + shift
                key = f"{self.run_id}-{n}".encode()
                client = producer
                if mixer.next_is_malformed():
                    kind, value = values.bad(row)
                    self.sent_bad[kind] += 1
                    if kind == ReasonCode.TOO_LARGE:
                        client = oversize
                else:
                    value = values.good(row)
                    pending_labels.append(
                        (time.monotonic() + LABEL_DELAY_S, key, labels[n % len(labels)])
                    )
                client.send([Outgoing(self.topics.features, key, value)])  # checked by reading
                schedule.mark_sent()
                self.sent += 1
                on_progress()
            self.phase = "sending the last labels"
            while pending_labels:
                self._send_due_labels(producer, pending_labels, time.monotonic())
                time.sleep(0.05)
            producer.flush(30)
            oversize.flush(30)
        finally:
            producer.close(10)
            oversize.close(10)

    def _send_due_labels(
        self, producer: Any, pending: deque[tuple[float, bytes, str]], now: float
    ) -> None:
        from forestream.edge.interface import Outgoing

        while pending and pending[0][0] <= now:
            _, key, label = pending.popleft()
            value = json.dumps({"label": label}).encode()
            producer.send([Outgoing(self.topics.labels, key, value)])
            self.labels_sent += 1

    def shadow_v2(self) -> None:
        """v2 scores beside v1 on live traffic; the evaluator decides whether it takes over."""
        self.run_command("models", "shadow", "v2", log_name="shadow-v2")

    def wait_for_outputs(self, timeout_s: float, on_progress: Any) -> bool:
        return _until(lambda: self.accounted() >= self.sent, timeout_s, on_progress)

    def wait_final_reports(self, timeout_s: float) -> bool:
        """Until the workers' newest reports (cumulative) count every record sent."""
        return _until(lambda: self.observer.reports_counted() >= self.sent, timeout_s)

    def wait_labelled(self, timeout_s: float, on_progress: Any) -> bool:
        """Until the evaluator's published counts hold every label sent (each joins once)."""
        return _until(lambda: self.observer.labelled() >= self.labels_sent, timeout_s, on_progress)


def _until(done: Callable[[], bool], timeout_s: float, on_progress: Any = None) -> bool:
    """Whether ``done`` held within ``timeout_s``, asked every 0.2 s (progress shown first)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if on_progress is not None:
            on_progress()
        if done():
            return True
        time.sleep(0.2)
    return False


def run_demo(
    plan: DemoPlan,
    bootstrap: str | None,
    workdir: Path,
    as_json: bool,
    fmt: FormatPlan | None = None,
    registry_url: str | None = None,
) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    demo = Demo(plan, bootstrap, workdir, fmt, registry_url)
    started = time.monotonic()
    try:
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            transient=as_json,
        ) as progress:
            task = progress.add_task("setting up", total=plan.records, status="")

            def status(description: str) -> None:
                progress.update(
                    task,
                    description=description,
                    status=f"accounted {demo.accounted():,}",
                )

            status("starting the local broker")
            demo.start_broker()
            demo.create_topics()
            if demo.format.needs_registry:
                status("starting the local schema registry")
                demo.start_registry()
            csv = demo.write_data()
            status("training v1 and v2")
            demo.train(csv)
            status("starting two workers and an evaluator")
            demo.start_workers(2)
            demo.start_evaluator()
            status("waiting for the workers to share the partitions")
            if not demo.wait_workers_ready():
                print(
                    "warning: the workers did not share all partitions within 60 s", file=sys.stderr
                )
            status("announcing v2 as a shadow of v1")
            demo.shadow_v2()
            demo.observer.start()

            def sent() -> None:
                progress.update(task, completed=demo.sent)
                if demo.sent % 50 == 0:
                    status(demo.phase)

            demo.feed(csv, sent)
            if not demo.wait_for_outputs(60, lambda: status("waiting for the last outputs")):
                print("warning: not every record was accounted for within 60 s", file=sys.stderr)
            if not demo.wait_labelled(30, lambda: status("waiting for the last labels")):
                print(
                    "warning: the evaluator did not count every label within 30 s", file=sys.stderr
                )
            if not demo.wait_final_reports(10):  # the drift windows of the last records
                print("warning: the workers' reports lag the records sent", file=sys.stderr)
            status("stopping the workers and the evaluator")
            codes = demo.stop_workers()
            evaluator_code = demo.stop_evaluator()
            demo.observer.stop()
        summary = summarize(demo, time.monotonic() - started, codes, evaluator_code)
    finally:
        demo.cleanup()
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary)
    healthy = (
        summary["unaccounted"] == 0
        and all(code == 0 for code in codes)
        and summary["evaluator_exit_code"] == 0
    )
    return 0 if healthy else 1


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        short: Annotated[
            bool, typer.Option("--short", help="a 20-second run of the same story (for tests)")
        ] = False,
        rate: Annotated[
            float | None,
            typer.Option("--rate", min=1, help="records per second [250; 150 with --short]"),
        ] = None,
        seconds: Annotated[
            float | None,
            typer.Option("--seconds", min=5, help="how long to stream [60; 20 with --short]"),
        ] = None,
        workdir: Annotated[
            Path, typer.Option("--workdir", help="models, data and logs of each run")
        ] = Path(".forestream/demo"),
        as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
        bootstrap_servers: BootstrapOpt = None,
        value_format: Annotated[
            str | None,
            typer.Option(
                "--format",
                help="json, or avro: the models' contract registered in a Schema Registry "
                "(FORESTREAM_SCHEMA_REGISTRY_URL, else the local one, started and stopped "
                "like the broker), Avro records, workers on --input-format avro "
                "[env FORESTREAM_VALUE_FORMAT; default json]",
                show_default=False,
            ),
        ] = None,
    ) -> None:
        """The whole system end to end on the local real broker, then a summary."""
        fmt = format_plan(value_format or os.environ.get("FORESTREAM_VALUE_FORMAT") or "json")
        # --short picks a compressed timeline; an explicit --rate/--seconds still wins
        plan = DemoPlan(
            rate=rate or (150 if short else 250),
            seconds=seconds or (20 if short else 60),
            drift_window=500 if short else DemoPlan.drift_window,
            # v2 has its own drift reference (its own split), so the window starts over at the
            # swap; the short rule promotes v2 after ~700 records, well before the drift
            promote_rule=(
                "labelled>=300 and accuracy>=served-0.02 and agreement>=0.9"
                if short
                else DemoPlan.promote_rule
            ),
        )
        bootstrap = bootstrap_servers or os.environ.get("FORESTREAM_BOOTSTRAP_SERVERS")
        registry_url = os.environ.get("FORESTREAM_SCHEMA_REGISTRY_URL")
        raise typer.Exit(run_demo(plan, bootstrap, workdir, as_json, fmt, registry_url))
