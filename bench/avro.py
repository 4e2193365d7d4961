"""(h) Avro input: the worker on the same records framed as Avro, and what decoding costs.

``python -m bench.avro [--records 20000] [--features 30] [--trees 100] [--rounds 30]`` runs
this phase alone, between two runs of the JSON worker (how far the host drifted meanwhile);
``make bench`` runs it after (c) and compares with (c)'s JSON worker:

- the model's contract (``avro_contract``, what ``train --register-schema`` registers) goes
  into a Schema Registry of this run's own, a local Apicurio started in a temporary directory
  and stopped at the end, as the benchmark starts its own broker when none answers;
- the workload's records, encoded with it (the Confluent wire format), fill a topic of their
  own and one ``forestream worker --input-format avro`` on kafka-python scores them, timed on
  the ruler of (c): first to last output CreateTime;
- decode per record, JSON against Avro, in the worker's pure batch path (``decode_batch`` with
  the validation, JSON's all-numeric fast path included, as a worker runs it), on batches of
  1,000 of the same records, in the thread's CPU time (a shared core's waits left out), the
  two formats interleaved round by round, median per format; times a worker's rate, that is
  the share of one worker process spent decoding.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forestream.errors import UserError

if TYPE_CHECKING:
    from bench.throughput import Failed, Throughput
    from forestream.wire.schema import FeatureSchema

DECODE_BATCH = 1000
"""The worker's default micro-batch limit (bench.throughput.MAX_BATCH)."""


@dataclass(frozen=True)
class AvroResult:
    worker: Throughput | Failed
    json_decode_us: float
    avro_decode_us: float
    rounds: int
    json_bytes: float
    avro_bytes: float
    """Mean value size per record, each format."""
    mean_batch: float | None = None


def avro_figures(result: AvroResult) -> dict[str, float]:
    """(h)'s decode figures for the results JSON (its rate is among the throughput entries)."""
    return {
        "json_decode_us": result.json_decode_us,
        "avro_decode_us": result.avro_decode_us,
        "rounds": result.rounds,
        "json_bytes": result.json_bytes,
        "avro_bytes": result.avro_bytes,
    }


@contextlib.contextmanager
def schema_registry() -> Iterator[str]:
    """A Schema Registry for this run only (its Confluent-compatible URL)."""
    from forestream.local import schema_registry as local

    with tempfile.TemporaryDirectory(prefix="forestream-bench-registry-") as data_dir:
        info = local.start(Path(data_dir))
        try:
            yield info.url
        finally:
            local.stop(Path(data_dir))


def register(url: str, input_topic: str, features: FeatureSchema) -> tuple[int, str]:
    """(schema id, schema text) of the model's contract under ``<input_topic>-value``."""
    from forestream.producer.registered import latest_avro_encoder
    from forestream.runtime.settings import SchemaRegistrySettings
    from forestream.training.contract import register_contract

    access = SchemaRegistrySettings(schema_registry_url=url).schema_registry()
    done = register_contract(access, input_topic, features, "bench")
    latest = access.latest(done.subject)
    if latest is None or latest[2] != done.schema_id:
        raise UserError(f"{done.subject}: the registry did not keep schema id {done.schema_id}")
    latest_avro_encoder(access, input_topic)  # the producer's own lookup finds it too
    return done.schema_id, latest[1]


def avro_values(json_values: Sequence[bytes], schema_id: int, text: str) -> list[bytes]:
    """The same records as framed Avro, as ``produce --format avro`` writes them."""
    from forestream.wire.confluent import avro_encoder

    encode = avro_encoder(schema_id, text)
    return [encode(json.loads(v)) for v in json_values]


def decode_us(
    json_values: Sequence[bytes],
    avro: Sequence[bytes],
    features: FeatureSchema,
    schema_id: int,
    text: str,
    rounds: int,
) -> tuple[float, float]:
    """Median µs of thread CPU time per record of ``decode_batch`` on JSON and on Avro,
    interleaved by round."""
    from forestream.wire.confluent import writer_schema
    from forestream.worker.decoding import decode_batch
    from forestream.worker.framed import framed_parser

    known = writer_schema(schema_id, "AVRO", text)
    parse = framed_parser("avro", lambda _: known, features)
    n = min(DECODE_BATCH, len(json_values), len(avro))
    batches: dict[str, tuple[Sequence[bytes], Callable[[Sequence[bytes]], Any]]] = {
        "json": (json_values[:n], lambda b: decode_batch(b, features)),
        "avro": (avro[:n], lambda b: decode_batch(b, features, parse=parse)),
    }
    for name, (values, decode) in batches.items():  # warm-up, and every record must pass
        valid = len(decode(values).valid_indexes)
        if valid != n:
            raise UserError(f"{name}: {n - valid} of {n} records rejected by the decoder")
    times: dict[str, list[int]] = {name: [] for name in batches}
    gc.collect()
    gc.disable()  # a collection inside one timing would be noise, not decoding
    try:
        for _ in range(rounds):
            for name, (values, decode) in batches.items():
                start = time.thread_time_ns()
                decode(values)
                times[name].append(time.thread_time_ns() - start)
    finally:
        gc.enable()
    return statistics.median(times["json"]) / n / 1000, statistics.median(times["avro"]) / n / 1000


def rows(
    avro: AvroResult | Failed | None, json_worker: Throughput | Failed | None
) -> list[tuple[str, str, str]]:
    """(h)'s table rows: the Avro worker, against the JSON one, and the decode share."""
    from bench.throughput import Failed, batch_note, rate, ratio_row

    if avro is None:
        return []
    if isinstance(avro, Failed):
        return [("(h) forestream worker, Avro input, kafka-python", "not run", avro.reason)]
    out = [
        ("(h) forestream worker, Avro input, kafka-python", rate(avro.worker),
         "the records of (c) as framed Avro (a local Apicurio registry), --input-format avro"
         + batch_note(avro.mean_batch))
    ]  # fmt: skip
    j, a = avro.json_decode_us, avro.avro_decode_us
    if json_worker is not None:
        note = "throughput kept reading Avro"
        if not isinstance(json_worker, Failed):  # JSON's time per record plus Avro's extra decode
            expected = 1 / (1 + (a - j) * json_worker.rate / 1e6)
            note += f"; the extra decode alone would keep {expected:.0%}"
        out.append(ratio_row("worker Avro / JSON input, kafka-python", avro.worker, json_worker,
                             "%", note))  # fmt: skip
    out.append(
        ("(h) decode per record, JSON / Avro", f"{j:.1f} / {a:.1f} µs",
         f"decode_batch with validation, batch {DECODE_BATCH:,}, thread CPU time, median of "
         f"{avro.rounds} interleaved rounds; Avro {a / j:.2f}x JSON; value "
         f"{avro.json_bytes:.0f} B JSON, {avro.avro_bytes:.0f} B Avro")
    )  # fmt: skip
    shares = []
    for us, worker in ((j, json_worker), (a, avro.worker)):
        ok = worker is not None and not isinstance(worker, Failed)
        shares.append(f"{us * worker.rate / 1e6:.1%}" if ok else "n/a")  # type: ignore[union-attr]
    out.append(("(h) decode share of the worker, JSON / Avro", " / ".join(shares),
                "decode µs per record x the worker's records/s: its one process's time "
                "spent decoding"))  # fmt: skip
    return out


def measure(
    bootstrap: str,
    workload: Any,
    topics: Any,
    store: Path,
    group: str,
    log_path: Path,
    rounds: int,
    say: Callable[[str], None],
) -> AvroResult:
    """Register, fill the Avro topic, run the Avro worker, then time decoding."""
    from bench.throughput import (
        Failed,
        allowed_to_fail,
        fill_topic,
        mean_batch,
        rate,
        worker_throughput,
    )

    records = len(workload.values)
    with schema_registry() as url:
        say(f"(h) schema registry {url}; {records:,} Avro records to {topics.input}")
        schema_id, text = register(url, topics.input, workload.metadata.feature_schema)
        values = avro_values(workload.values, schema_id, text)
        fill_topic(bootstrap, topics.input, values, "h")
        say("(h) forestream worker on kafka-python, --input-format avro")
        worker: Throughput | Failed = allowed_to_fail(
            lambda: worker_throughput(
                bootstrap, topics, store, records, group, log_path, input_format="avro",
                env={"FORESTREAM_SCHEMA_REGISTRY_URL": url},
            )[0],
            log_path,
        )  # fmt: skip
        say(f"(h) Avro worker: {rate(worker) if not isinstance(worker, Failed) else worker.reason}")
    say(f"(h) decode per record, JSON vs Avro, {rounds} rounds")
    features = workload.metadata.feature_schema
    json_us, avro_us = decode_us(workload.values, values, features, schema_id, text, rounds)
    return AvroResult(
        worker,
        json_us,
        avro_us,
        rounds,
        sum(map(len, workload.values)) / records,
        sum(map(len, values)) / records,
        mean_batch(log_path),
    )


def measure_or_failed(
    bootstrap: str,
    workload: Any,
    topics: Any,
    store: Path,
    group: str,
    log_path: Path,
    rounds: int,
    say: Callable[[str], None],
) -> AvroResult | Failed:
    """:func:`measure` within ``make bench``: a registry that cannot start (no Java 17, no
    Maven) costs the run this phase's rows, not the figures of the others."""
    from bench.throughput import Failed

    try:
        return measure(bootstrap, workload, topics, store, group, log_path, rounds, say)
    except UserError as exc:
        say(f"(h) not run: {exc}")
        return Failed(str(exc)[:200])


def main(argv: list[str] | None = None) -> int:
    """This phase alone: a JSON worker run, (h), the JSON run again (the host's drift, on a
    shared machine); rows printed, no results file (the docs' page comes from `make bench`)."""
    import os
    import uuid

    from bench.throughput import (
        Layout,
        broker,
        fill_topic,
        machine,
        mean_batch,
        rate,
        ratio_row,
        say,
        worker_throughput,
    )
    from bench.workload import announce_promotion, make_workload
    from forestream.edge.factory import TopicSpec, admin_client, ensure_topics
    from forestream.exit_codes import exit_code_for
    from forestream.registry.local import LocalModelStore

    parser = argparse.ArgumentParser(prog="python -m bench.avro", description=__doc__)
    parser.add_argument("--records", type=int, default=20_000, help="records per worker [20000]")
    parser.add_argument("--features", type=int, default=30, help="numeric features [30]")
    parser.add_argument("--trees", type=int, default=100, help="trees of the forest [100]")
    parser.add_argument("--train-rows", type=int, default=4000, help="training rows [4000]")
    parser.add_argument("--rounds", type=int, default=30, help="decode rounds per format [30]")
    parser.add_argument("--partitions", type=int, default=4, help="input partitions [4]")
    parser.add_argument("--bootstrap-servers", help="broker (default: the local one, or start one)")
    a = parser.parse_args(argv)

    load = [os.getloadavg()]
    prefix = f"bench.{uuid.uuid4().hex[:8]}"
    topics = Layout.of(prefix)
    json_topics = (topics.worker["kafka-python"], topics.worker_other["kafka-python"])
    mine = [topics.input, topics.models, *(t for w in (*json_topics, topics.avro)
                                            for t in (w.input, w.output, w.dlq))]  # fmt: skip
    try:
        with (
            broker(a.bootstrap_servers) as bootstrap,
            tempfile.TemporaryDirectory(prefix="forestream-bench-") as tmp,
        ):
            work = Path(tmp)
            try:
                say(f"broker {bootstrap}; training RF {a.trees} trees on {a.train_rows} rows")
                store = LocalModelStore(work / "models")
                workload = make_workload(a.records, a.features, a.trees, a.train_rows, store)
                announce_promotion(bootstrap, topics.models, workload.metadata)
                fresh = sorted(set(mine) - {topics.models})
                ensure_topics(bootstrap, [TopicSpec(t, a.partitions) for t in fresh])
                fill_topic(bootstrap, topics.input, workload.values, "b")

                def json_run(tag: str) -> Throughput:
                    say(f"(c) forestream worker on kafka-python, JSON input, {tag}")
                    log = work / f"c-json-{tag}.log"
                    wt = json_topics[tag == "after"]
                    got, _ = worker_throughput(bootstrap, wt, store.root, a.records,
                                               f"{prefix}.json.{tag}", log)  # fmt: skip
                    say(f"(c) {got.rate:,.0f} rec/s, mean batch {mean_batch(log)}")
                    return got

                json_worker = json_run("before")
                avro = measure(bootstrap, workload, topics.avro, store.root, f"{prefix}.avro",
                               work / "h-avro.log", a.rounds, say)  # fmt: skip
                json_after = json_run("after")  # the host's drift over the phase, A-B-A
            finally:
                with contextlib.suppress(Exception):
                    admin = admin_client(bootstrap)
                    admin.delete_topics(mine, timeout_ms=30_000)
                    admin.close()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    load.append(os.getloadavg())
    shown = " -> ".join("/".join(f"{x:.1f}" for x in la) for la in load)
    print(f"Machine: {machine()}; load average (1/5/15 min) {shown}")
    print(f"python -m bench.avro --records {a.records} --features {a.features} --trees {a.trees}")
    json_row = ("(c) forestream worker, kafka-python", rate(json_worker), "JSON input, before")
    after = [("(c) the same, after (h)", rate(json_after), "JSON again: how far the host drifted"),
             ratio_row("worker Avro / JSON after", avro.worker, json_after, "%", "")]  # fmt: skip
    for name, value, note in [json_row, *rows(avro, json_worker), *after]:
        print(f"| {name} | {value} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
