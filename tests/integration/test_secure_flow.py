"""The product against a secured cluster, as a user runs it: SASL_SSL + SCRAM, mutual TLS, an
outside client (kcat) with the same credentials, and the configuration mistakes that must end a
command in one line, with their documented exit code, within seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from forestream.errors import AuthenticationFailed, NotAuthorized, TlsFailed
from forestream.exit_codes import exit_code_for
from forestream.local.kafka import SecureBrokerInfo
from forestream.runtime.settings import CommonSettings, load_settings
from forestream.training.demo_data import write_penguins_csv
from tests.kafka_helpers import read_topic
from tests.signing_support import SESSION_KEY_ENV

pytestmark = pytest.mark.usefixtures("kafka_client")  # every test on both clients

CLI = [sys.executable, "-m", "forestream.cli"]
FATAL_WITHIN_S = 10.0


def _env(security: dict[str, str], **extra: str) -> dict[str, str]:
    """The user's environment: only the secured cluster's FORESTREAM_* settings, the Kafka
    client this run is on (``kafka_client``) and the session's signing keys."""
    kept = {"FORESTREAM_KAFKA_CLIENT", *SESSION_KEY_ENV}
    base = {k: v for k, v in os.environ.items() if not k.startswith("FORESTREAM_") or k in kept}
    return base | security | extra


def _cli(
    *args: str, env: dict[str, str], cwd: Path, timeout_s: float = 180
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout_s
    )
    return done, time.monotonic() - started


def _connection(security: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> object:
    """The same settings, read the way every command reads them."""
    for name, value in security.items():
        monkeypatch.setenv(name, value)
    return load_settings(CommonSettings).kafka()


def _topics(topic_name: Callable[[str], str]) -> dict[str, str]:
    return {role: topic_name(role) for role in ("in", "out", "dlq", "models", "labels", "mon")}


def _topic_flags(t: dict[str, str]) -> list[str]:
    return [
        "--input-topic", t["in"], "--output-topic", t["out"], "--dlq-topic", t["dlq"],
        "--models-topic", t["models"], "--labels-topic", t["labels"],
        "--monitoring-topic", t["mon"],
    ]  # fmt: skip


def _kcat_plain(info: SecureBrokerInfo, topic: str, lines: list[str], tmp_path: Path) -> None:
    """Debian's kcat (librdkafka 2.0.2) cannot do SCRAM against Kafka 4: it logs in with PLAIN."""
    config = tmp_path / "kcat.conf"
    config.write_text(
        "security.protocol=SASL_SSL\nsasl.mechanism=PLAIN\n"
        f"sasl.username={info.username}\nsasl.password={info.password_file.read_text().strip()}\n"
        f"ssl.ca.location={info.ca_file}\n"
    )
    config.chmod(0o600)
    done = subprocess.run(
        ["kcat", "-P", "-b", info.address, "-t", topic, "-F", str(config), "-K", "\t", "-z", "lz4"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("mode", ["sasl_ssl_scram", "mutual_tls"])
def test_train_publish_score_over_a_secured_cluster(
    secure_kafka: SecureBrokerInfo,
    topic_name: Callable[[str], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    security = secure_kafka.env() if mode == "sasl_ssl_scram" else secure_kafka.mtls_env()
    env = _env(security)
    t = _topics(topic_name)
    store = ["--store", str(tmp_path / "store"), "--name", "penguins"]
    csv = tmp_path / "penguins.csv"
    write_penguins_csv(csv)

    created, _ = _cli(
        "topics", "create", *_topic_flags(t), "--partitions", "2", env=env, cwd=tmp_path
    )
    assert created.returncode == 0, created.stderr
    trained, _ = _cli("train", "--data", str(csv), "--target", "species", "--trees", "10",
                      "--promote", "--models-topic", t["models"], *store,
                      env=env, cwd=tmp_path)  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    produced, _ = _cli("produce", "--data", str(csv), "--target", "species",
                       "--input-topic", t["in"], env=env, cwd=tmp_path)  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    sent = len(pd.read_csv(csv))
    outside = []
    if mode == "sasl_ssl_scram":  # an outside client (librdkafka) with the same user
        rows = pd.read_csv(csv).drop(columns=["species"]).dropna().head(20)
        outside = [f"kcat-{i}\t{json.dumps(row.to_dict())}" for i, (_, row) in
                   enumerate(rows.iterrows())]  # fmt: skip
        _kcat_plain(secure_kafka, t["in"], outside, tmp_path)
    total = sent + len(outside)

    worker, _ = _cli("worker", *_topic_flags(t), *store, "--group", topic_name("g"),
                     "--max-records", str(total), "--log-format", "json",
                     env=env, cwd=tmp_path, timeout_s=240)  # fmt: skip
    assert worker.returncode == 0, worker.stderr[-3000:]

    conn = _connection(security, monkeypatch)
    dead = read_topic(conn, t["dlq"], timeout_s=60)
    predictions = read_topic(conn, t["out"], timeout_s=60)
    assert len(predictions) + len(dead) == total, (len(predictions), len(dead), total)
    assert len(predictions) >= total - 20  # a few penguins rows lack required features
    keys = {r.key for r in predictions}
    for line in outside:
        assert line.split("\t")[0].encode() in keys, "a kcat record was not scored"


def _promoted_model(
    info: SecureBrokerInfo, t: dict[str, str], store: list[str], tmp_path: Path
) -> None:
    csv = tmp_path / "penguins.csv"
    write_penguins_csv(csv)
    trained, _ = _cli("train", "--data", str(csv), "--target", "species", "--trees", "5",
                      "--promote", "--models-topic", t["models"], *store,
                      env=_env(info.env()), cwd=tmp_path)  # fmt: skip
    assert trained.returncode == 0, trained.stderr


def _outsider_env(info: SecureBrokerInfo) -> dict[str, str]:
    """The secured cluster's settings as the principal that holds no ACL until granted one."""
    return _env(
        info.env(),
        FORESTREAM_SASL_USERNAME=info.outsider_username,
        FORESTREAM_SASL_PASSWORD_FILE=str(info.outsider_password_file),
    )


def _grant_outsider(
    info: SecureBrokerInfo,
    monkeypatch: pytest.MonkeyPatch,
    resource: str,
    name: str,
    operation: str = "ALL",
    pattern: str = "PREFIXED",
) -> None:
    """Allow the outsider ``operation`` on ``resource`` (a kafka-python ``ResourceType`` name)
    named ``name``, as the cluster's admin."""
    from kafka.admin import (
        ACL,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePattern,
        ResourceType,
    )

    from forestream.edge.factory import admin_client

    admin = admin_client(_connection(info.env(), monkeypatch))
    try:
        admin.create_acls(
            [
                ACL(
                    principal=f"User:{info.outsider_username}",
                    host="*",
                    operation=ACLOperation[operation],
                    permission_type=ACLPermissionType.ALLOW,
                    resource_pattern=ResourcePattern(
                        ResourceType[resource], name, ACLResourcePatternType[pattern]
                    ),
                )
            ]
        )
    finally:
        admin.close()


def _assert_one_fatal_line(
    done: subprocess.CompletedProcess[str], took_s: float, exit_code: int, says: str
) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == exit_code, done.stderr[-3000:]
    assert took_s < FATAL_WITHIN_S, f"took {took_s:.1f}s to stop"
    assert lines and lines[-1].startswith("error: ") and says in lines[-1], lines[-5:]
    # no retry storm: one fatal line, not a log of attempts
    assert len(lines) <= 6, "\n".join(lines)


@pytest.mark.edge  # fatal classification: each adapter maps the refusal
def test_wrong_password_ends_the_worker_with_exit_3(
    secure_kafka: SecureBrokerInfo, topic_name: Callable[[str], str], tmp_path: Path
) -> None:
    t = _topics(topic_name)
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    env = _env(secure_kafka.env(), FORESTREAM_SASL_PASSWORD_FILE=str(wrong))
    done, took = _cli("worker", *_topic_flags(t), "--store", str(tmp_path / "s"), env=env,
                      cwd=tmp_path)  # fmt: skip
    # kafka-python sees only that no broker let it in; librdkafka reports the refusal itself
    _assert_one_fatal_line(
        done, took, exit_code_for(AuthenticationFailed), "as 'forestream' with SCRAM-SHA-512"
    )
    assert "FORESTREAM_SASL_PASSWORD" in done.stderr.strip().splitlines()[-1]
    assert "not-the-password" not in done.stdout + done.stderr


@pytest.mark.edge  # fatal classification: each adapter maps the refusal
def test_untrusted_ca_ends_the_worker_with_exit_4(
    secure_kafka: SecureBrokerInfo, topic_name: Callable[[str], str], tmp_path: Path
) -> None:
    t = _topics(topic_name)
    env = _env(secure_kafka.env(), FORESTREAM_SSL_CAFILE=str(secure_kafka.untrusted_ca_file))
    done, took = _cli("worker", *_topic_flags(t), "--store", str(tmp_path / "s"), env=env,
                      cwd=tmp_path)  # fmt: skip
    _assert_one_fatal_line(done, took, exit_code_for(TlsFailed), "is not trusted")
    mtls = _env(secure_kafka.mtls_env(), FORESTREAM_SSL_CAFILE=str(secure_kafka.untrusted_ca_file))
    done, took = _cli("produce", "--synthetic", "3", "--input-topic", t["in"], env=mtls,
                      cwd=tmp_path)  # fmt: skip
    _assert_one_fatal_line(done, took, exit_code_for(TlsFailed), "is not trusted")


@pytest.mark.edge  # fatal classification: each adapter maps the refusal
def test_missing_acls_end_commands_with_exit_5(
    secure_kafka: SecureBrokerInfo,
    topic_name: Callable[[str], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t = _topics(topic_name)
    store = ["--store", str(tmp_path / "store"), "--name", "m"]
    _promoted_model(secure_kafka, t, store, tmp_path)
    outsider = _outsider_env(secure_kafka)
    # no ACL at all: even the topics are out of sight
    done, took = _cli("topics", "create", *_topic_flags(t), env=outsider, cwd=tmp_path)
    _assert_one_fatal_line(done, took, exit_code_for(NotAuthorized), "not authorized on topic")

    # every topic of this test granted, the consumer group not: the worker stops at the join
    prefix = t["in"].rsplit(".", 1)[0]
    _grant_outsider(secure_kafka, monkeypatch, "TOPIC", prefix)
    group = topic_name("group")
    started = time.monotonic()
    done, _ = _cli("worker", *_topic_flags(t), *store, "--group", group, "--log-format", "json",
                   env=outsider, cwd=tmp_path)  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == exit_code_for(NotAuthorized), done.stderr[-3000:]
    assert lines[-1].startswith("error: not authorized on consumer group"), lines[-3:]
    fatal = [json.loads(x) for x in lines if '"kafka_fatal"' in x]
    assert len(fatal) == 1 and fatal[0]["exit_code"] == exit_code_for(NotAuthorized)
    print(
        f"missing group ACL: worker ended in {time.monotonic() - started:.1f}s (incl. model load)"
    )


@pytest.mark.edge  # fatal classification: each adapter maps the refusal
def test_exactly_once_needs_the_transactional_id_acl_and_then_delivers_once(
    secure_kafka: SecureBrokerInfo,
    topic_name: Callable[[str], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A principal with its topics and group granted but not its transactional id: exit 5 in
    one line naming the id. Granted that too: every input scored once, read committed."""
    t = _topics(topic_name)
    store = ["--store", str(tmp_path / "store"), "--name", "m"]
    admin_env = _env(secure_kafka.env())
    created, _ = _cli("topics", "create", *_topic_flags(t), "--partitions", "2",
                      env=admin_env, cwd=tmp_path)  # fmt: skip
    assert created.returncode == 0, created.stderr
    _promoted_model(secure_kafka, t, store, tmp_path)
    csv = tmp_path / "penguins.csv"
    produced, _ = _cli("produce", "--data", str(csv), "--target", "species",
                       "--input-topic", t["in"], env=admin_env, cwd=tmp_path)  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    total = len(pd.read_csv(csv))

    prefix = t["in"].rsplit(".", 1)[0]
    group, transactional_id = f"{prefix}.group", f"{prefix}.tx"
    outsider = _outsider_env(secure_kafka)

    _grant_outsider(secure_kafka, monkeypatch, "TOPIC", prefix)
    _grant_outsider(secure_kafka, monkeypatch, "GROUP", prefix)
    worker = ["worker", *_topic_flags(t), *store, "--group", group, "--log-format", "json",
              "--guarantee", "exactly-once", "--transactional-id", transactional_id]  # fmt: skip
    done, _ = _cli(*worker, env=outsider, cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == exit_code_for(NotAuthorized), done.stderr[-3000:]
    assert lines[-1].startswith("error: not authorized"), lines[-3:]
    assert f"transactional id {transactional_id!r}" in lines[-1], lines[-1]

    _grant_outsider(secure_kafka, monkeypatch, "TRANSACTIONAL_ID", prefix)
    done, _ = _cli(*worker, "--max-records", str(total), env=outsider, cwd=tmp_path,
                   timeout_s=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    conn = _connection(secure_kafka.env(), monkeypatch)
    outputs = read_topic(conn, t["out"], timeout_s=60) + read_topic(conn, t["dlq"], timeout_s=60)
    sources = [(r.partition, json.loads(r.value)["source"]["offset"]) for r in outputs
               if r.topic == t["out"]]  # fmt: skip
    assert len(outputs) == total, (len(outputs), total)
    assert len(sources) == len(set(sources)), "a prediction was read twice"


@pytest.mark.edge  # fatal classification: each adapter maps the refusal
def test_produce_without_the_write_acl_ends_with_exit_5(
    secure_kafka: SecureBrokerInfo,
    topic_name: Callable[[str], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The input topic exists and the principal may DESCRIBE it, not WRITE to it. Since Kafka
    3.0 an idempotent producer needs WRITE on some topic to get its producer id: the broker
    refuses that as a cluster authorization failure, which kafka-python wraps in a plain
    KafkaError and librdkafka raises from ``flush`` as fatal. Either way `produce` stops in
    one line naming the ACL, with its exit code."""
    t = _topics(topic_name)
    created, _ = _cli("topics", "create", *_topic_flags(t), "--partitions", "2",
                      env=_env(secure_kafka.env()), cwd=tmp_path)  # fmt: skip
    assert created.returncode == 0, created.stderr
    _grant_outsider(secure_kafka, monkeypatch, "TOPIC", t["in"], "DESCRIBE", "LITERAL")
    outsider = _outsider_env(secure_kafka)
    csv = write_penguins_csv(tmp_path / "penguins.csv")
    done, took = _cli("produce", "--data", str(csv), "--target", "species", "--input-topic",
                      t["in"], env=outsider, cwd=tmp_path)  # fmt: skip
    # refused at the producer id, or (when an earlier test granted this principal WRITE on
    # other topics, which is enough for an id) at the records themselves: one line either way
    _assert_one_fatal_line(done, took, exit_code_for(NotAuthorized), "error: not authorized ")
    assert "WRITE and DESCRIBE on" in done.stderr.strip().splitlines()[-1]
