"""Replay's exactly-once pieces that need no broker: the setting, the checkpoint's new fields
(and old files without them), and where a resume starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forestream.edge.errors import group_not_authorized
from forestream.errors import NotAuthorized, UserError
from forestream.runtime.settings import load_settings
from forestream.worker.replay import (
    Checkpoint,
    ReplaySettings,
    new_exactly_once_ids,
    settled_ranges,
)

OLD_CHECKPOINT = {
    "input_topic": "in",
    "output_topic": "out",
    "dlq_topic": "out.dlq",
    "model_store": "/models",
    "model_name": "m",
    "model_version": "v2",
    "ranges": {"0": [5, 9], "1": [7, 7]},
}
"""A checkpoint as replays wrote it before exactly-once existed."""


# -- the setting -------------------------------------------------------------------------------


def test_at_least_once_is_the_default_and_the_env_twin_is_the_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FORESTREAM_GUARANTEE", raising=False)
    assert load_settings(ReplaySettings).guarantee == "at-least-once"
    monkeypatch.setenv("FORESTREAM_GUARANTEE", "exactly-once")
    assert load_settings(ReplaySettings).exactly_once
    assert load_settings(ReplaySettings, guarantee="at-least-once").guarantee == "at-least-once"


@pytest.mark.parametrize("value", ["exactly_once", "at-most-once", ""])
def test_an_unknown_guarantee_is_one_line_naming_the_setting(value: str) -> None:
    with pytest.raises(UserError, match=r"invalid setting guarantee"):
        load_settings(ReplaySettings, guarantee=value)


def test_the_live_workers_group_and_transactional_id_are_never_the_replays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A shell set up for a worker must not make a replay commit into the live group or fence
    the live worker's producer."""
    monkeypatch.setenv("FORESTREAM_GROUP", "forestream-workers")
    monkeypatch.setenv("FORESTREAM_TRANSACTIONAL_ID", "live-worker-0")
    settings = load_settings(ReplaySettings, guarantee="exactly-once")
    assert not hasattr(settings, "group") and not hasattr(settings, "transactional_id")
    group, transactional_id = new_exactly_once_ids()
    assert group.startswith("forestream-replay-") and transactional_id == group
    assert new_exactly_once_ids() != (group, transactional_id)


def test_a_replay_group_acl_error_names_the_prefix_not_the_workers_setting() -> None:
    error = group_not_authorized(None, "forestream-replay-0123")
    assert isinstance(error, NotAuthorized)
    assert "prefixed ACL on 'forestream-replay-'" in str(error)
    assert "FORESTREAM_GROUP" not in str(error)
    assert "FORESTREAM_GROUP" in str(group_not_authorized(None, "forestream-workers"))


# -- the checkpoint ----------------------------------------------------------------------------


def test_an_exactly_once_checkpoint_keeps_its_group_and_transactional_id(tmp_path: Path) -> None:
    state = Checkpoint(
        "in",
        "out",
        "out.dlq",
        "/models",
        "m",
        "v2",
        {0: (5, 9)},
        guarantee="exactly-once",
        group="forestream-replay-abc",
        transactional_id="forestream-replay-abc",
    )
    path = tmp_path / "cp.json"
    state.save(path)
    body = json.loads(path.read_text())
    assert body["guarantee"] == "exactly-once"
    assert body["group"] == body["transactional_id"] == "forestream-replay-abc"
    assert Checkpoint.load(path) == state


def test_an_at_least_once_checkpoint_names_its_guarantee_and_no_ids(tmp_path: Path) -> None:
    path = tmp_path / "cp.json"
    Checkpoint("in", "out", "out.dlq", "/models", "m", "v2", {0: (5, 9)}).save(path)
    body = json.loads(path.read_text())
    assert body["guarantee"] == "at-least-once"
    assert "group" not in body and "transactional_id" not in body


def test_a_checkpoint_written_before_exactly_once_resumes_at_least_once(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps(OLD_CHECKPOINT))
    state = Checkpoint.load(path)
    assert state.guarantee == "at-least-once" and not state.exactly_once
    assert state.group is None and state.transactional_id is None
    assert state.ranges == {0: (5, 9), 1: (7, 7)}
    state.save(path)  # saved again on its first batch: now it says so
    assert json.loads(path.read_text())["guarantee"] == "at-least-once"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"guarantee": "exactly-once"}, "exactly-once checkpoint without its group"),
        (
            {"guarantee": "exactly-once", "group": "g", "transactional_id": ""},
            "exactly-once checkpoint without its group",
        ),
        (
            {"guarantee": "exactly-once", "group": 7, "transactional_id": "t"},
            "exactly-once checkpoint without its group",
        ),
        ({"guarantee": "at-most-once"}, "names guarantee 'at-most-once'"),
    ],
)
def test_a_checkpoint_that_cannot_resume_safely_is_one_user_error(
    tmp_path: Path, extra: dict[str, object], message: str
) -> None:
    path = tmp_path / "cp.json"
    path.write_text(json.dumps(OLD_CHECKPOINT | extra))
    with pytest.raises(UserError, match=message):
        Checkpoint.load(path)


# -- where a resume starts ---------------------------------------------------------------------


def test_the_group_wins_over_a_file_that_lags() -> None:
    assert settled_ranges({0: (10, 100)}, {0: 40}) == {0: (40, 100)}


def test_a_partition_the_group_never_committed_keeps_the_files_offset() -> None:
    """Nothing committed yet, or the idle group's offsets expired on the broker."""
    assert settled_ranges({0: (10, 100), 1: (0, 5)}, {0: None}) == {0: (10, 100), 1: (0, 5)}


def test_a_file_past_the_group_only_skipped_offsets_without_records() -> None:
    """A partition closed at its end behind transaction markers: the group's offset is that of
    the last record, the file's the end; starting over from the group would read nothing."""
    assert settled_ranges({0: (100, 100)}, {0: 97}) == {0: (100, 100)}


def test_an_offset_past_the_end_never_widens_the_range() -> None:
    assert settled_ranges({0: (10, 100)}, {0: 250}) == {0: (100, 100)}


def test_a_committed_offset_of_zero_counts() -> None:
    assert settled_ranges({0: (0, 10)}, {0: 0}) == {0: (0, 10)}
