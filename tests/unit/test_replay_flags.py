"""Replay's flag checks that need no broker: topics, --resume, help text, the CLI's exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from forestream.cli import app
from forestream.errors import UserError
from forestream.worker.replay import check_resume_flags, check_topics

ROOT = Path(__file__).resolve().parents[2]


def _forestream(*args: str) -> subprocess.CompletedProcess[str]:
    # an unreachable broker: every case here must be refused before any connection is tried
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORESTREAM_")}
    env["FORESTREAM_BOOTSTRAP_SERVERS"] = "127.0.0.1:1"
    return subprocess.run(
        [sys.executable, "-m", "forestream", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )


def test_three_different_legal_topics_pass() -> None:
    check_topics("in", "out", "out.dlq")


@pytest.mark.parametrize(
    ("output", "dlq", "message"),
    [
        ("in", "x.dlq", "--output-topic 'in' is the input topic"),
        ("out", "in", "--dlq-topic 'in' is the input topic: the replay would re-read its own"),
        ("out", "out", "--dlq-topic 'out' is the output topic"),
        ("bad topic!", "x", "--output-topic 'bad topic!' is not a legal Kafka topic name"),
        ("out", "a/b", "--dlq-topic 'a/b' is not a legal Kafka topic name"),
        ("out", "x" * 250, "--dlq-topic 'x+' is not a legal"),
    ],
)
def test_output_dlq_and_input_topics_must_differ_and_be_legal(
    output: str, dlq: str, message: str
) -> None:
    with pytest.raises(UserError, match=message):
        check_topics("in", output, dlq)


def test_a_defaulted_dlq_topic_is_named_as_such() -> None:
    with pytest.raises(UserError, match=r"the default --dlq-topic \(<output>.dlq\) 'a.dlq'"):
        check_topics("a.dlq", "a", "a.dlq", "the default --dlq-topic (<output>.dlq)")


def test_resume_refuses_every_flag_the_checkpoint_fixes() -> None:
    check_resume_flags(Path("cp.json"), {"--output-topic": None, "--into-live": False})
    with pytest.raises(
        UserError, match=r"--resume cp.json: the checkpoint fixes --output-topic, --into-live;"
    ):
        check_resume_flags(
            Path("cp.json"), {"--output-topic": "o", "--dlq-topic": None, "--into-live": True}
        )


@pytest.mark.parametrize(
    "flag",
    [
        ["--output-topic", "o"],
        ["--dlq-topic", "d"],
        ["--model-version", "v1"],
        ["--into-live"],
        ["--input-topic", "i"],
        ["--store", "s"],
        ["--name", "n"],
        ["--checkpoint", "c.json"],
        ["--from-offset", "3"],
        ["--partitions", "0"],
        ["--guarantee", "exactly-once"],
        ["--input-format", "json"],
        ["--output-format", "json"],
    ],
)
def test_resume_with_a_flag_the_checkpoint_fixes_exits_2(flag: list[str], tmp_path: Path) -> None:
    done = _forestream("replay", "--resume", str(tmp_path / "cp.json"), *flag)
    assert done.returncode == 2, done.stderr
    assert f"the checkpoint fixes {flag[0]}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--from-time", "99999999999999999999"], "--from-time '99999999999999999999': out of"),
        (["--to-time=-1"], "--to-time '-1': out of range"),
        (["--from-offset", "10", "--to-offset", "5"], "the range is inverted"),
        (
            ["--from-time", "2030-01-01T00:00:00Z", "--to-time", "2020-01-01T00:00:00Z"],
            "is after --to-time",
        ),
        (["--output-topic", "in"], "is the input topic"),
        (["--dlq-topic", "in"], "--dlq-topic 'in' is the input topic"),
        (["--guarantee", "exactly_once"], "invalid setting guarantee"),
        (["--output-format", "avro"], "--output-format avro needs FORESTREAM_SCHEMA_REGISTRY_URL"),
        (["--input-format", "xml"], "invalid setting input_format"),
    ],
)
def test_bad_replay_flags_are_one_line_and_exit_2(
    flags: list[str], message: str, tmp_path: Path
) -> None:
    base = ["replay", "--input-topic", "in", "--store", str(tmp_path)]
    if "--output-topic" not in flags:
        base += ["--output-topic", "out"]
    done = _forestream(*base, *flags)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def _replay_option_help(name: str) -> str:
    command = typer.main.get_command(app)
    replay = command.commands["replay"]  # type: ignore[attr-defined]
    (option,) = [p for p in replay.params if name in p.opts]
    return option.help or ""


def test_output_topic_help_claims_no_env_twin() -> None:
    # FORESTREAM_OUTPUT_TOPIC is the live predictions topic; replay never reads it as its output
    assert "[env" not in _replay_option_help("--output-topic")
    assert "[env FORESTREAM_INPUT_TOPIC]" in _replay_option_help("--input-topic")


def test_the_live_topic_from_the_env_is_not_taken_as_the_output_topic(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORESTREAM_")}
    env |= {"FORESTREAM_OUTPUT_TOPIC": "live", "FORESTREAM_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    done = subprocess.run(
        [sys.executable, "-m", "forestream", "replay", "--store", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert "--output-topic is required" in done.stderr
    help_text = " ".join(_forestream("replay", "--help").stdout.split())
    assert "[env FORESTREAM_OUTPUT_TOPIC]" not in help_text


def test_the_trust_flags_reach_replays_loader(tmp_path: Path) -> None:
    """Through the real CLI: an unsigned version is refused, then loaded under
    ``--allow-unsigned`` (the run goes on to the broker, unreachable here); ``--verify-key``
    names the key it is checked with."""
    from tests.worker_support import make_frame, save_model

    save_model(tmp_path, "m", make_frame(150, seed=9), trees=3, signed=False)
    args = ("replay", "--store", str(tmp_path), "--name", "m", "--input-topic", "in",
            "--output-topic", "out")  # fmt: skip
    refused = _forestream(*args, "--verify-key", str(tmp_path / "verify.pub"))
    assert refused.returncode != 0 and "verify.pub" in refused.stderr, refused.stderr
    refused = _forestream(*args)
    assert refused.returncode != 0 and "not signed" in refused.stderr, refused.stderr
    allowed = _forestream(*args, "--allow-unsigned")
    assert allowed.returncode != 0 and "not signed" not in allowed.stderr, allowed.stderr
    assert "127.0.0.1:1" in allowed.stderr, allowed.stderr


def test_a_resumed_replay_reads_its_formats_from_the_checkpoint(tmp_path: Path) -> None:
    """The checkpoint's formats are the resumed run's: an Avro one needs the registry."""
    from forestream.worker.replay.checkpoint import Checkpoint

    path = tmp_path / "cp.json"
    state = Checkpoint("in", "out", "out.dlq", str(tmp_path), "m", "v1", {0: (0, 9)})
    state.input_format = "avro"
    state.save(path)
    done = _forestream("replay", "--resume", str(path))
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        f"error: --resume {path}: --input-format avro needs FORESTREAM_SCHEMA_REGISTRY_URL "
        "(`forestream registry start` prints a local one)\n"
    )
