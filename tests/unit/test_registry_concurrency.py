"""Registry writers one at a time: the store's lock, a history that follows the models topic,
artifact checks without unpickling, and a follower that never swaps in a withdrawn version."""

from __future__ import annotations

import hashlib
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from forestream.errors import ArtifactRejected, UserError
from forestream.registry.local import LocalModelStore
from forestream.registry.metadata import ARTIFACT, METADATA, ModelMetadata, pickled_class
from forestream.registry.signing import Trust
from forestream.worker.models import ModelFollower
from tests.unit.test_worker_models import Loader, event
from tests.worker_support import ROOT, fit_pipeline, make_frame, save_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelMetadata]:
    store = tmp_path_factory.mktemp("saved") / "store"
    _, meta = save_model(store, "m", make_frame(120), trees=3)
    return store, meta


def hold_lock(store: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process (another registry command) holding the store's lock."""
    code = (
        "import sys, time\n"
        "from forestream.registry.local import LocalModelStore\n"
        "with LocalModelStore(sys.argv[1]).lock('m'):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(float(sys.argv[2]))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(store), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_the_lock_makes_a_second_writer_wait_for_the_first(tmp_path: Path) -> None:
    holder = hold_lock(tmp_path, 1.0)
    started = time.monotonic()
    with LocalModelStore(tmp_path).lock("m", timeout_s=30) as locked:
        waited = time.monotonic() - started
        assert locked
    assert waited > 0.5, f"acquired after {waited:.2f}s while another process held it for 1s"
    assert holder.wait(timeout=30) == 0
    assert (tmp_path / "m" / ".lock").is_file()


def test_a_lock_held_too_long_is_one_line_naming_it(tmp_path: Path) -> None:
    holder = hold_lock(tmp_path, 30.0)
    try:
        with (
            pytest.raises(UserError, match=r"another registry command has held .*m/\.lock"),
            LocalModelStore(tmp_path).lock("m", timeout_s=0.3),
        ):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_writer_is_free_at_once(tmp_path: Path) -> None:
    holder = hold_lock(tmp_path, 30.0)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with LocalModelStore(tmp_path).lock("m", timeout_s=0.5) as locked:
        assert locked


def test_following_the_topic_repairs_the_history_and_replays_in_its_order(
    tmp_path: Path,
) -> None:
    store = LocalModelStore(tmp_path)
    for seed in range(3):
        save_model(tmp_path, "m", make_frame(60, seed=seed), trees=2)
    (tmp_path / "m" / "promotions.jsonl").unlink()
    store.record("m", "promote", "v1", offset=0)
    store.record("m", "promote", "v2", offset=1)
    assert not store.follow("m", "v2", "promote", offset=1)  # agrees: nothing written
    assert store.follow("m", "v3", "promote", offset=5)  # the topic knows a newer promotion
    assert store.history("m")[-1] == {
        "action": "promote",
        "version": "v3",
        "at": store.history("m")[-1]["at"],
        "source": "models topic",
        "offset": 5,
    }
    assert (store.served("m"), store.previously_served("m")) == ("v3", "v2")
    store.record("m", "rollback", "v2")  # a rollback to the previous version pops
    assert (store.served("m"), store.previously_served("m")) == ("v2", "v1")
    # a rollback recorded from the topic to a version that is not the previous one (another
    # writer's order) still says what is served after it
    store.follow("m", "v3", "rollback")
    assert (store.served("m"), store.previously_served("m")) == ("v3", "v2")


def test_verify_artifact_passes_a_saved_model_and_names_its_class(
    saved: tuple[Path, ModelMetadata],
) -> None:
    store, meta = saved
    checked = LocalModelStore(store).verify_artifact("m", meta.version)
    assert checked == meta
    data = (store / "m" / meta.version / ARTIFACT).read_bytes()
    assert pickled_class(data) == "sklearn.pipeline.Pipeline"


def test_pickled_class_reads_uncompressed_and_gzip_artifacts_and_refuses_other_objects() -> None:
    import gzip
    import io

    import joblib

    pipeline = fit_pipeline(make_frame(60), trees=2)
    for compress in (0, ("gzip", 3)):
        buffer = io.BytesIO()
        joblib.dump(pipeline, buffer, compress=compress)
        assert pickled_class(buffer.getvalue()) == "sklearn.pipeline.Pipeline"
    assert pickled_class(pickle.dumps({"just": "a dict"})) is None
    assert pickled_class(gzip.compress(pickle.dumps([1, 2]))) is None
    assert pickled_class(b"\x78garbage") is None
    assert pickled_class(b"BZh9...") == ""  # another joblib codec: not judged here


class _Marker:
    """Unpickling this creates a file: proof of whether bytes were ever unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def test_verify_artifact_refuses_without_ever_unpickling(
    saved: tuple[Path, ModelMetadata], tmp_path: Path
) -> None:
    store_dir = Path(shutil.copytree(saved[0], tmp_path / "store"))
    store, meta = LocalModelStore(store_dir), saved[1]
    folder = store_dir / "m" / meta.version
    marker = tmp_path / "pwned"
    (folder / ARTIFACT).write_bytes(pickle.dumps(_Marker(str(marker))))
    with pytest.raises(ArtifactRejected, match="sha256 mismatch"):
        store.verify_artifact("m", meta.version)

    not_a_model = pickle.dumps({"just": "a dict"})
    (folder / ARTIFACT).write_bytes(not_a_model)
    patched = meta.model_copy(
        update={"artifact_sha256": hashlib.sha256(not_a_model).hexdigest(), "signature": None}
    )
    (folder / METADATA).write_text(patched.model_dump_json())
    with pytest.raises(ArtifactRejected, match="not a pickled model"):
        store.verify_artifact("m", meta.version, trust=Trust(allow_unsigned=True))
    with pytest.raises(ArtifactRejected, match="not signed"):
        store.verify_artifact("m", meta.version)
    assert not marker.exists()


def test_verifying_an_artifact_imports_no_scikit_learn(saved: tuple[Path, ModelMetadata]) -> None:
    store, meta = saved
    code = (
        "import sys\n"
        "import forestream.cli, forestream.training.publish\n"
        "from forestream.registry.local import LocalModelStore\n"
        f"LocalModelStore(sys.argv[1]).verify_artifact('m', {meta.version!r})\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('sklearn', 'pandas', 'scipy', 'joblib'))\n"
        "print(heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(store)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


def test_a_version_superseded_while_it_loads_is_never_swapped_in() -> None:
    """A rollback withdrawn by its command (it lost a race) arrives as a newer event while its
    version loads: the follower drops the load and keeps serving, or loads the newer one."""
    failures: list[str] = []
    follower = ModelFollower(
        "unused:9092", "models", "m", Loader(), on_load_failure=failures.append
    )
    follower._on_record(b"m", event("v1"))
    assert follower._load_wanted()
    serving = follower.current()

    follower._on_record(b"m", event("v2"))  # announced, then withdrawn back to v1
    assert not follower._load_wanted(refresh=lambda: follower._on_record(b"m", event("v1")))
    assert follower.current() is serving and not follower._needs_load()

    follower._on_record(b"m", event("v2"))  # superseded by yet another version: load that
    assert not follower._load_wanted(refresh=lambda: follower._on_record(b"m", event("v3")))
    assert follower.current() is serving and follower._needs_load()
    assert follower._load_wanted()
    assert follower.current() is not None and follower.current().version == "v3"  # type: ignore[union-attr]
    assert failures == []  # dropping a superseded load is not a failure


class _SettlingReader:
    """A reader (our PartitionReader protocol, not a client) whose partition has no leader
    for its first ``refusals`` offset lookups, as a topic just created can answer."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals

    def assign(self, partitions: list[Any]) -> None:
        pass

    def _lookup(self, partitions: list[Any], offset: int) -> dict[Any, int]:
        from forestream.errors import TransientKafkaError

        if self.refusals > 0:
            self.refusals -= 1
            raise TransientKafkaError("Broker: Not leader for partition")
        return {tp: offset for tp in partitions}

    def beginning_offsets(self, partitions: list[Any]) -> dict[Any, int]:
        return self._lookup(partitions, 0)

    def end_offsets(self, partitions: list[Any]) -> dict[Any, int]:
        return self._lookup(partitions, 0)


def test_reading_the_models_topic_waits_out_a_leader_not_yet_elected() -> None:
    """Seen on librdkafka right after the topic was created: "not leader" is asked again
    within the read timeout, then it is one line naming the topic."""
    from forestream.training.publish import ModelsTopic

    settling = _SettlingReader(refusals=3)
    reader: Any = settling  # our protocol's stand-in
    topic = ModelsTopic("127.0.0.1:9", "models", timeout_s=5, _reader=reader, _partitions=[0])
    state = topic.read("m")
    assert (state.end, state.latest) == (0, None) and settling.refusals == 0

    never_settles: Any = _SettlingReader(10**6)
    never = ModelsTopic(
        "127.0.0.1:9", "models", timeout_s=0.3, _reader=never_settles, _partitions=[0]
    )
    with pytest.raises(UserError, match=r"could not read 'models' at 127\.0\.0\.1:9: .*Not leader"):
        never.read("m")
