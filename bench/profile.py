"""Where the worker's on-CPU time goes: py-spy over ``forestream worker``, samples by category.

``python -m bench.profile [--records 200000] [--clients confluent,kafka-python]
[--worker-cwd PATH] [--keep DIR]`` (``make profile``); ``python -m bench.profile --raw
FILE...`` only sorts the samples of raw files kept before.

The benchmark's workload (:mod:`bench.workload`: 30 numeric features, a forest of 100 trees)
is written once to a fresh 4-partition topic; then, once per client, ``forestream worker
--max-records N`` (:func:`bench.throughput.start_worker`'s command line) runs as py-spy's
child until it has scored them all (nothing attaches, so no ptrace rights are needed).
py-spy samples each Python thread 100 times a second and keeps a sample only while the thread
is running (``--idle`` off): a thread waiting in ``poll()``, ``select()`` or on a lock costs
nothing. ``--nonblocking`` reads the stacks without stopping the process: stopping it made
py-spy count 2-9 % of a blocked thread's samples as running (measured with a thread blocked
in ``select()``, on this loaded 2-core machine), none without. Native threads that never run
Python (librdkafka's own) are not seen. Records/s is (c)'s ruler of ``make bench``, first to
last output CreateTime, here under the profiler.

Each sample goes to one category by :func:`category` (rules in :data:`RULES`): the leaf-most
frame of the worker's own code decides; a sample with none goes by the library it is in.
Samples of the main thread outside the worker's loop, and model loading on any thread
(imports, unpickling, numba's compilation, warm-up, closing), are counted apart as start-up
and left out of the shares.

``--worker-cwd`` runs the worker from another checkout (``python -m forestream`` imports the
one in its working directory first) with this checkout's environment, e.g. a git worktree of
an older commit: the broker, workload and ruler stay this checkout's, so before and after are
one command each.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.throughput import (
    BenchFailed,
    WorkerTopics,
    broker,
    fill_topic,
    machine,
    output_span,
    phase_timeout,
    start_worker,
    stop_worker,
    worker_died,
)
from forestream.edge.interface import KafkaClient
from forestream.errors import UserError
from forestream.exit_codes import exit_code_for

CLIENTS: tuple[KafkaClient, ...] = ("confluent", "kafka-python")
RATE = 100
"""Samples per second and thread (py-spy's default)."""

# -- sorting samples -----------------------------------------------------------------------------

STARTUP = "start-up and close (not in the shares)"
WAITING = "in a wait, woken (not in the shares)"
SIDE = "side threads: models and labels topics, admin"
SIDE_THREAD = re.compile(r"model-follower|labels|admin")
"""Threads off the records' path (and their kafka-python I/O threads): following the models
and labels topics, mostly waiting in ``consume(timeout)``, a wait in C that py-spy can count
as running when the thread wakes."""
OTHER = "other"
OURS = re.compile(r"\((.*/)?forestream/")
"""A frame of the worker's own code: py-spy writes ``function (forestream/path.py:line)``."""
IN_LOOP = re.compile(r"^Worker\._loop \(.*worker/loop\.py")
LOADING = re.compile(r"^(<module>|ModelFollower\._load_wanted) ")
"""An import, or a model being loaded (unpickled, compiled, warmed up), on any thread."""
LOGGING = re.compile(r"\((structlog|logging)/")
WAIT = re.compile(r"^(Condition\.wait|Event\.wait|Thread\.join|\w*Selector\.select) ")
"""A blocking call with a Python frame on top: a thread woken and waiting for a core is
runnable, which py-spy counts as running (a blocking call made from C shows its caller)."""

RULES: list[tuple[str, str, str]] = [
    # (category, function, file) patterns for the leaf-most forestream frame; the first wins.
    # Function: the name's last dotted parts ("" for any); file: the path under forestream/.
    (
        "Kafka: delivery (acks, callbacks)",
        r"_served|flush|await_delivery|_poll|_Delivery|_FutureDelivery",
        r"edge/\w+/(producer|client)\.py",
    ),
    ("Kafka: produce", r"", r"edge/\w+/producer\.py|producer/sending\.py"),
    ("Kafka: consume (and commits)", r"", r"edge/.*"),
    ("the forest", r"", r"worker/(compiled_forest|forest_engine)\.py"),
    ("the forest", r"_TreeByTree|score_frame|score_isolating", r"worker/scoring\.py"),
    ("encoding predictions", r"", r"worker/scoring\.py|wire/(headers|prediction_avro)\.py"),
    ("decode + validate", r"", r"worker/(decoding|framed)\.py|wire/.*"),
    (
        "drift and monitoring",
        r"",
        r"worker/(drift\w*|monitoring|evaluation|metrics|reporting|health|window)\.py",
    ),
    ("logging", r"", r"runtime/logs\.py"),
    (
        "delivery engine, batch bookkeeping",
        r"",
        r"worker/(delivery/\w+|cycle|processing|serving|loop|batch|outputs|transactions)\.py",
    ),
]
LIBRARY_RULES: list[tuple[str, re.Pattern[str]]] = [
    # a thread that never enters forestream's code: a client's own I/O thread
    ("Kafka: produce", re.compile(r"\(kafka/producer/")),
    ("Kafka: consume (and commits)", re.compile(r"\((kafka|confluent_kafka)/")),
]
CATEGORIES = list(dict.fromkeys([r[0] for r in RULES] + [SIDE, OTHER]))
"""The table's rows, in this order (the start-up row comes after them)."""
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*?)(:\d+)?\)$")
_RULES = [
    (
        name,
        re.compile(rf"(^|\.)({fn})\b") if fn else None,
        re.compile(rf"(^|/)forestream/({path})$"),
    )
    for name, fn, path in RULES
]


def _ruled(frame: str) -> str:
    parts = FRAME.match(frame)
    function, file = (parts["function"], parts["file"]) if parts else (frame, "")
    for name, fn, path in _RULES:
        if path.search(file) and (fn is None or fn.search(function)):
            return name
    return OTHER


def category(thread: str, frames: list[str]) -> str:
    """The category of one sample: ``thread`` is its thread's name, ``frames`` its stack from
    the root to the leaf, each ``function (file:line)`` as py-spy writes them."""
    if thread in ("MainThread", ""):  # unnamed: the interpreter starting, before threading
        loop = next((i for i, f in enumerate(frames) if IN_LOOP.match(f)), None)
        if loop is None:
            return STARTUP
        frames = frames[loop:]
    if any(LOADING.match(f) for f in frames):
        return STARTUP
    if frames and WAIT.match(frames[-1]):
        return WAITING
    if SIDE_THREAD.search(thread):
        return SIDE
    ours = [i for i, f in enumerate(frames) if OURS.search(f)]
    below = frames[ours[-1] + 1 :] if ours else frames
    if any(LOGGING.search(f) for f in below):
        return "logging"
    if ours:
        return _ruled(frames[ours[-1]])
    return next((name for name, rule in LIBRARY_RULES if any(map(rule.search, frames))), OTHER)


THREAD = re.compile(r"^thread \(\w+\)(?:: (.*))?$")


def tally(lines: Iterable[str]) -> Counter[str]:
    """Samples per category from py-spy's raw output (``--threads``): one line per distinct
    stack, ``thread (id): name;frame;...;frame count``."""
    counts: Counter[str] = Counter()
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack:
            continue
        head, *frames = stack.split(";")
        named = THREAD.match(head)
        counts[category(named.group(1) or "" if named else "", frames)] += int(count)
    return counts


def table(title: str, counts: Counter[str]) -> str:
    """A markdown table: each category's share of the loop's samples."""
    loop = sum(n for c, n in counts.items() if c not in (STARTUP, WAITING))
    rows = [f"| {title} | share | samples |", "|---|---:|---:|"]
    for name in CATEGORIES:
        rows.append(f"| {name} | {100 * counts[name] / max(loop, 1):.1f} % | {counts[name]} |")
    rows.append(f"| all of the loop | 100 % | {loop} |")
    rows += [f"| {name} | | {counts[name]} |" for name in (WAITING, STARTUP)]
    return "\n".join(rows)


# -- the runs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    client: KafkaClient
    rate: float
    load: float
    counts: Counter[str]


def py_spy() -> str:
    found = Path(sys.executable).with_name("py-spy")
    if not found.exists():
        raise UserError("py-spy is not installed: `make setup` installs it (the bench extra)")
    return str(found)


def profile_worker(
    bootstrap: str, topics: WorkerTopics, store: Path, records: int, group: str, raw: Path,
    client: KafkaClient, cwd: Path | None,
) -> float:  # fmt: skip
    """Records/s of one worker scoring ``records`` as py-spy's child (samples to ``raw``)."""
    from forestream.worker.settings import WorkerSettings

    log = raw.with_suffix(".log")
    wrap = [py_spy(), "record", "--format", "raw", "--rate", str(RATE), "--threads",
            "--nonblocking", "--output", str(raw), "--"]  # fmt: skip
    pipelined = WorkerSettings(kafka_client=client, pipeline=None).pipelined
    proc = start_worker(
        bootstrap, topics, store, group, log, records, client, pipelined,
        input_format=None, wrap=wrap, cwd=cwd,  # JSON, the default of both before and after
    )  # fmt: skip
    try:
        proc.wait(timeout=phase_timeout(records, floor_s=300.0))
    except subprocess.TimeoutExpired:
        raise BenchFailed(f"worker did not score {records} records in time") from None
    finally:
        stop_worker(proc)
    if proc.returncode != 0 or not raw.exists():
        raise worker_died(proc, log)
    return output_span(bootstrap, topics.output, records, timeout_s=phase_timeout(records)).rate


def run(opts: argparse.Namespace, work: Path) -> list[Run]:
    from bench.workload import announce_promotion, make_workload
    from forestream.edge.factory import TopicSpec, admin_client, ensure_topics
    from forestream.registry.local import LocalModelStore

    prefix = f"profile.{uuid.uuid4().hex[:8]}"
    models = f"{prefix}.models"
    topics = {c: WorkerTopics(f"{prefix}.in", f"{prefix}.{c}.out", f"{prefix}.{c}.dlq", models)
              for c in opts.clients}  # fmt: skip
    names = sorted({t for w in topics.values() for t in (w.input, w.output, w.dlq)})
    runs: list[Run] = []
    with broker(opts.bootstrap_servers) as bootstrap:
        try:
            store = LocalModelStore(work / "models")
            workload = make_workload(opts.records, 30, 100, opts.train_rows, store)
            for var in ("FORESTREAM_VERIFY_KEY_FILE", "FORESTREAM_SIGNING_KEY_FILE"):
                os.environ[var] = str(Path(os.environ[var]).resolve())  # for --worker-cwd
            announce_promotion(bootstrap, models, workload.metadata)
            ensure_topics(bootstrap, [TopicSpec(t, 4) for t in names])
            fill_topic(bootstrap, f"{prefix}.in", workload.values, "p")
            for client in opts.clients:
                load = os.getloadavg()[0]
                print(f"[{time.strftime('%H:%M:%S')}] {client}: {opts.records:,} records, "
                      f"load average {load:.1f}", file=sys.stderr)  # fmt: skip
                raw = (opts.keep or work) / f"{client}.raw"
                rate = profile_worker(
                    bootstrap, topics[client], store.root, opts.records, f"{prefix}.{client}",
                    raw, client, opts.worker_cwd,
                )  # fmt: skip
                runs.append(Run(client, rate, load, tally(raw.read_text().splitlines())))
        finally:
            admin = admin_client(bootstrap)
            admin.delete_topics([*names, models], timeout_ms=30_000)
            admin.close()
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--records", type=int, default=200_000, help="records per run [200000]")
    parser.add_argument("--clients", default=",".join(CLIENTS), help="comma-separated [both]")
    parser.add_argument("--train-rows", type=int, default=10_000, help="training rows [10000]")
    parser.add_argument("--worker-cwd", type=Path, help="run the worker from this checkout")
    parser.add_argument("--keep", type=Path, help="write py-spy's raw files (and logs) here")
    parser.add_argument("--bootstrap-servers", help="broker (default: the local one, or start one)")
    parser.add_argument("--raw", type=Path, nargs="+", help="only sort these raw files' samples")
    opts = parser.parse_args(argv)
    if opts.raw:
        for path in opts.raw:
            print(table(path.name, tally(path.read_text().splitlines())) + "\n")
        return 0
    opts.clients = [c.strip() for c in opts.clients.split(",")]
    if unknown := set(opts.clients) - set(CLIENTS):
        parser.error(f"unknown clients: {sorted(unknown)}")
    if opts.keep:
        opts.keep.mkdir(parents=True, exist_ok=True)
    worker = opts.worker_cwd.resolve() if opts.worker_cwd else Path.cwd()
    try:
        with tempfile.TemporaryDirectory(prefix="forestream-profile-") as tmp:
            runs = run(opts, Path(tmp))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    print(f"{machine()}; the worker from {worker}\n")
    for r in runs:
        title = f"{r.client}: {r.rate:,.0f} rec/s, load {r.load:.1f}"
        print(table(title, r.counts) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
