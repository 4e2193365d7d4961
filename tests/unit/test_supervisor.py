"""forestream.worker.supervisor with real child processes: restarts, per-child index, SIGTERM
forwarding.

Children are tiny ``python -c`` scripts that record what happened in files under tmp_path.
Each arms ``signal.alarm`` so that, whatever goes wrong, no child outlives the test for long,
and every test kills whatever pids it learned about in ``finally``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from forestream.errors import UserError
from forestream.worker.supervisor import (
    WORKER_INDEX_ENV,
    WORKER_PROCESSES_ENV,
    describe_exit,
    restart_delay,
    supervise,
)

WAIT_S = 20.0

# Crashes (exit 3, then by SIGKILL) on its first two starts per slot, then exits 0.
CRASH_TWICE = textwrap.dedent(
    """
    import os, pathlib, signal, sys
    signal.alarm(30)
    out = pathlib.Path(sys.argv[1])
    index = os.environ["FORESTREAM_WORKER_INDEX"]
    starts = out / f"starts-{index}"
    with starts.open("a") as f:
        f.write(f"{os.getpid()}\\n")
    n = len(starts.read_text().split())
    if n == 1:
        sys.exit(3)
    if n == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    """
)

# Records its index env, then exits 0 (= "told to stop": never restarted).
RECORD_ENV = textwrap.dedent(
    """
    import json, os, pathlib, sys
    out = pathlib.Path(sys.argv[1])
    env = {k: v for k, v in os.environ.items() if k.startswith("FORESTREAM_WORKER_")}
    (out / f"env-{os.getpid()}.json").write_text(json.dumps(env))
    """
)

# Waits for SIGTERM; on it writes a marker and exits 0 (or ignores it when argv[2] == "stuck").
AWAIT_SIGTERM = textwrap.dedent(
    """
    import os, pathlib, signal, sys
    signal.alarm(60)
    out = pathlib.Path(sys.argv[1])
    index = os.environ["FORESTREAM_WORKER_INDEX"]
    def on_term(signum, frame):
        (out / f"sigterm-{index}").write_text(str(os.getpid()))
        if sys.argv[2] != "stuck":
            sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    # atomic: the test signals once the file exists, which must mean it holds the pid (a
    # SIGTERM between create and write left it empty, seen once in CI)
    (out / f".ready-{index}").write_text(str(os.getpid()))
    os.replace(out / f".ready-{index}", out / f"ready-{index}")
    while True:
        signal.pause()
    """
)

# Slot 0 crashes once; slot 1 waits until the supervisor reaped it (its /proc entry is gone,
# zombies keep theirs), then SIGTERMs the supervisor, i.e. while slot 0 waits out its backoff.
CRASH_THEN_STOP_SUPERVISOR = textwrap.dedent(
    """
    import os, pathlib, signal, sys, time
    signal.alarm(60)
    out = pathlib.Path(sys.argv[1])
    if os.environ["FORESTREAM_WORKER_INDEX"] == "0":
        (out / "tmp-0").write_text(str(os.getpid()))
        os.replace(out / "tmp-0", out / "starts-0")  # atomic: slot 1 never reads it half-written
        sys.exit(5)
    def on_term(signum, frame):
        (out / "sigterm-1").write_text(str(os.getpid()))
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    (out / ".ready-1").write_text(str(os.getpid()))
    os.replace(out / ".ready-1", out / "ready-1")
    while not (out / "starts-0").exists():
        time.sleep(0.02)
    crashed = pathlib.Path("/proc", (out / "starts-0").read_text().split()[0])
    while crashed.exists():
        time.sleep(0.02)
    os.kill(os.getppid(), signal.SIGTERM)
    while True:
        signal.pause()
    """
)

# The supervisor itself, in its own process, so the test can signal it like a service manager.
RUN_SUPERVISOR = textwrap.dedent(
    """
    import json, sys
    from forestream.runtime.logs import configure_logging
    from forestream.worker.supervisor import supervise
    configure_logging("json")
    spec = json.loads(sys.argv[1])
    sys.exit(supervise(spec.pop("argv"), spec.pop("processes"), **spec))
    """
)


def child(script: str, *args: str) -> list[str]:
    return [sys.executable, "-c", script, *args]


def wait_for_files(paths: list[Path], proc: subprocess.Popen[bytes] | None = None) -> None:
    """Bounded wait until every path exists; fails with what is missing, never hangs."""
    deadline = time.monotonic() + WAIT_S
    while not all(p.exists() for p in paths):
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"supervisor exited early with {proc.returncode}")
        if time.monotonic() > deadline:
            missing = [p.name for p in paths if not p.exists()]
            pytest.fail(f"children never wrote {missing} within {WAIT_S}s")
        time.sleep(0.05)


def pids_in(out: Path, pattern: str) -> list[int]:
    pids: list[int] = []
    for path in out.glob(pattern):
        pids.extend(int(token) for token in path.read_text().split())
    return pids


def kill_leftover_children(pids: list[int], out: Path) -> None:
    """SIGKILL recorded pids still running our scripts (cmdline names ``out``): pids get reused."""
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(out).encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def out(tmp_path: Path) -> Iterator[Path]:
    """Scratch dir for the children; any pid they recorded is SIGKILLed afterwards."""
    yield tmp_path
    kill_leftover_children(pids_in(tmp_path, "ready-*") + pids_in(tmp_path, "starts-*"), tmp_path)


def start_supervisor(argv: list[str], processes: int, **options: float) -> subprocess.Popen[bytes]:
    spec = {"argv": argv, "processes": processes, **options}
    return subprocess.Popen(
        [sys.executable, "-c", RUN_SUPERVISOR, json.dumps(spec)],
        stderr=subprocess.PIPE,
    )


def stop_supervisor(proc: subprocess.Popen[bytes]) -> tuple[int, list[dict[str, object]]]:
    """SIGTERM the supervisor, wait (bounded) and return its exit code and JSON log events."""
    proc.send_signal(signal.SIGTERM)
    return wait_supervisor(proc)


def wait_supervisor(proc: subprocess.Popen[bytes]) -> tuple[int, list[dict[str, object]]]:
    try:
        _, stderr = proc.communicate(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"supervisor did not exit within {WAIT_S}s")
    events = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    return proc.returncode, events


@given(
    crashes=st.integers(min_value=1, max_value=5000),
    base=st.floats(min_value=0.0, max_value=100.0),
    cap=st.floats(min_value=0.0, max_value=1000.0),
)
def test_restart_delay_doubles_within_bounds(crashes: int, base: float, cap: float) -> None:
    delay = restart_delay(crashes, base, cap)
    assert 0.0 <= delay <= cap
    assert delay <= restart_delay(crashes + 1, base, cap)
    if base <= cap:
        assert restart_delay(1, base, cap) == base
    if crashes < 50 and base * 2.0**crashes <= cap:
        assert restart_delay(crashes + 1, base, cap) == 2 * delay


def test_describe_exit_names_codes_and_signals() -> None:
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-signal.SIGKILL) == "signal SIGKILL"


def test_each_child_gets_its_own_index_and_clean_exits_are_not_restarted(out: Path) -> None:
    with capture_logs() as logs:
        code = supervise(child(RECORD_ENV, str(out)), 3, restart_backoff_s=0.01)
    assert code == 0
    envs = [json.loads(p.read_text()) for p in out.glob("env-*.json")]
    assert sorted(e[WORKER_INDEX_ENV] for e in envs) == ["0", "1", "2"]
    assert {e[WORKER_PROCESSES_ENV] for e in envs} == {"3"}
    assert not [e for e in logs if e["event"] == "worker_restarting"]


def test_crashed_children_restart_with_growing_backoff(out: Path) -> None:
    base = 0.05
    with capture_logs() as logs:
        code = supervise(
            child(CRASH_TWICE, str(out)), 2, restart_backoff_s=base, max_backoff_s=10.0
        )
    assert code == 0
    for index in (0, 1):
        assert len((out / f"starts-{index}").read_text().split()) == 3
        restarts = [e for e in logs if e["event"] == "worker_restarting" and e["index"] == index]
        assert [e["reason"] for e in restarts] == ["exit code 3", "signal SIGKILL"]
        assert [e["consecutive_crashes"] for e in restarts] == [1, 2]
        assert [e["delay_s"] for e in restarts] == [base, 2 * base]


def test_backoff_resets_after_a_child_stayed_up(out: Path) -> None:
    with capture_logs() as logs:
        code = supervise(
            child(CRASH_TWICE, str(out)), 1, restart_backoff_s=0.05, stable_after_s=0.0
        )
    assert code == 0
    restarts = [e for e in logs if e["event"] == "worker_restarting"]
    assert [e["consecutive_crashes"] for e in restarts] == [1, 1]
    assert [e["delay_s"] for e in restarts] == [0.05, 0.05]


def test_sigterm_is_forwarded_to_every_child_and_clean_stop_exits_0(out: Path) -> None:
    proc = start_supervisor(child(AWAIT_SIGTERM, str(out), "clean"), 3, stop_timeout_s=15.0)
    try:
        wait_for_files([out / f"ready-{i}" for i in range(3)], proc)
        code, events = stop_supervisor(proc)
        assert code == 0
        for i in range(3):
            marker = out / f"sigterm-{i}"
            assert marker.exists(), f"child {i} never got SIGTERM"
            assert marker.read_text() == (out / f"ready-{i}").read_text()  # same process
        stopped = [e for e in events if e["event"] == "workers_stopped"]
        assert stopped and stopped[0]["clean"] is True
    finally:
        proc.kill()
        proc.communicate()


def test_children_ignoring_sigterm_are_killed_and_exit_code_is_1(out: Path) -> None:
    proc = start_supervisor(child(AWAIT_SIGTERM, str(out), "stuck"), 2, stop_timeout_s=0.5)
    try:
        wait_for_files([out / f"ready-{i}" for i in range(2)], proc)
        code, events = stop_supervisor(proc)
        assert code == 1
        assert all((out / f"sigterm-{i}").exists() for i in range(2))
        killed = sorted(e["index"] for e in events if e["event"] == "worker_killed")
        assert killed == [0, 1]
        for pid in pids_in(out, "ready-*"):
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)  # reaped by the supervisor: gone, not a zombie
    finally:
        proc.kill()
        proc.communicate()


def test_stop_during_backoff_does_not_restart_the_crashed_slot(out: Path) -> None:
    proc = start_supervisor(
        child(CRASH_THEN_STOP_SUPERVISOR, str(out)), 2, restart_backoff_s=30.0, stop_timeout_s=15.0
    )
    try:
        code, events = wait_supervisor(proc)
        assert code == 0  # the only running child stopped cleanly
        stopped = [e for e in events if e["event"] == "workers_stopped"]
        assert [e["exits"] for e in stopped] == [{"1": "exit code 0"}]  # slot 0 not waited on
        assert (out / "sigterm-1").exists()
        restarting = [e for e in events if e["event"] == "worker_restarting"]
        assert [(e["index"], e["reason"]) for e in restarting] == [(0, "exit code 5")]
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.parametrize(
    ("argv", "processes", "message"),
    [
        ([sys.executable, "-c", "pass"], 0, "--processes must be at least 1"),
        ([], 2, "no worker command"),
        (["/nonexistent/forestream-worker"], 2, "cannot start worker process"),
    ],
)
def test_user_mistakes_are_one_line_errors(argv: list[str], processes: int, message: str) -> None:
    with pytest.raises(UserError, match=message):
        supervise(argv, processes)
