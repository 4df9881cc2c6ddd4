"""The logger interface the transport takes (structlog's bound loggers fit it) and a cheap default.

The transport does not import structlog itself: a relay process stays small (calibration: +12.7 MB).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

__all__ = ["EventLog", "default_log"]


class EventLog(Protocol):
    """Structured logging with dotted keys, as ``structlog.typing.FilteringBoundLogger`` provides."""

    def debug(self, event: str, **kw: Any) -> Any:
        """Logs at debug level."""
        ...

    def info(self, event: str, **kw: Any) -> Any:
        """Logs at info level."""
        ...

    def warning(self, event: str, **kw: Any) -> Any:
        """Logs at warning level."""
        ...


class _StdlibLog:
    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def _log(self, level: int, event: str, kw: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            fields = " ".join(f"{k}={v!r}" for k, v in kw.items())
            self._logger.log(level, "%s %s", event, fields)

    def debug(self, event: str, **kw: Any) -> None:
        self._log(logging.DEBUG, event, kw)

    def info(self, event: str, **kw: Any) -> None:
        self._log(logging.INFO, event, kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._log(logging.WARNING, event, kw)


def default_log() -> EventLog:
    """A stdlib-logging backed :class:`EventLog` named ``mesh.rt.hbone``."""
    return _StdlibLog(logging.getLogger("mesh.rt.hbone"))
