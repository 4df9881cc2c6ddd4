"""structlog set-up: JSON lines for machines, coloured console for people, stable dotted keys."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

__all__ = ["LogFormat", "configure_logging", "current_level", "get_logger", "set_level"]

LogFormat = Literal["json", "console"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_METHOD_LEVELS = _LEVELS | {"warn": logging.WARNING, "exception": logging.ERROR, "critical": logging.CRITICAL}
_threshold = logging.INFO


def _level_gate(
    logger: object, method_name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """The first processor: drops events below the current level, which can change at runtime."""
    if _METHOD_LEVELS.get(method_name, logging.INFO) < _threshold:
        raise structlog.DropEvent
    return event_dict


def _numeric(level: str) -> int:
    numeric = _LEVELS.get(level.lower())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(_LEVELS)}")
    return numeric


def set_level(level: str) -> None:
    """Changes the level of every logger of the process at once (ztunnel's admin ``/logging``)."""
    global _threshold  # noqa: PLW0603 (one process-wide level, as structlog's configuration is)
    _threshold = _numeric(level)


def current_level() -> str:
    """The level in force: debug, info, warning or error."""
    return next(name for name, value in _LEVELS.items() if value == _threshold)


def configure_logging(*, fmt: LogFormat = "json", level: str = "info", stream: object = None) -> None:
    """Configures structlog once for a process.

    Keys are kept as given, so dotted keys such as ``src.identity`` survive into JSON unchanged.
    The level can be changed later with :func:`set_level`.
    """
    set_level(level)
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            _level_gate,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


def get_logger(component: str) -> structlog.typing.FilteringBoundLogger:
    """A logger bound to ``component``; bind connection keys once per connection."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger().bind(component=component)
    return logger
