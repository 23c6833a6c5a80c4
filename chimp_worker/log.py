"""Logging: one stream of structlog events, JSON lines unless a person is watching.

Everything goes through the standard library's root logger with structlog's
``ProcessorFormatter``: the worker's own structlog events and the lines of pika, Alembic,
SQLAlchemy and anything else that uses ``logging`` come out in the same format, one line each
(a traceback becomes the ``exception`` field of that line). Every line carries ``timestamp``,
``level``, ``logger``, ``host`` and ``service``. Under systemd (stderr connected to the
journal, ``JOURNAL_STREAM``) each line starts with its syslog priority (``<4>`` for a
warning), which journald strips and stores as PRIORITY, so ``journalctl -p warning`` works.

Context (inspection, image and message ids) is bound with ``structlog.contextvars`` per unit of
work, so every line carries it without threading it through calls.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Any, TextIO

import structlog

SERVICE = "chimp-worker"
# Loggers of libraries that are chatty at INFO; their warnings and errors still come through.
NOISY_LOGGERS = ("urllib3", "PIL", "alembic.runtime.migration", "matplotlib", "timm")
# pika logs each failed connect or lost connection at ERROR several times over, with a
# traceback; the worker says the same in one line of its own (broker_unavailable, or the
# command's error), so pika speaks only at DEBUG (as warnings then) or when it is critical.
PIKA_LOGGER = "pika"
# syslog priorities (sd-daemon(3) prefixes) by structlog level name
JOURNAL_PRIORITIES = {
    "critical": 2,
    "exception": 3,
    "error": 3,
    "warning": 4,
    "info": 6,
    "debug": 7,
    "notset": 7,
}


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time of each line (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def wants_json(fmt: str, stream: TextIO | None = None) -> bool:
    """``auto``: JSON unless the stream is a terminal."""
    if fmt != "auto":
        return fmt == "json"
    stream = stream or sys.stderr
    return not (hasattr(stream, "isatty") and stream.isatty())


def on_journal(stream: TextIO | None = None) -> bool:
    """True when the stream is systemd's journal (``JOURNAL_STREAM`` names its device:inode)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    stream = stream or sys.stderr
    try:
        info = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return expected == f"{info.st_dev}:{info.st_ino}"


def failures_as_json() -> bool:
    """Whether the line a failing command ends with is a JSON log event (``command_failed``)
    rather than plain text: where the logs are a machine's stream, i.e. JSON asked for
    explicitly (CHIMP_LOG_FORMAT=json, as the shipped deployments do) or systemd's journal."""
    return os.environ.get("CHIMP_LOG_FORMAT", "").strip().lower() == "json" or on_journal()


def _add_origin(host: str) -> structlog.typing.Processor:
    def add(_logger: Any, _name: str, event: structlog.typing.EventDict) -> Any:
        event.setdefault("host", host)
        event.setdefault("service", SERVICE)
        return event

    return add


def _with_journal_priority(render: structlog.typing.Processor) -> structlog.typing.Processor:
    def prefixed(logger: Any, name: str, event: structlog.typing.EventDict) -> str:
        priority = JOURNAL_PRIORITIES.get(str(event.get("level", "info")).lower(), 6)
        line = render(logger, name, event)
        if isinstance(line, bytes | bytearray):  # a JSON renderer with a bytes serializer
            line = line.decode()
        return f"<{priority}>{line}"

    return prefixed


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Route structlog and standard-library logging to stderr in one format.

    ``fmt``: ``json``, ``console`` (readable, coloured on a terminal) or ``auto`` (JSON unless
    stderr is a terminal). Safe to call again (a command raising its level): the handler is
    replaced, never added twice; handlers others installed (pytest's) are left alone.
    """
    json_lines = wants_json(fmt)
    render: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    if on_journal():
        render = _with_journal_priority(render)
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_origin(socket.gethostname()),
    ]
    numeric_level = logging.getLevelName(level.upper())
    # The level is the standard library's (filter_by_level first), not baked into the bound
    # logger: structlog.testing.capture_logs, which swaps the processors, then sees every level.
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            render,
        ],
    )
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, numeric_level))
    pika_level = logging.WARNING if numeric_level <= logging.DEBUG else logging.CRITICAL
    logging.getLogger(PIKA_LOGGER).setLevel(pika_level)


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)
