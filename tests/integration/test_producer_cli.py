"""`forestream produce` and `forestream topics create` as a user runs them, on the real broker,
on both Kafka clients (what they wrote is read back with kafka-python, an independent check)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from forestream.producer.malformed import MALFORMED_KINDS, MAX_VALUE_BYTES
from forestream.wire.headers import ReasonCode
from tests.kafka_helpers import read_topic

CLI = [sys.executable, "-m", "forestream"]
BOTH_CLIENTS = pytest.mark.usefixtures("kafka_client")
"""The commands follow ``FORESTREAM_KAFKA_CLIENT``: each test that reaches Kafka runs on both."""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=120, env=os.environ.copy()
    )


def write_csv(path: Path, rows: int) -> None:
    lines = ["id,x,y,colour,label"]
    for i in range(rows):
        x = "" if i % 5 == 0 else f"{i / 4}"
        lines.append(f"r{i},{x},{i},{'red' if i % 2 else 'blue'},{i % 3}")
    path.write_text("\n".join(lines) + "\n")


@BOTH_CLIENTS
def test_csv_rows_arrive_as_json_with_their_keys(
    kafka_bootstrap: str, topic_name: Callable[[str], str], tmp_path: Path
) -> None:
    data = tmp_path / "data.csv"
    write_csv(data, 40)
    topic = topic_name("in")
    result = run("produce", "--data", str(data), "--key-column", "id", "--target", "label",
                 "--input-topic", topic, "--partitions", "2",
                 "--bootstrap-servers", kafka_bootstrap)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("sent 40 records in ")

    records = read_topic(kafka_bootstrap, topic, expected=40, settle_s=0.5)
    assert len(records) == 40
    assert {r.partition for r in records} == {0, 1}
    by_key = {r.key.decode(): json.loads(r.value) for r in records}
    assert set(by_key) == {f"r{i}" for i in range(40)}
    assert by_key["r0"] == {"x": None, "y": 0, "colour": "blue"}
    assert by_key["r7"] == {"x": 1.75, "y": 7, "colour": "red"}


@BOTH_CLIENTS
def test_count_loop_and_every_malformed_kind(
    kafka_bootstrap: str, topic_name: Callable[[str], str], tmp_path: Path
) -> None:
    data = tmp_path / "data.csv"
    write_csv(data, 10)
    topic = topic_name("in")
    kinds = len(MALFORMED_KINDS)
    total = 10 * kinds  # a tenth bad: exactly one of each kind
    result = run("produce", "--data", str(data), "--drop", "id", "--target", "label", "--loop",
                 "--count", str(total), "--malformed-share", "0.1", "--rate", "0",
                 "--input-topic", topic, "--bootstrap-servers", kafka_bootstrap)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"sent {total} records" in result.stdout

    records = read_topic(kafka_bootstrap, topic, expected=total, settle_s=0.5)
    assert len(records) == total
    keys = [r.key.decode() for r in records]
    assert len(set(keys)) == total and all(k.rsplit("-", 1)[1].isdigit() for k in keys)

    def kind_of(value: bytes) -> str | None:
        if value == b"":
            return ReasonCode.EMPTY
        if len(value) > MAX_VALUE_BYTES:
            return ReasonCode.TOO_LARGE
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            return ReasonCode.NOT_JSON
        if not isinstance(decoded, dict):
            return ReasonCode.NOT_OBJECT
        if set(decoded) != {"x", "y", "colour"}:
            return ReasonCode.MISSING_FEATURE
        if isinstance(decoded["y"], str):
            return ReasonCode.WRONG_TYPE
        if decoded["y"] != decoded["y"]:
            return ReasonCode.NOT_FINITE
        if abs(decoded["y"]) >= 1e300:
            return ReasonCode.OUT_OF_RANGE
        return None

    seen = Counter(kind_of(r.value) for r in records)
    assert seen == Counter({None: total - kinds, **dict.fromkeys(MALFORMED_KINDS, 1)})


@BOTH_CLIENTS
def test_topics_create_makes_every_topic_and_a_compacted_models_topic(
    kafka_bootstrap: str, topic_name: Callable[[str], str]
) -> None:
    names = {flag: topic_name(flag) for flag in
             ("input", "output", "dlq", "labels", "monitoring", "models")}  # fmt: skip
    args = [arg for flag, name in names.items() for arg in (f"--{flag}-topic", name)]
    result = run("topics", "create", "--partitions", "3", "--bootstrap-servers",
                 kafka_bootstrap, *args)  # fmt: skip
    assert result.returncode == 0, result.stderr
    again = run("topics", "create", "--bootstrap-servers", kafka_bootstrap, *args)
    assert again.returncode == 0, again.stderr
    assert f"{names['input']}: created, 3 partitions\n" in result.stdout
    assert f"{names['models']}: created, 1 partition, compacted\n" in result.stdout
    # the second run asks for the default 4 partitions: it must report the 3 that exist
    assert f"{names['input']}: exists, 3 partitions (kept)\n" in again.stdout

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(
            list(names.values()))}  # fmt: skip
        configs = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, names["models"])]
        )
    finally:
        admin.close()
    assert described == {
        names["input"]: 3, names["output"]: 3, names["dlq"]: 3, names["labels"]: 3,
        names["monitoring"]: 1, names["models"]: 1,
    }  # fmt: skip
    (by_name,) = configs.values()
    assert by_name[names["models"]]["cleanup.policy"]["value"] == "compact"


def test_user_mistakes_are_one_line_and_exit_2(tmp_path: Path, kafka_bootstrap: str) -> None:
    not_csv = tmp_path / "data.csv"
    not_csv.write_bytes(b'a,b\n"1,2\n')
    cases = [
        (["produce"], "exactly one of --data"),
        (["produce", "--data", str(tmp_path / "nope.csv")], "does not exist"),
        (["produce", "--data", str(not_csv)], "not a readable CSV"),
        (["produce", "--synthetic", "5", "--data", str(not_csv)], "exactly one of"),
        (["produce", "--data", str(not_csv), "--malformed-share", "1.5"], "malformed_share"),
        (["produce", "--data", str(not_csv), "--shift", "x"], "FEATURE=K"),
        (["produce", "--synthetic", "5", "--key-column", "id"], "only applies to --data"),
        (["produce", "--data", str(not_csv), "--log-format", "xml"], "--log-format"),
        (["produce", "--data", str(not_csv), "--rate", "-1"], "rate"),
    ]
    for args, message in cases:
        result = run(*args, "--bootstrap-servers", kafka_bootstrap)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


@BOTH_CLIENTS
def test_malformed_records_are_added_and_every_row_still_sent(
    kafka_bootstrap: str, topic_name: Callable[[str], str], tmp_path: Path
) -> None:
    data = tmp_path / "data.csv"
    write_csv(data, 30)
    topic = topic_name("in")
    result = run("produce", "--data", str(data), "--key-column", "id", "--target", "label",
                 "--malformed-share", "0.25", "--input-topic", topic,
                 "--bootstrap-servers", kafka_bootstrap)  # fmt: skip
    assert result.returncode == 0, result.stderr
    # 30 rows and 9 bad ones between them: floor(39 * 0.25) = 9 of 39 records are bad
    assert result.stdout.strip().splitlines()[-1].startswith("sent 39 records in ")

    records = read_topic(kafka_bootstrap, topic, expected=39, settle_s=0.5)
    assert {r.key.decode() for r in records} >= {f"r{i}" for i in range(30)}
    assert len(records) == 39


@BOTH_CLIENTS
def test_synthetic_records_match_the_served_model(
    kafka_bootstrap: str, topic_name: Callable[[str], str], tmp_path: Path
) -> None:
    from sklearn.dummy import DummyClassifier

    from forestream.registry.local import LocalModelStore
    from forestream.registry.metadata import ModelMetadata
    from forestream.wire.schema import (
        CategoricalFeature,
        CategoricalReference,
        FeatureSchema,
        NumericFeature,
        NumericReference,
        ReferenceStats,
    )

    store = LocalModelStore(tmp_path / "models")
    meta = ModelMetadata(
        name="m",
        created_at="2026-01-01T00:00:00+00:00",
        target="label",
        classes=["a", "b"],
        feature_schema=FeatureSchema(
            features=[
                NumericFeature(name="size", min=0.0, max=10.0),
                CategoricalFeature(name="colour", categories=["red", "blue"]),
            ]
        ),
        reference=ReferenceStats(
            features={
                "size": NumericReference(edges=[5.0], shares=[0.5, 0.5], mean=5.0, std=2.0),
                "colour": CategoricalReference(shares={"red": 0.5, "blue": 0.5}),
            }
        ),
        metrics={},
        data_sha256="0" * 64,
        data_rows=2,
        sklearn_version="test",
    )
    saved = store.save("m", DummyClassifier().fit([[0], [1]], ["a", "b"]), meta, {})
    store.promote("m", saved.version)
    topic = topic_name("in")
    result = run("produce", "--synthetic", "25", "--store", str(store.root), "--name", "m",
                 "--seed", "3", "--input-topic", topic,
                 "--bootstrap-servers", kafka_bootstrap)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "sent 25 records" in result.stdout

    records = read_topic(kafka_bootstrap, topic, expected=25, settle_s=0.5)
    assert len(records) == 25 and len({r.key for r in records}) == 25
    for record in records:
        value = json.loads(record.value)
        assert set(value) == {"size", "colour"}
        assert 0.0 <= value["size"] <= 10.0 and value["colour"] in {"red", "blue"}

    unknown = run("produce", "--synthetic", "5", "--store", str(store.root), "--name", "m",
                  "--version", "v9", "--bootstrap-servers", kafka_bootstrap)  # fmt: skip
    assert unknown.returncode == 2 and "no version v9" in unknown.stderr, unknown.stderr


@BOTH_CLIENTS
def test_refused_records_fail_the_run_with_exit_1(
    kafka_bootstrap: str, topic_name: Callable[[str], str], tmp_path: Path
) -> None:
    import secrets

    from forestream.edge.factory import TopicSpec, ensure_topics

    topic = topic_name("small")
    # the broker refuses any batch over 1 KB on this topic: a real, non-retriable send failure
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, 1, {"max.message.bytes": "1024"})])
    data = tmp_path / "data.csv"
    # random text: no output compression brings it under the limit
    data.write_text("note\nshort\n" + secrets.token_urlsafe(3000) + "\n")
    result = run("produce", "--data", str(data), "--input-topic", topic,
                 "--bootstrap-servers", kafka_bootstrap)  # fmt: skip
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 of 2 records were not delivered"), last
    # the batch holding both was refused as a whole: the short record went again on its own
    (record,) = read_topic(kafka_bootstrap, topic, expected=1, settle_s=0.5)
    assert record.value == b'{"note":"short"}'


@BOTH_CLIENTS
def test_sigterm_stops_a_loop_and_every_reported_record_is_on_the_topic(
    kafka_bootstrap: str, topic_name: Callable[[str], str], tmp_path: Path
) -> None:
    import re
    import signal

    data = tmp_path / "data.csv"
    write_csv(data, 10)
    topic = topic_name("in")
    proc = subprocess.Popen(
        [*CLI, "produce", "--data", str(data), "--loop", "--rate", "200", "--input-topic", topic,
         "--bootstrap-servers", kafka_bootstrap],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
    )  # fmt: skip
    try:
        read_topic(kafka_bootstrap, topic, expected=30, timeout_s=60)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    match = re.search(r"sent (\d+) records in .* \(stopped early\)", out)
    assert match, out
    sent = int(match.group(1))
    records = read_topic(kafka_bootstrap, topic, expected=sent, settle_s=1.0)
    assert len(records) == sent >= 30
