"""forestream.runtime.shutdown with real processes: SIGTERM ends them within the grace, whatever
they do.

Each child is a tiny ``python -c`` script that installs the watchdog with a short grace, says
``ready`` on stdout, then gets stuck in a way the Python-level handler cannot end. Each arms
``signal.alarm`` (default action: die) so no child outlives a failed test for long.
"""

from __future__ import annotations

import inspect
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from forestream.runtime import shutdown
from forestream.runtime.shutdown import EVENT, EXIT_CODE, GRACE_S

ROOT = Path(__file__).resolve().parents[2]
GRACE = 2.0
MARGIN_S = 3.0  # interpreter start-up is not in it: the clock starts at the signal

PRELUDE = textwrap.dedent(
    """
    import ctypes, os, signal, sys, threading, time
    signal.alarm(60)
    from forestream.runtime.logs import configure_logging
    from forestream.runtime.shutdown import install
    configure_logging("json")
    # a plain list, not a threading.Event: the handler runs in the main thread, and Event.set()
    # there deadlocks when the signal lands while that thread holds the Event's own lock
    # inside Event.wait() (seen once in CI: stuck in threading.py __enter__, exit 8)
    stopped = []
    def on_stop(signum):
        print(f"on_stop {signum}", flush=True)
        stopped.append(signum)
    def wait_for_stop(limit_s):
        deadline = time.monotonic() + limit_s
        while not stopped and time.monotonic() < deadline:
            time.sleep(0.05)
    """
)

# Blocked in C for good: read() on a pipe nobody writes, restarted by the kernel after the
# signal (SA_RESTART), so control never comes back to the interpreter to run the handler.
WEDGED_IN_C = """
install(on_stop, lambda: {"pending_records": 7, "uncommitted": {"t-0": 42}}, grace_s=GRACE)
signal.siginterrupt(signal.SIGTERM, False)
signal.siginterrupt(signal.SIGINT, False)
r, _w = os.pipe()
print("ready", flush=True)
ctypes.CDLL(None).read(r, ctypes.create_string_buffer(1), 1)
print("read returned", flush=True)
"""

# A library's own retry loop: the handler runs (the flag is set) but nothing looks at it.
SPINNING = """
install(on_stop, lambda: {"pending_records": 0}, grace_s=GRACE)
print("ready", flush=True)
while True:
    sum(range(1000))
"""

# The orderly path: the loop sees the flag, cleans up for a moment and exits with its own code.
ORDERLY = """
install(on_stop, lambda: {"pending_records": 0}, grace_s=GRACE)
print("ready", flush=True)
wait_for_stop(60)
time.sleep(0.5)
print("clean exit", flush=True)
sys.exit(0)
"""

# Returns in an orderly way, but a non-daemon thread keeps the interpreter from exiting.
HANGS_AT_EXIT = """
install(on_stop, lambda: {"pending_records": 0}, grace_s=GRACE)
threading.Thread(target=threading.Event().wait).start()
print("ready", flush=True)
wait_for_stop(30)
print("main returned", flush=True)
"""

# What ``forestream monitor`` does: the stop callback raises KeyboardInterrupt in the main thread.
KEYBOARD_INTERRUPT = """
def interrupt(signum):
    raise KeyboardInterrupt
install(interrupt, grace_s=GRACE)
try:
    print("ready", flush=True)
    time.sleep(30)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


def start(body: str, grace_s: float = GRACE) -> subprocess.Popen[str]:
    script = PRELUDE + f"GRACE = {grace_s!r}\n" + textwrap.dedent(body)
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline() if readable else ""
    if line.strip() != "ready":
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"child did not get ready (said {line!r}):\n{err}")
    return proc


def stop_and_time(
    proc: subprocess.Popen[str], *signals: signal.Signals, gap_s: float = 0.5
) -> tuple[int, float, str, str]:
    """Send ``signals`` (``gap_s`` apart); returns (exit code, seconds from the first, out, err)."""
    started = time.monotonic()
    for i, sig in enumerate(signals):
        if i:
            time.sleep(gap_s)
        proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=GRACE + 20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        pytest.fail(f"child still running {GRACE + 20:.0f}s after {signals[0].name}:\n{err}")
    return proc.returncode, time.monotonic() - started, out, err


def grace_lines(text: str) -> list[dict]:
    found = []
    for line in text.splitlines():
        if EVENT not in line:
            continue
        try:
            found.append(json.loads(line))
        except ValueError:
            pytest.fail(f"{EVENT} line is not one JSON object: {line!r}")
    return found


def test_wedged_in_c_sigterm_exits_with_the_watchdog_code_within_the_grace() -> None:
    proc = start(WEDGED_IN_C)
    code, elapsed, out, err = stop_and_time(proc, signal.SIGTERM)
    print(f"wedged in C: exit {code} after {elapsed:.2f}s (grace {GRACE}s)")
    assert code == EXIT_CODE, f"exit {code}\n{out}\n{err}"
    assert GRACE - 0.1 <= elapsed <= GRACE + MARGIN_S, elapsed
    [line] = grace_lines(out + err)
    assert line["reason"] == "grace_exceeded"
    assert line["signal"] == "SIGTERM"
    assert line["exit_code"] == EXIT_CODE
    assert line["abandoned"] == {"pending_records": 7, "uncommitted": {"t-0": 42}}
    assert any("<module>" in frame for frame in line["stuck_in"]), line


def test_a_loop_that_ignores_the_stop_flag_is_ended_at_the_grace() -> None:
    proc = start(SPINNING)
    code, elapsed, out, err = stop_and_time(proc, signal.SIGTERM)
    assert code == EXIT_CODE, f"exit {code}\n{out}\n{err}"
    assert GRACE - 0.1 <= elapsed <= GRACE + MARGIN_S, elapsed
    assert f"on_stop {int(signal.SIGTERM)}" in out, "the orderly stop runs first, in main"
    assert len(grace_lines(out + err)) == 1


def test_an_orderly_stop_within_the_grace_keeps_its_own_exit_code() -> None:
    proc = start(ORDERLY)
    code, elapsed, out, err = stop_and_time(proc, signal.SIGTERM)
    assert code == 0, f"exit {code}\n{out}\n{err}"
    assert elapsed < GRACE, elapsed
    assert "clean exit" in out
    assert EVENT not in out + err


def test_sigint_takes_the_same_orderly_path() -> None:
    proc = start(ORDERLY)
    code, _, out, err = stop_and_time(proc, signal.SIGINT)
    assert code == 0, f"exit {code}\n{out}\n{err}"
    assert f"on_stop {int(signal.SIGINT)}" in out


def test_a_second_signal_exits_at_once() -> None:
    proc = start(WEDGED_IN_C, grace_s=60.0)
    code, elapsed, out, err = stop_and_time(proc, signal.SIGTERM, signal.SIGINT, gap_s=0.5)
    assert code == EXIT_CODE, f"exit {code}\n{out}\n{err}"
    assert elapsed < 0.5 + MARGIN_S, elapsed
    [line] = grace_lines(out + err)
    assert line["reason"] == "second_signal"
    assert line["signal"] == "SIGTERM"


def test_a_process_that_hangs_after_an_orderly_return_is_still_ended() -> None:
    proc = start(HANGS_AT_EXIT)
    code, elapsed, out, err = stop_and_time(proc, signal.SIGTERM)
    assert "main returned" in out, err
    assert code == EXIT_CODE, f"exit {code}\n{out}\n{err}"
    assert elapsed <= GRACE + MARGIN_S, elapsed
    assert len(grace_lines(out + err)) == 1


def test_a_stop_callback_may_raise_keyboard_interrupt_as_a_handler_may() -> None:
    proc = start(KEYBOARD_INTERRUPT)
    code, _, out, err = stop_and_time(proc, signal.SIGINT)
    assert code == 130, f"exit {code}\n{out}\n{err}"
    assert "interrupted" in out
    assert EVENT not in out + err


def test_uninstall_restores_the_previous_handlers_and_wakeup_fd() -> None:
    before = {s: signal.getsignal(s) for s in shutdown.STOP_SIGNALS}
    watchdog = shutdown.install(lambda _signum: None, grace_s=GRACE)
    try:
        for s in shutdown.STOP_SIGNALS:
            assert signal.getsignal(s) != before[s]
        with pytest.raises(RuntimeError, match="already installed"):
            shutdown.install(lambda _signum: None)
    finally:
        watchdog.uninstall()
    assert {s: signal.getsignal(s) for s in shutdown.STOP_SIGNALS} == before
    previous_fd = signal.set_wakeup_fd(-1)
    assert previous_fd == -1, "the wakeup fd must be given back"
    watchdog._thread.join(timeout=5)
    assert not watchdog._thread.is_alive(), "an idle watchdog ends with uninstall"
    shutdown.install(lambda _signum: None).uninstall()  # installable again


def test_install_refuses_other_threads_and_a_non_positive_grace() -> None:
    errors: list[BaseException] = []

    def off_main() -> None:
        try:
            shutdown.install(lambda _signum: None)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=off_main)
    thread.start()
    thread.join(timeout=10)
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError), errors
    assert "main thread" in str(errors[0])
    with pytest.raises(ValueError):
        shutdown.install(lambda _signum: None, grace_s=0)


def test_the_grace_fits_inside_the_supervisors_stop_timeout() -> None:
    """``worker --processes K``: children must end by themselves before the supervisor kills."""
    from forestream.worker.supervisor import supervise

    stop_timeout_s = inspect.signature(supervise).parameters["stop_timeout_s"].default
    assert stop_timeout_s >= GRACE_S + 5
    assert EXIT_CODE not in (0, 1, 2, 3, 4, 5, 6, 7, 130)
