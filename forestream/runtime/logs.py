"""structlog set-up shared by every command: JSON lines for services, readable in a terminal."""

from __future__ import annotations

import logging
import sys
import time
from typing import Literal

import structlog
from structlog.typing import Processor

LogFormat = Literal["auto", "json", "console"]
_LOG_FORMATS: dict[str, LogFormat] = {"auto": "auto", "json": "json", "console": "console"}


def checked_log_format(value: str) -> LogFormat:
    """A ``--log-format`` value as given by a flag or the environment, or a user error."""
    fmt = _LOG_FORMATS.get(value)
    if fmt is None:
        from forestream.errors import UserError

        raise UserError(f"--log-format must be auto, json or console, not {value!r}")
    return fmt


def configure_logging(fmt: LogFormat = "auto", level: str = "INFO") -> None:
    """Route structlog (and stdlib logging, e.g. kafka-python's) to stderr in one format."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        # one write() per line: `worker --processes K` children share the supervisor's stderr,
        # and print()'s separate newline write let two lines merge into one unparsable line
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # kafka-python logs reconnect noise at WARNING/ERROR per attempt; keep only real errors,
    # and of those at most one line per interval (a broker that is away stays visible).
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr, format="%(name)s %(message)s")
    route_kafka_client_logs()


class RateLimited:
    """Lets an event through at most once per ``interval_s``; counts what it swallowed.

    Hot-path warnings go through one of these so a flood of bad input cannot flood the log.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last = float("-inf")
        self.suppressed = 0

    def ready(self) -> bool:
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self) -> int:
        n, self.suppressed = self.suppressed, 0
        return n


class _KafkaClientLogs(logging.Handler):
    """kafka-python logs every reconnect attempt (dozens a second while a broker is away) as
    plain text; this forwards them through structlog, at most one line per interval, with the
    number swallowed, so an outage is visible in the log without flooding it."""

    def __init__(self, interval_s: float) -> None:
        super().__init__()
        self._gate = RateLimited(interval_s)

    def emit(self, record: logging.LogRecord) -> None:  # serialised by Handler.handle's lock
        if self._gate.ready():
            structlog.get_logger("forestream.kafka").warning(
                "kafka_client_error",
                logger=record.name,
                message=record.getMessage()[:300],
                suppressed=self._gate.take_suppressed(),
            )


def route_kafka_client_logs(interval_s: float = 10.0) -> None:
    """Send kafka-python's own log records through the rate-limited structlog bridge."""
    kafka_logger = logging.getLogger("kafka")
    kafka_logger.handlers = [_KafkaClientLogs(interval_s)]
    kafka_logger.propagate = False
