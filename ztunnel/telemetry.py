"""L4 telemetry with Istio's names: ``istio_tcp_*`` counters and one access-log line per connection.

Label values come from a pure ``ConnectionRecord`` so they are table-testable; missing values are
``unknown`` as in Istio. Byte counters follow Istio's quirk: for ``reporter=source`` received and
sent are flipped (the counter is from the destination's point of view); access logs are not.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.model import Service, Workload
from mesh.rt.metrics import Counter, CounterChild, Registry

__all__ = ["LABELS", "ConnectionRecord", "TcpMetrics", "access_log_fields"]

LABELS = (
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_service",
    "destination_service_namespace",
    "destination_service_name",
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
)


@dataclass(frozen=True, slots=True)
class ConnectionRecord:
    """Who talked to whom, as one side saw it."""

    reporter: str
    """``source`` (outbound side) or ``destination`` (inbound side)."""
    source: Workload | None
    source_principal: str
    destination: Workload | None
    destination_principal: str
    service: Service | None
    mtls: bool
    source_addr: str = ""
    destination_addr: str = ""
    hbone_addr: str = ""

    def label_values(self, response_flags: str) -> tuple[str, ...]:
        """Values in ``LABELS`` order."""
        src, dst, svc = self.source, self.destination, self.service
        return tuple(
            value or "unknown"
            for value in (
                self.reporter,
                src.workload_name if src else "",
                src.canonical_name if src else "",
                src.canonical_revision if src else "",
                src.namespace if src else "",
                self.source_principal,
                src.canonical_name if src else "",
                src.canonical_revision if src else "",
                src.cluster_id if src else "",
                svc.hostname if svc else "",
                svc.namespace if svc else "",
                svc.name if svc else "",
                dst.workload_name if dst else "",
                dst.canonical_name if dst else "",
                dst.canonical_revision if dst else "",
                dst.namespace if dst else "",
                self.destination_principal,
                dst.canonical_name if dst else "",
                dst.canonical_revision if dst else "",
                dst.cluster_id if dst else "",
                "tcp",
                response_flags or "-",
                "mutual_tls" if self.mtls else "unknown",
            )
        )


_Series = tuple[CounterChild, CounterChild, CounterChild, CounterChild]


class TcpMetrics:
    """The four stable ztunnel counters, registered in the given registry."""

    def __init__(self, registry: Registry) -> None:
        self.opened = Counter(
            "istio_tcp_connections_opened", "Total TCP connections opened", LABELS, registry=registry
        )
        self.closed = Counter(
            "istio_tcp_connections_closed", "Total TCP connections closed", LABELS, registry=registry
        )
        self.received = Counter(
            "istio_tcp_received_bytes",
            "Size of total bytes received during request",
            LABELS,
            registry=registry,
        )
        self.sent = Counter("istio_tcp_sent_bytes", "Size of total bytes sent", LABELS, registry=registry)
        self._series: dict[tuple[str, ...], _Series] = {}

    def _children(self, values: tuple[str, ...]) -> _Series:
        """The four counters' series for one label set: one lookup per connection instead of four."""
        series = self._series.get(values)
        if series is None:
            series = (
                self.opened.labels(*values),
                self.closed.labels(*values),
                self.received.labels(*values),
                self.sent.labels(*values),
            )
            self._series[values] = series
        return series

    def connection_opened(self, record: ConnectionRecord) -> None:
        """Counts an open (flags ``-``)."""
        self._children(record.label_values("-"))[0].inc()

    def connection_closed(
        self, record: ConnectionRecord, *, bytes_from_client: int, bytes_to_client: int, response_flags: str
    ) -> None:
        """Counts a close and its bytes; a refused connection counts as opened and closed."""
        opened, closed, received, sent = self._children(record.label_values(response_flags))
        if response_flags not in ("", "-"):
            opened.inc()
        closed.inc()
        # Istio reports bytes from the destination's point of view on both sides.
        received.inc(bytes_from_client)
        sent.inc(bytes_to_client)


def access_log_fields(
    record: ConnectionRecord,
    *,
    bytes_sent: int,
    bytes_recv: int,
    duration_ms: float,
    error: str = "",
) -> dict[str, object]:
    """The access-log line for one finished connection, with Istio's dotted keys."""
    src, dst = record.source, record.destination
    fields: dict[str, object] = {
        "src.addr": record.source_addr,
        "src.workload": src.name if src else None,
        "src.namespace": src.namespace if src else None,
        "src.identity": record.source_principal if record.mtls else None,
        "dst.addr": record.destination_addr,
        "dst.hbone_addr": record.hbone_addr or None,
        "dst.service": record.service.hostname if record.service else None,
        "dst.workload": dst.name if dst else None,
        "dst.namespace": dst.namespace if dst else None,
        "dst.identity": record.destination_principal or None,
        "direction": "outbound" if record.reporter == "source" else "inbound",
        "bytes_sent": bytes_sent,
        "bytes_recv": bytes_recv,
        "duration": f"{round(duration_ms)}ms",
    }
    if error:
        fields["error"] = error
    return {key: value for key, value in fields.items() if value is not None}
