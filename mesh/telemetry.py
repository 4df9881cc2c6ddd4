"""Istio's telemetry vocabulary, pure: the ``istio_tcp_*`` label names, the record of who talked to
whom as one proxy saw it, and the access-log line of one connection with Istio's dotted keys.

Both proxies share it (the counters are in ``mesh.rt.tcp_metrics``). Missing label values are
``unknown`` as in Istio.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.model import Service, Workload

__all__ = ["LABELS", "ConnectionRecord", "access_log_fields"]

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

    def label_values(self, response_flags: str, *, request_protocol: str = "tcp") -> tuple[str, ...]:
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
                request_protocol,
                response_flags or "-",
                "mutual_tls" if self.mtls else "unknown",
            )
        )


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
