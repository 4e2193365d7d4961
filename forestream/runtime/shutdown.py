"""A hard deadline on shutdown: after SIGTERM/SIGINT a process ends within ``GRACE_S``, always.

Why: the orderly stop (a handler sets a flag, the main loop sees it, flushes, commits, exits)
needs the main thread to come back to that check. A Kafka client wedged inside ``poll()``, a
retry loop against a broker that is gone, or a C call that never returns keeps it away for
minutes, and an orchestrator then kills the process without a word.

How: ``signal.set_wakeup_fd`` makes CPython's C-level signal handler write each signal's number
to a non-blocking pipe, whatever the main thread is doing (stuck in C, or in a library loop that
never looks at our flag). A daemon thread blocks on the other end. The orderly stop stays the
normal path: ``on_stop`` runs from the ordinary Python handler in the main thread (so it may do
what a handler may, e.g. raise ``KeyboardInterrupt``). The thread only keeps time:

* first stop signal: the grace timer starts;
* the process is still alive when it runs out, or a second stop signal arrives: one log line
  ``shutdown_grace_exceeded`` (the component's ``describe_abandoned()``, where the main thread
  was stuck), stdout and stderr flushed, then ``os._exit(EXIT_CODE)``.

Nothing is lost by that exit: a consumer commits a batch only after its outputs are acknowledged,
so an abandoned batch is uncommitted and re-read by the partition's next owner (at-least-once);
a replay resumes from its last checkpoint. A producer's line says how many of its records had
not been acknowledged (those may not be on the topic).

Limit: the thread needs the GIL for a moment. Python code and blocking calls release it every
few milliseconds; a C extension spinning with the GIL held would defeat this (and every thread).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
import sysconfig
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from types import FrameType, TracebackType
from typing import Any

import structlog

GRACE_S = 20.0
"""From the first stop signal to the hard exit. The worker's own orderly budget (10 s for the
batch in hand, then one short commit and close) fits inside it, and it fits inside the
supervisor's 30 s stop timeout for its children."""
EXIT_CODE = 8
"""Exit code of a hard exit (0 ok, 1 bug, 2 user error, 3-7 fatal Kafka errors, 130 Ctrl-C)."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
EVENT = "shutdown_grace_exceeded"

_LAST_WORDS_S = 2.0
"""How long the exit waits for its log line and the flushes (the stuck thread may hold a
stream's lock, or stderr may be a full pipe): the exit never waits on them for longer."""
_UNINSTALL = b"\0"  # no signal has number 0

log = structlog.get_logger("forestream.shutdown")

_installed: ShutdownWatchdog | None = None


class ShutdownWatchdog:
    """Returned by :func:`install`; ``uninstall()`` (or leaving a ``with``) restores the
    previous handlers. A grace timer already running keeps running: the process is leaving."""

    def __init__(
        self,
        on_stop: Callable[[int], object],
        describe_abandoned: Callable[[], Mapping[str, Any]] | None,
        grace_s: float,
    ) -> None:
        self.on_stop = on_stop
        self.describe_abandoned = describe_abandoned
        self.grace_s = grace_s
        self.armed_at: float | None = None
        self.first_signal: str | None = None
        self._handled = 0  # stop signals seen by the main thread's handler
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)  # set_wakeup_fd requires it
        self._previous_handlers: dict[int, Any] = {}
        self._previous_wakeup_fd = -1
        self._thread = threading.Thread(target=self._watch, name="shutdown-watchdog", daemon=True)
        self._uninstalled = False

    # -- main thread ---------------------------------------------------------------------------

    def _install(self) -> None:
        try:
            self._previous_wakeup_fd = signal.set_wakeup_fd(
                self._write_fd, warn_on_full_buffer=False
            )
        except ValueError:
            self._close_fds()
            raise RuntimeError(
                "the shutdown watchdog must be installed from the main thread"
            ) from None
        for signum in STOP_SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum, self._handle)
        self._thread.start()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        """The Python-level handler (main thread): the orderly stop, once."""
        self._handled += 1
        if self._handled == 1:
            self.on_stop(signum)

    def uninstall(self) -> None:
        global _installed
        if self._uninstalled:
            return
        self._uninstalled = True
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        if _installed is self:
            _installed = None
        with contextlib.suppress(OSError):
            os.write(self._write_fd, _UNINSTALL)

    def __enter__(self) -> ShutdownWatchdog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstall()

    # -- watchdog thread -----------------------------------------------------------------------

    def _watch(self) -> None:
        # let the kernel deliver stop signals to other threads: a main thread blocked in a
        # system call is then interrupted and runs its handler at once
        with contextlib.suppress(OSError, ValueError):
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        stops = 0
        while True:
            timeout = None
            if self.armed_at is not None:
                timeout = max(self.armed_at + self.grace_s - time.monotonic(), 0.0)
            readable, _, _ = select.select([self._read_fd], [], [], timeout)
            if not readable:
                self._exit("grace_exceeded")
            data = os.read(self._read_fd, 512)
            self._forward(data.replace(_UNINSTALL, b""))
            for signum in data:
                if signum not in STOP_SIGNALS:
                    continue
                stops += 1
                if stops == 1:
                    self.armed_at = time.monotonic()
                    self.first_signal = signal.Signals(signum).name
                else:
                    self._exit("second_signal")
            if _UNINSTALL in data and self.armed_at is None:
                self._close_fds()
                return

    def _forward(self, data: bytes) -> None:
        """Whoever had the wakeup fd before us (e.g. an asyncio loop) still gets its bytes."""
        if data and self._previous_wakeup_fd >= 0 and not self._uninstalled:
            with contextlib.suppress(OSError):
                os.write(self._previous_wakeup_fd, data)

    def _exit(self, reason: str) -> None:
        waited = time.monotonic() - (self.armed_at or time.monotonic())
        fields: dict[str, Any] = {
            "reason": reason,
            "signal": self.first_signal,
            "grace_s": self.grace_s,
            "waited_s": round(waited, 1),
            "exit_code": EXIT_CODE,
            "stuck_in": _main_thread_stack(),
        }
        done = threading.Event()

        def last_words() -> None:
            try:
                fields["abandoned"] = dict((self.describe_abandoned or dict)())
            except Exception as exc:  # a hard exit must not hang on a broken description
                fields["abandoned"] = {"error": f"{type(exc).__name__}: {exc}"}
            with contextlib.suppress(Exception):
                log.error(EVENT, **fields)
                done.set()
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()

        writer = threading.Thread(target=last_words, name="shutdown-last-words", daemon=True)
        writer.start()
        writer.join(_LAST_WORDS_S)
        if not done.is_set():  # a stream lock held by the stuck thread: write past it
            line = json.dumps({"event": EVENT, "level": "error", **dict(fields)}, default=str)
            raw = threading.Thread(target=os.write, args=(2, line.encode() + b"\n"), daemon=True)
            raw.start()
            raw.join(_LAST_WORDS_S / 2)
        os._exit(EXIT_CODE)

    def _close_fds(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def _main_thread_stack() -> list[str]:
    """Where the main thread was stuck: its innermost frame and the innermost frames of our
    own code (the library frames in between say little: a wait, a selector)."""
    frame = sys._current_frames().get(threading.main_thread().ident or -1)
    if frame is None:
        return []
    stack = traceback.extract_stack(frame)
    libraries = {sysconfig.get_path(name) for name in ("stdlib", "purelib", "platlib")}
    ours = [f for f in stack if not any(f.filename.startswith(lib) for lib in libraries if lib)]
    picked = [f for f in stack if f is stack[-1] or f in ours[-2:]]
    return [f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in picked]


def install(
    on_stop: Callable[[int], object],
    describe_abandoned: Callable[[], Mapping[str, Any]] | None = None,
    grace_s: float = GRACE_S,
) -> ShutdownWatchdog:
    """Make SIGTERM/SIGINT call ``on_stop(signum)`` and end the process ``grace_s`` later.

    Call once per process, from the main thread, in each long-running command. ``on_stop`` is
    the orderly stop (e.g. set a flag), run as a signal handler in the main thread on the first
    stop signal. ``describe_abandoned`` names, for the exit's log line, what a hard exit leaves
    behind; it runs on another thread while the main one is stuck, so it must only read
    (no locks, no I/O). Restore the previous handlers with ``uninstall()`` or a ``with`` block.
    """
    global _installed
    if grace_s <= 0:
        raise ValueError("grace_s must be positive")
    if _installed is not None:
        raise RuntimeError("a shutdown watchdog is already installed in this process")
    watchdog = ShutdownWatchdog(on_stop, describe_abandoned, grace_s)
    watchdog._install()
    _installed = watchdog
    return watchdog


class EarlyStop:
    """SIGTERM/SIGINT that arrive before a service's own handlers are in place, remembered.

    Start-up takes seconds (reaching the cluster, the first model), and meanwhile the default
    action would kill the process: a supervisor then reads an unclean exit (seen in CI: a
    ``--processes`` child stopped right after it served ``/healthz``). The service hands the
    signal to its real handler once installed and stops in order, exit 0.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def install(self) -> EarlyStop:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._note)
        return self

    def _note(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
