"""A soak: two workers on a real broker for ``--minutes``, with promotions, broker kills and
malformed records, then an exact account of every input.

``python -m bench.soak [--minutes 30] [--workers 2] [--load 0.7] [--rate R] [--malformed 0.01]
[--promote-every 120] [--restart-every 600] [--guarantee at-least-once|exactly-once]
[--output bench/results/soak.json]`` (``make soak`` runs the 30 minutes)

1. Starts its own single-node broker (:mod:`forestream.local.kafka`) in a temporary data dir,
   trains two versions of the benchmark's forest (:mod:`bench.workload`) and promotes v1 with
   the ``forestream models promote`` CLI.
2. Capacity: writes a backlog (``--capacity-records``) and lets the workers drain it; their
   rate is the predictions' CreateTime span. ``--rate`` skips this. (Before the online
   evaluator evicted in constant time, a backlog this short overstated what the workers then
   sustained: docs/soak.md.)
3. Feeds ``--load`` x capacity (paced, librdkafka producer) with ``--malformed`` of the records
   malformed (every kind the worker dead-letters, bar ``too_large``), for ``--minutes``.
   Every ``--promote-every`` s the other version is promoted with the CLI; every
   ``--restart-every`` s the broker gets SIGKILL and is started again on the same port and
   log dirs. Every ``--sample-seconds``: each worker's RSS, open fds, threads (``/proc``) and
   lag (the group's committed offsets against the end offsets of the partitions it owns).
4. Stops the feed, waits for the group to drain, stops the workers and reads the input,
   predictions and dead-letter topics whole: every input key must have one prediction or dead
   letter; duplicates are counted (and how many came from input written near a broker kill).

Writes a JSON result and a PNG beside it; exits 1 if an input is unaccounted, a worker died or
a promotion failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.soak_io import (
    Feeder,
    Sampler,
    kill_and_restart_broker,
    malformed_values,
    read_keys,
    start_worker,
    wait_drained,
)
from bench.soak_stats import (
    DUPLICATE_WINDOW_S,
    account,
    duplicated_keys,
    near,
    plot,
    report,
    summarise,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "soak.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--minutes", type=float, default=30.0, help="feed duration [30]")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--load", type=float, default=0.7, help="fraction of capacity fed [0.7]")
    p.add_argument("--rate", type=float, help="rec/s to feed (skips the capacity phase)")
    p.add_argument("--capacity-records", type=int, default=150_000)
    p.add_argument("--malformed", type=float, default=0.01, help="fraction malformed [0.01]")
    p.add_argument("--promote-every", type=float, default=120.0, help="seconds [120]")
    p.add_argument("--restart-every", type=float, default=600.0, help="seconds [600]")
    p.add_argument("--sample-seconds", type=float, default=5.0)
    p.add_argument("--warmup-minutes", type=float, default=5.0, help="capped at a third")
    p.add_argument(
        "--guarantee", choices=("at-least-once", "exactly-once"), default="at-least-once"
    )
    p.add_argument("--trees", type=int, default=100)
    p.add_argument("--features", type=int, default=30)
    p.add_argument("--drain-timeout", type=float, default=1800.0, help="seconds [1800]")
    p.add_argument("--output", type=Path, default=RESULTS, help=f"JSON [{RESULTS}]; PNG beside")
    return p.parse_args(argv)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the run ---------------------------------------------------------------------------------------


def schedule(
    duration_s: float, promote_every: float, restart_every: float
) -> list[tuple[float, str]]:
    """(seconds from the feed's start, "promote" | "restart"), in order. Promotions sit half a
    period off the restarts so the two never coincide with the default periods."""
    events = []
    if promote_every > 0:
        t = promote_every / 2
        while t < duration_s:
            events.append((t, "promote"))
            t += promote_every
    if restart_every > 0:
        t = restart_every
        while t < duration_s:
            events.append((t, "restart"))
            t += restart_every
    return sorted(events)


def promotions_served(promotions: list[dict[str, Any]], logs: list[Path]) -> None:
    """Per promotion, seconds from the command's start until each worker's ``model_in_use``
    for that version (None: never)."""
    from forestream.worker.assignment_log import log_events, log_time

    in_use = [log_events(log, "model_in_use") for log in logs]
    for p in promotions:
        p["served_s"] = []
        for events in in_use:
            times = [
                log_time(e) - p["wall"]
                for e in events
                if e.get("version") == p["version"] and log_time(e) >= p["wall"] - 1
            ]
            p["served_s"].append(round(min(times), 2) if times else None)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.promotion import cli, wait_balanced
    from bench.throughput import machine, stop_worker
    from bench.workload import MODEL_NAME, make_workload
    from forestream.edge.factory import TopicSpec, ensure_topics
    from forestream.local import kafka as local_kafka
    from forestream.registry.local import LocalModelStore

    eos = args.guarantee == "exactly-once"
    duration = args.minutes * 60
    with tempfile.TemporaryDirectory(prefix="forestream-soak-") as tmp:
        work = Path(tmp)
        data_dir = work / "kafka"
        info = local_kafka.start(data_dir)
        bootstrap, port = info.address, info.port
        procs: list[subprocess.Popen[bytes]] = []
        feeder: Feeder | None = None
        sampler: Sampler | None = None
        try:
            say(f"broker {bootstrap} (pid {info.pid}); training 2 versions, {args.trees} trees")
            store = LocalModelStore(work / "store")
            first = make_workload(20_000, args.features, args.trees, 5000, store, seed=0)
            make_workload(10, args.features, args.trees, 5000, store, seed=1)
            run_id = uuid.uuid4().hex[:6]
            topics = {
                k: f"soak.{run_id}.{k}"
                for k in ("in", "out", "dlq", "models", "labels", "monitoring")
            }
            ensure_topics(
                bootstrap, [TopicSpec(topics[k], args.partitions) for k in ("in", "out", "dlq")]
            )
            registry = [
                "--store",
                str(work / "store"),
                "--name",
                MODEL_NAME,
                "--bootstrap-servers",
                bootstrap,
                "--models-topic",
                topics["models"],
            ]
            cli("models", "promote", "v1", *registry)
            period = round(1 / args.malformed) if args.malformed > 0 else 0
            feeder = Feeder(
                bootstrap,
                topics["in"],
                first.values,
                malformed_values(first.values, first.feature_names),
                period,
            )
            group = f"soak.{run_id}"
            logs = [work / f"worker-{i}.log" for i in range(args.workers)]
            capacity = None
            if args.rate is None:
                say(f"capacity: {args.capacity_records:,} records backlog, {args.workers} workers")
                feeder.fill(args.capacity_records)
            procs.extend(
                start_worker(bootstrap, topics, work / "store", group, log, i, args.guarantee)
                for i, log in enumerate(logs)
            )
            sampler = Sampler(
                bootstrap,
                topics["in"],
                group,
                args.partitions,
                procs,
                logs,
                args.sample_seconds,
                feeder,
            ).start()
            wait_balanced(procs, logs, args.partitions)
            slack = args.partitions if eos else 0
            if args.rate is None:
                if wait_drained(sampler, slack, args.drain_timeout) is None:
                    raise SystemExit("the capacity backlog was not drained")
                stamps = np.concatenate(
                    [read_keys(bootstrap, topics[k])[1] for k in ("out", "dlq")]
                )
                span = (stamps.max() - stamps.min()) / 1000
                capacity = stamps.size / max(span, 0.001)
                say(f"capacity: {stamps.size:,} records in {span:.1f} s = {capacity:,.0f} rec/s")
            rate = args.rate if args.rate is not None else args.load * (capacity or 0)
            load_start = os.getloadavg()
            t0 = time.monotonic()
            wall0 = time.time()
            backlog = feeder.next_key
            feeder.start(rate)
            say(f"feeding {rate:,.0f} rec/s for {args.minutes:g} min ({args.guarantee})")
            promotions: list[dict[str, Any]] = []
            restarts: list[dict[str, Any]] = []
            exits: list[dict[str, Any]] = []
            version = "v1"
            pending = schedule(duration, args.promote_every, args.restart_every)
            while (now := time.monotonic() - t0) < duration:
                for i, proc in enumerate(procs):
                    if proc.poll() is not None and not any(e["worker"] == i for e in exits):
                        exits.append({"worker": i, "t": round(now, 1), "code": proc.returncode})
                        say(f"worker {i} exited with {proc.returncode}")
                if pending and pending[0][0] <= now:
                    _, kind = pending.pop(0)
                    if kind == "promote":
                        version = "v2" if version == "v1" else "v1"
                        entry: dict[str, Any] = {
                            "t": round(now, 1),
                            "wall": time.time(),
                            "version": version,
                        }
                        try:
                            entry["command_s"] = round(
                                cli("models", "promote", version, *registry)[0], 2
                            )
                        except SystemExit as exc:
                            entry["error"] = str(exc)[:300]
                        promotions.append(entry)
                        say(f"promoted {version}: {entry.get('command_s', entry.get('error'))}")
                    else:
                        entry = {"t": round(now, 1), **kill_and_restart_broker(data_dir, port)}
                        restarts.append(entry)
                        say(f"broker SIGKILLed and back in {entry['down_s']} s")
                    continue
                time.sleep(0.5)
            fed_s = time.monotonic() - t0
            undelivered = feeder.stop()
            say(f"feed stopped: {feeder.next_key:,} records, {undelivered} undelivered; draining")
            drain_s = wait_drained(sampler, slack, args.drain_timeout)
            sampler.stop()
            for sample in sampler.samples:  # seconds from the feed's start (capacity phase < 0)
                sample["t"] = round(sample.pop("mono") - t0, 1)
            for proc in procs:
                stop_worker(proc)
            # not drained: read what there is; the accounting shows what was left unanswered
            say(f"drained in {'-' if drain_s is None else f'{drain_s:.1f}'} s; reading the topics")
            inputs, in_ms = read_keys(bootstrap, topics["in"])
            preds, _ = read_keys(bootstrap, topics["out"])
            dead, _ = read_keys(bootstrap, topics["dlq"])
            acc = account(inputs, preds, dead, feeder.malformed_keys())
            dups = duplicated_keys(inputs, [preds, dead])
            order = np.argsort(inputs)
            dup_wall_s = in_ms[order][np.searchsorted(inputs[order], dups)] / 1000
            kills = [wall0 + r["t"] for r in restarts]
            promotions_served(promotions, logs)
            return {
                "schema": 1,
                "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": machine() + "; cores shared with other jobs",
                "load": [list(load_start), list(os.getloadavg())],
                "command": "python -m bench.soak " + " ".join(sys.argv[1:]),
                "config": {
                    **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "rate": rate,
                },
                "capacity_rec_s": capacity,
                "fed": {
                    "records": feeder.next_key,
                    "seconds": round(fed_s, 1),
                    "achieved_rec_s": (feeder.next_key - backlog) / fed_s,
                    "undelivered": undelivered,
                    "delivery_errors": feeder.failed,
                },
                "drain_s": None if drain_s is None else round(drain_s, 1),
                "accounting": acc.as_dict(),
                "duplicates_near_restarts": near(dup_wall_s, kills, DUPLICATE_WINDOW_S),
                "promotions": promotions,
                "broker_restarts": restarts,
                "worker_exits": exits,
                "samples": sampler.samples,
            }
        finally:
            if feeder is not None:
                feeder.stop()
            if sampler is not None:
                sampler.stop()
            for proc in procs:
                stop_worker(proc)
            local_kafka.stop(data_dir)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            for log in work.glob("worker-*.log"):  # kept beside the result, for a post-mortem
                (args.output.parent / f"{args.output.stem}-{log.name}").write_bytes(
                    log.read_bytes()
                )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.minutes <= 0 or args.workers < 1 or not 0 < args.load <= 1:
        print("error: --minutes and --workers must be positive, --load in (0, 1]", file=sys.stderr)
        return 2
    result = run(args)
    failed = summarise(result)
    result["failed"] = failed
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.output.with_suffix(".png"))
    report(result, failed)
    print(f"written to {args.output} and {args.output.with_suffix('.png')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
