"""Run K copies of the worker on one machine, in one consumer group: ``worker --processes K``.

One Python process uses one core, so scaling a worker on one machine means K processes that
Kafka balances partitions across. This module keeps those K children alive and stops them
cleanly; it knows nothing about Kafka and imports nothing heavy.

Contract with each child:

* It runs ``argv`` with the supervisor's environment (or ``env``) plus
  ``FORESTREAM_WORKER_INDEX=i`` (``0 <= i < K``, stable across restarts of that slot) and
  ``FORESTREAM_WORKER_PROCESSES=K``. A child uses the index for anything that must differ per
  process on one host, e.g. its metrics port: ``metrics_port + FORESTREAM_WORKER_INDEX``.
* SIGTERM means "finish the batch in hand, flush, commit, exit 0".
* Exit 0 outside a shutdown means the child was told to stop (e.g. ``--max-records`` reached),
  so that slot is NOT restarted; when every slot has exited 0 the supervisor returns 0.
* Any other exit (non-zero code, or killed by a signal) is a crash: the slot restarts after
  ``restart_delay(...)``, which doubles per consecutive crash up to ``max_backoff_s`` and resets
  once the child had stayed up ``stable_after_s``. One log line per crash, never a tight loop.

Shutdown: SIGTERM or SIGINT to the supervisor forwards SIGTERM once to every running child,
waits up to ``stop_timeout_s`` for all of them, then SIGKILLs stragglers (a second SIGTERM/SIGINT
does so at once). Returns 0 if every child running at that moment exited 0, else 1. Slots
waiting out a restart backoff are simply not restarted (they have nothing to flush).

Children run in their own process group, so a terminal Ctrl-C reaches only the supervisor and
each child receives exactly one, orderly SIGTERM. Waiting is signal driven (SIGCHLD and the stop
signals wake a ``select`` through ``signal.set_wakeup_fd``), so an idle supervisor uses no CPU.
``supervise`` installs signal handlers, hence must be called from the main thread.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any, TypeAlias

import structlog

from forestream.errors import UserError

WORKER_INDEX_ENV = "FORESTREAM_WORKER_INDEX"
WORKER_PROCESSES_ENV = "FORESTREAM_WORKER_PROCESSES"

# Upper bound on one idle wait: a safety net only, SIGCHLD normally wakes us long before.
_MAX_IDLE_WAIT_S = 5.0
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

# What signal.signal() returns and accepts back: a previous handler to restore
_SignalHandler: TypeAlias = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

log = structlog.get_logger("forestream.supervisor")


def restart_delay(consecutive_crashes: int, base_s: float, max_s: float) -> float:
    """Seconds to wait before restarting after the n-th consecutive crash (n >= 1).

    Exponential (base, 2*base, 4*base, ...) so a child that crashes on start cannot spin a
    core, capped so a slot that recovers is back within ``max_s``.
    """
    # Cap the exponent: 2.0**1024 raises OverflowError, while 2.0**1000 * base just saturates.
    exponent = min(max(consecutive_crashes - 1, 0), 1000)
    return max(min(base_s * 2.0**exponent, max_s), 0.0)


def describe_exit(returncode: int) -> str:
    """``"exit code 3"`` or ``"signal SIGKILL"``: how Popen's returncode reads in a log."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        return f"signal {signal.Signals(-returncode).name}"
    except ValueError:
        return f"signal {-returncode}"


@dataclass
class _Slot:
    """One of the K positions; its child comes and goes, its index and crash count stay."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    consecutive_crashes: int = 0
    restart_at: float | None = None  # set while waiting out a backoff
    finished: bool = False  # exited 0 on its own: do not restart


class _SignalWakeup:
    """Stop signals set a flag; they and SIGCHLD wake ``wait`` through a self-pipe.

    The wakeup fd is written by the C-level handler, so a signal that lands between checking
    the flag and calling ``select`` still wakes it: no lost wake-ups, no polling.
    """

    def __init__(self) -> None:
        self.stop_requests = 0
        self.stop_signal: str | None = None
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._previous_handlers: dict[int, _SignalHandler] = {}
        self._previous_wakeup_fd = -1

    def __enter__(self) -> _SignalWakeup:
        try:
            self._previous_wakeup_fd = signal.set_wakeup_fd(
                self._write_fd, warn_on_full_buffer=False
            )
        except ValueError:
            self._close_pipe()
            raise RuntimeError("supervise() must run in the main thread") from None
        for signum in _STOP_SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum, self._on_stop)
        # SIGCHLD is ignored by default; a Python handler makes it write to the wakeup fd.
        self._previous_handlers[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, _ignore)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        self._close_pipe()

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        self.stop_requests += 1
        if self.stop_signal is None:
            self.stop_signal = signal.Signals(signum).name

    def wait(self, timeout_s: float) -> None:
        """Sleep until any handled signal arrives or ``timeout_s`` passes."""
        readable, _, _ = select.select([self._read_fd], [], [], max(timeout_s, 0.0))
        if readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._read_fd, 512):
                    pass

    def _close_pipe(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    """SIGCHLD handler: the wakeup fd does the work, the handler itself has nothing to do."""


class _Supervisor:
    def __init__(
        self,
        argv: list[str],
        processes: int,
        env: dict[str, str] | None,
        restart_backoff_s: float,
        max_backoff_s: float,
        stop_timeout_s: float,
        stable_after_s: float,
    ) -> None:
        self.argv = list(argv)
        self.processes = processes
        self.base_env = dict(os.environ if env is None else env)
        self.restart_backoff_s = restart_backoff_s
        self.max_backoff_s = max_backoff_s
        self.stop_timeout_s = stop_timeout_s
        self.stable_after_s = stable_after_s
        self.slots = [_Slot(index=i) for i in range(processes)]

    def run(self) -> int:
        with _SignalWakeup() as wake:
            try:
                for slot in self.slots:
                    self._start_first(slot)
                log.info("workers_started", processes=self.processes, argv=self.argv)
                while not wake.stop_requests:
                    now = time.monotonic()
                    self._reap(now)
                    if all(slot.finished for slot in self.slots):
                        log.info("workers_finished", processes=self.processes)
                        return 0
                    self._restart_due(now)
                    wake.wait(self._idle_timeout(time.monotonic()))
                return self._shutdown(wake)
            finally:
                self._kill_all()

    def _child_env(self, slot: _Slot) -> dict[str, str]:
        return {
            **self.base_env,
            WORKER_INDEX_ENV: str(slot.index),
            WORKER_PROCESSES_ENV: str(self.processes),
        }

    def _spawn(self, slot: _Slot) -> None:
        # process_group=0: Ctrl-C hits only us; children get one orderly SIGTERM from us.
        slot.proc = subprocess.Popen(self.argv, env=self._child_env(slot), process_group=0)
        slot.started_at = time.monotonic()
        slot.restart_at = None

    def _start_first(self, slot: _Slot) -> None:
        """A child that cannot even be exec'd is a user mistake (bad argv), not a crash."""
        try:
            self._spawn(slot)
        except OSError as exc:
            raise UserError(f"cannot start worker process {self.argv[0]!r}: {exc}") from None

    def _reap(self, now: float) -> None:
        for slot in self.slots:
            if slot.proc is None:
                continue
            returncode = slot.proc.poll()
            if returncode is None:
                continue
            pid = slot.proc.pid
            slot.proc = None
            if returncode == 0:
                slot.finished = True
                log.info("worker_exited", index=slot.index, pid=pid, restart=False)
                continue
            self._schedule_restart(slot, now, pid=pid, reason=describe_exit(returncode))

    def _schedule_restart(self, slot: _Slot, now: float, *, pid: int | None, reason: str) -> None:
        uptime_s = now - slot.started_at
        if uptime_s >= self.stable_after_s:
            slot.consecutive_crashes = 0
        slot.consecutive_crashes += 1
        delay_s = restart_delay(
            slot.consecutive_crashes, self.restart_backoff_s, self.max_backoff_s
        )
        slot.restart_at = now + delay_s
        log.warning(
            "worker_restarting",
            index=slot.index,
            pid=pid,
            reason=reason,
            uptime_s=round(uptime_s, 3),
            consecutive_crashes=slot.consecutive_crashes,
            delay_s=delay_s,
        )

    def _restart_due(self, now: float) -> None:
        for slot in self.slots:
            if slot.restart_at is None or slot.restart_at > now:
                continue
            try:
                self._spawn(slot)
            except OSError as exc:  # e.g. out of memory or fds: back off like any crash
                slot.started_at = now
                self._schedule_restart(slot, now, pid=None, reason=f"spawn failed: {exc}")
                continue
            if slot.proc is None:
                raise RuntimeError(f"worker slot {slot.index} has no process right after spawn")
            log.debug("worker_restarted", index=slot.index, pid=slot.proc.pid)

    def _idle_timeout(self, now: float) -> float:
        pending = [slot.restart_at - now for slot in self.slots if slot.restart_at is not None]
        return min([_MAX_IDLE_WAIT_S, *pending])

    def _shutdown(self, wake: _SignalWakeup) -> int:
        running = [slot for slot in self.slots if slot.proc is not None]
        log.info("workers_stopping", signal=wake.stop_signal, running=len(running))
        for slot in running:
            if slot.proc is None:  # running holds only slots with a process
                raise RuntimeError(f"worker slot {slot.index} lost its process while stopping")
            with contextlib.suppress(ProcessLookupError):
                slot.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        while True:
            alive = [slot for slot in running if slot.proc and slot.proc.poll() is None]
            remaining_s = deadline - time.monotonic()
            if not alive or remaining_s <= 0 or wake.stop_requests > 1:
                break
            wake.wait(remaining_s)
        for slot in alive:
            if slot.proc is None:  # alive holds only slots with a running process
                raise RuntimeError(f"worker slot {slot.index} lost its process while stopping")
            log.warning("worker_killed", index=slot.index, pid=slot.proc.pid)
            with contextlib.suppress(ProcessLookupError):
                slot.proc.kill()
            slot.proc.wait()
        codes = {slot.index: slot.proc.returncode for slot in running if slot.proc}
        clean = all(code == 0 for code in codes.values())
        log.info(
            "workers_stopped",
            clean=clean,
            exits={index: describe_exit(code) for index, code in codes.items()},
        )
        for slot in running:
            slot.proc = None
        return 0 if clean else 1

    def _kill_all(self) -> None:
        """Last resort on any way out (incl. bugs): never leave orphan workers behind."""
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.kill()
                slot.proc.wait()
            slot.proc = None


def supervise(
    argv: list[str],
    processes: int,
    *,
    env: dict[str, str] | None = None,
    restart_backoff_s: float = 1.0,
    max_backoff_s: float = 30.0,
    stop_timeout_s: float = 30.0,
    stable_after_s: float = 60.0,
) -> int:
    """Run ``processes`` children of ``argv`` until they finish or we are told to stop.

    Returns the supervisor's exit code: 0 when every child finished with 0 on its own, or when
    every running child exited 0 after the forwarded SIGTERM; 1 otherwise. See the module
    docstring for the full contract with the children. Main thread only.
    """
    if processes < 1:
        raise UserError(f"--processes must be at least 1, got {processes}")
    if not argv:
        raise UserError("no worker command to supervise")
    if restart_backoff_s < 0 or max_backoff_s < 0 or stop_timeout_s < 0:
        raise UserError("supervisor backoff and stop timeouts must not be negative")
    return _Supervisor(
        argv,
        processes,
        env,
        restart_backoff_s,
        max_backoff_s,
        stop_timeout_s,
        stable_after_s,
    ).run()
