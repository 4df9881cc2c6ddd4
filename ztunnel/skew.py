"""Version skew with a newer istiod: the fields ztunnel ignored, counted and logged once.

The rules themselves (what is ignored, what fails safe) live in ``mesh.convert``; this is where
an operator sees them applied: ``ztunnel_xds_ignored_fields_total{type,field}`` and one
``xds.field_ignored`` warning per message type and field (see docs/mixed-version-mesh.md).
"""

from __future__ import annotations

from structlog.typing import FilteringBoundLogger

from mesh.rt.metrics import Counter, Registry

__all__ = ["IgnoredFields"]


class IgnoredFields:
    """An ``on_ignored`` reporter for ``mesh.convert`` that counts and logs each ignored field."""

    def __init__(self, registry: Registry, log: FilteringBoundLogger) -> None:
        self._counter = Counter(
            "ztunnel_xds_ignored_fields",
            "Fields of xDS resources this ztunnel does not understand and ignored or treated fail-safe",
            ("type", "field"),
            registry=registry,
        )
        self._log = log
        self._logged: set[tuple[str, str]] = set()

    def __call__(self, message_type: str, field: str) -> None:
        """Counts one ignored ``field`` of ``message_type``; logs the first of each pair."""
        self._counter.labels(message_type, field).inc()
        if (message_type, field) in self._logged:
            return
        self._logged.add((message_type, field))
        self._log.warning(
            "xds.field_ignored",
            type=message_type,
            field=field,
            hint="istiod is newer than this ztunnel: see docs/mixed-version-mesh.md; upgrade ztunnel",
        )
