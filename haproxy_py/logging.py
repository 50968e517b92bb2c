"""structlog setup shared by every daemon and by hactl.

JSON lines when stderr is not a terminal (journald, files, CI), a readable
console format when it is. Call `configure()` once at start-up; modules get
their logger with `structlog.get_logger(__name__)`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = frozenset({"password", "key_pem", "private_key", "authorization", "cookie"})


def _redact_secrets(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Secrets never reach a log line, whatever a caller passes."""
    for key in _SECRET_KEYS & event.keys():
        event[key] = "<redacted>"
    return event


def configure(level: str = "info", json: bool | None = None) -> None:
    """Route structlog (and stdlib logging) to stderr, JSON unless on a TTY."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        # Each line in one write: the worker processes share this stderr with the master.
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format="%(name)s: %(message)s")
