"""`forestream train` and `forestream models ...` as a user runs them, on the real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from forestream.registry.local import LocalModelStore
from forestream.training.demo_data import write_penguins_csv
from forestream.wire.messages import ModelEvent
from tests.kafka_helpers import read_topic
from tests.signing_support import SESSION_KEY_ENV

CLI = [sys.executable, "-m", "forestream"]


def run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess; only the broker address, the Kafka client and the session's
    signing keys are inherited from FORESTREAM_* vars."""
    kept = {"FORESTREAM_BOOTSTRAP_SERVERS", "FORESTREAM_KAFKA_DIR", "FORESTREAM_KAFKA_CLIENT"}
    kept |= SESSION_KEY_ENV
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FORESTREAM_") or k in kept}
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=180, cwd=cwd, env=environ | env
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def binary(path: Path) -> Path:
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00garbage")
    return path


FATAL_INPUTS: list[tuple[str, Callable[[Path], Path], list[str], str]] = [
    ("missing file", lambda d: d / "absent.csv", [], "does not exist"),
    ("not a csv", lambda d: binary(d / "x.csv"), [], "is not a readable CSV"),
    (
        "target absent",
        lambda d: write(d / "t.csv", "a,b,label\n1,x,p\n2,y,q\n"),
        ["--target", "species"],
        "target column 'species' not found; columns are: a, b, label",
    ),
    (
        "one class",
        lambda d: write(d / "t.csv", "a,species\n" + "".join(f"{i},s\n" for i in range(20))),
        [],
        "at least two classes, found 1",
    ),
    (
        "too few rows per class",
        lambda d: write(
            d / "t.csv", "a,species\n" + "".join(f"{i},s\n" for i in range(20)) + "99,lonely\n"
        ),
        [],
        "too few rows for a stratified split",
    ),
    (
        "no usable feature",
        lambda d: write(
            d / "t.csv", "const,empty,species\n" + "".join(f"1,,{'ab'[i % 2]}\n" for i in range(20))
        ),
        [],
        "no usable feature left",
    ),
    (
        "continuous target",
        lambda d: write(
            d / "t.csv", "a,species\n" + "".join(f"{i % 7},{i * 0.37:.2f}\n" for i in range(200))
        ),
        [],
        "target 'species' has 200 distinct values in 200 rows: it looks continuous",
    ),
    ("negative seed", lambda d: write_penguins_csv(d / "p.csv"), ["--seed", "-1"], "--seed"),
    (
        "seed too large",
        lambda d: write_penguins_csv(d / "p.csv"),
        ["--seed", "99999999999"],
        "--seed must be between 0 and 4294967295",
    ),
    (
        "model name is a path",
        lambda d: write_penguins_csv(d / "p.csv"),
        ["--name", "../evil"],
        "invalid model name '../evil'",
    ),
]


@pytest.mark.parametrize(
    ("case", "make_data", "extra", "message"), FATAL_INPUTS, ids=[c[0] for c in FATAL_INPUTS]
)
def test_fatal_inputs_exit_2_with_one_line_and_write_nothing(
    tmp_path: Path, case: str, make_data: Callable[[Path], Path], extra: list[str], message: str
) -> None:
    data = make_data(tmp_path)
    args = ["train", "--data", str(data), "--target", "species", *extra]
    result = run(*args, "--store", str(tmp_path / "store"), cwd=tmp_path)
    line = one_error_line(result)
    assert message in line, f"{case}: {line}"
    assert result.stdout == "", f"{case}: the quality report came before the error"
    assert not (tmp_path / "store").exists()
    assert not (tmp_path / ".forestream").exists()


def events(bootstrap: str, topic: str, count: int) -> list[tuple[bytes, ModelEvent]]:
    records = read_topic(bootstrap, topic, expected=count, timeout_s=60, settle_s=0.5)
    assert len(records) == count, [r.value for r in records]
    return [(r.key, ModelEvent.model_validate_json(r.value)) for r in records]


def served_in_list(tmp_path: Path, **env: str) -> dict[str, str]:
    result = run("models", "list", "--json", cwd=tmp_path, **env)
    assert result.returncode == 0, result.stderr
    return {row["version"]: row["stage"] for row in json.loads(result.stdout)}


@pytest.mark.usefixtures("kafka_client")  # the registry commands on both clients
def test_train_publish_promote_rollback_through_the_compacted_topic(
    kafka_bootstrap: str, topic_name: Callable[[str], str], tmp_path: Path
) -> None:
    topic = topic_name("models")
    csv = write_penguins_csv(tmp_path / "penguins.csv")
    env = {"FORESTREAM_MODELS_TOPIC": topic, "FORESTREAM_MODEL_NAME": "penguins"}
    common = ["--data", str(csv), "--target", "species", "--trees", "10"]
    published = run("train", *common, "--publish", cwd=tmp_path, **env)
    assert published.returncode == 0, published.stderr
    assert "data quality" in published.stdout and "accuracy" in published.stdout

    store = LocalModelStore(tmp_path / ".forestream" / "models")
    v1 = store.metadata("penguins", "v1")
    ((key, event),) = events(kafka_bootstrap, topic, 1)
    assert key == b"penguins"
    assert (event.kind, event.name, event.version) == ("published", "penguins", "v1")
    assert event.sha256 == v1.artifact_sha256 and event.serving is None
    assert event.accuracy == v1.metrics["accuracy"]

    promoted = run("train", *common, "--seed", "7", "--promote", cwd=tmp_path, **env)
    assert promoted.returncode == 0, promoted.stderr
    v2 = store.metadata("penguins", "v2")
    _, event = events(kafka_bootstrap, topic, 2)[-1]
    assert (event.kind, event.version) == ("promoted", "v2")
    assert event.serving is not None and event.serving.version == "v2"
    assert event.serving.sha256 == v2.artifact_sha256
    assert served_in_list(tmp_path, **env) == {"v1": "", "v2": "serving"}

    again = run("models", "promote", "v1", cwd=tmp_path, **env)
    assert again.returncode == 0, again.stderr
    _, event = events(kafka_bootstrap, topic, 3)[-1]
    assert (event.kind, event.version, event.serving.version) == ("promoted", "v1", "v1")
    assert served_in_list(tmp_path, **env) == {"v1": "serving", "v2": "previous"}

    back = run("models", "rollback", cwd=tmp_path, **env)
    assert back.returncode == 0, back.stderr
    _, event = events(kafka_bootstrap, topic, 4)[-1]
    assert (event.kind, event.version) == ("rolled_back", "v2")
    assert event.serving is not None and event.serving.sha256 == v2.artifact_sha256
    assert served_in_list(tmp_path, **env)["v2"] == "serving"

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        admin.close()
    (by_name,) = configs.values()
    assert by_name[topic]["cleanup.policy"]["value"] == "compact"


@pytest.mark.usefixtures("kafka_client")
def test_a_tampered_artifact_is_refused_and_not_announced(
    kafka_bootstrap: str, topic_name: Callable[[str], str], tmp_path: Path
) -> None:
    topic = topic_name("models")
    csv = write_penguins_csv(tmp_path / "penguins.csv")
    store_args = ["--store", str(tmp_path / "store"), "--models-topic", topic]
    trained = run(
        "train", "--data", str(csv), "--target", "species", "--trees", "10", "--promote",
        *store_args, cwd=tmp_path,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    artifact = tmp_path / "store" / "model" / "v1" / "model.joblib"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))

    line = one_error_line(run("models", "promote", "v1", *store_args, cwd=tmp_path))
    assert "sha256 mismatch" in line and "refusing to load" in line
    events(kafka_bootstrap, topic, 1)  # only the promotion from training: nothing announced


def test_show_and_list_json_are_machine_readable(tmp_path: Path) -> None:
    written = run("demo-data", "--out", "data/penguins.csv", cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    csv = tmp_path / "data" / "penguins.csv"
    assert written.stdout.strip() == "data/penguins.csv" and csv.is_file()
    trained = run("train", "--data", str(csv), "--target", "species", "--trees", "10", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    shown = run("models", "show", "v1", "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    assert body["metadata"]["version"] == "v1"
    assert body["metadata"]["classes"] == ["Adelie", "Chinstrap", "Gentoo"]
    assert body["quality_report"]["class_counts"]["Adelie"] == 152
    human = run("models", "show", "v1", cwd=tmp_path)
    assert human.returncode == 0 and "data quality" in human.stdout, human.stderr
    listed = json.loads(run("models", "list", "--json", cwd=tmp_path).stdout)
    assert [row["version"] for row in listed] == ["v1"] and listed[0]["stage"] == ""
    line = one_error_line(run("models", "rollback", cwd=tmp_path))
    assert "no previously served version" in line
    line = one_error_line(run("models", "show", "v9", cwd=tmp_path))
    assert "no version v9" in line


@pytest.mark.parametrize("store", ["a-file", "a-file/below", "/proc/forestream-no-such-dir"])
def test_an_unusable_store_is_one_line_before_any_report(tmp_path: Path, store: str) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    csv = write_penguins_csv(tmp_path / "p.csv")
    result = run("train", "--data", str(csv), "--target", "species", "--store", store, cwd=tmp_path)
    line = one_error_line(result)
    assert store in line and ("not a directory" in line or "No such file" in line), line
    assert result.stdout == ""
    for command in (["models", "list"], ["models", "show", "v1"]):
        line = one_error_line(run(*command, "--store", str(tmp_path / "a-file"), cwd=tmp_path))
        assert "a-file is not a directory" in line


def test_broken_store_files_are_named_not_tracebacks_or_ignored(tmp_path: Path) -> None:
    csv = write_penguins_csv(tmp_path / "p.csv")
    for _ in range(2):
        trained = run("train", "--data", str(csv), "--target", "species", "--trees", "3",
                      cwd=tmp_path)  # fmt: skip
        assert trained.returncode == 0, trained.stderr
    model = tmp_path / ".forestream" / "models" / "model"

    report = model / "v1" / "quality_report.json"
    report.write_text("x")
    line = one_error_line(run("models", "show", "v1", cwd=tmp_path))
    assert f"{report.relative_to(tmp_path)}: quality report is not valid JSON" in line

    metadata = model / "v2" / "metadata.json"
    body = json.loads(metadata.read_text())
    del body["feature_schema"]
    metadata.write_text(json.dumps(body))
    for command in (["models", "show", "v2"], ["models", "list"]):
        line = one_error_line(run(*command, cwd=tmp_path))
        assert (
            f"{metadata.relative_to(tmp_path)}: unreadable metadata: feature_schema: Field required"
            in line
        )
    metadata.unlink()  # v2 is no longer a complete version

    history = model / "promotions.jsonl"
    history.write_text("garbage\n")
    for command in (["models", "list"], ["models", "list", "--json"], ["models", "rollback"]):
        line = one_error_line(run(*command, cwd=tmp_path))
        expected = "line 1: not a promotion entry ('garbage')"
        assert f"{history.relative_to(tmp_path)} {expected}" in line, (command, line)

    # a served version pruned by hand: listed, with a warning that workers cannot load it
    history.write_text('{"action": "promote", "version": "v2"}\n')
    listed = run("models", "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "names v2 as served, but" in listed.stderr and "has no such version" in listed.stderr
