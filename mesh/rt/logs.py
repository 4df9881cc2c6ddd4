"""structlog set-up: JSON lines for machines, coloured console for people, stable dotted keys."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

__all__ = ["LogFormat", "configure_logging", "get_logger"]

LogFormat = Literal["json", "console"]


def configure_logging(*, fmt: LogFormat = "json", level: str = "info", stream: object = None) -> None:
    """Configures structlog once for a process.

    Keys are kept as given, so dotted keys such as ``src.identity`` survive into JSON unchanged.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}; use one of debug, info, warning, error")
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


def get_logger(component: str) -> structlog.typing.FilteringBoundLogger:
    """A logger bound to ``component``; bind connection keys once per connection."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger().bind(component=component)
    return logger
