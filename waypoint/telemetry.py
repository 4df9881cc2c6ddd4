"""The waypoint's request telemetry with Istio's names and labels (``reporter="waypoint"``):
``istio_requests_total``, ``istio_request_duration_milliseconds``, ``istio_request_bytes`` and
``istio_response_bytes`` (histograms), and one JSON access-log line per request."""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from mesh.rt.metrics import Counter, Histogram, Registry

__all__ = ["REQUEST_LABELS", "RequestMetrics", "RequestRecord"]

REQUEST_LABELS = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_workload",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
)
_MS_BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
               1800000, 3600000)  # fmt: skip
_BYTE_BUCKETS = (1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One finished request as the waypoint saw it."""

    method: str
    path: str
    authority: str
    protocol: str
    status: int
    flags: str
    route: str
    cluster: str
    upstream: str
    duration_ms: float
    request_bytes: int
    response_bytes: int
    source_principal: str = ""
    mtls: bool = False


class RequestMetrics:
    """Counts and logs finished requests."""

    def __init__(self, registry: Registry, log: structlog.typing.FilteringBoundLogger) -> None:
        self.requests = Counter("istio_requests_total", "Requests handled", REQUEST_LABELS, registry=registry)
        self.duration = Histogram(
            "istio_request_duration_milliseconds", "Request duration", REQUEST_LABELS, registry=registry,
            buckets=_MS_BUCKETS,
        )  # fmt: skip
        self.request_bytes = Histogram(
            "istio_request_bytes", "Request sizes", REQUEST_LABELS, registry=registry, buckets=_BYTE_BUCKETS
        )
        self.response_bytes = Histogram(
            "istio_response_bytes", "Response sizes", REQUEST_LABELS, registry=registry, buckets=_BYTE_BUCKETS
        )
        self._log = log

    def done(self, record: RequestRecord) -> None:
        """Counts ``record`` and writes its access-log line."""
        service = record.cluster.split("|")[-1] if "|" in record.cluster else record.cluster
        labels = (
            "waypoint",
            "unknown",
            "unknown",
            record.source_principal or "unknown",
            service or "unknown",
            service.split(".")[0] if service else "unknown",
            service.split(".")[1] if service.count(".") >= 2 else "unknown",
            "unknown",
            "Kubernetes",
            record.protocol,
            str(record.status),
            "-",
            record.flags or "-",
            "mutual_tls" if record.mtls else "unknown",
        )
        self.requests.labels(*labels).inc()
        self.duration.labels(*labels).observe(record.duration_ms)
        self.request_bytes.labels(*labels).observe(record.request_bytes)
        self.response_bytes.labels(*labels).observe(record.response_bytes)
        self._log.info(
            "request",
            **{
                "http.method": record.method,
                "http.path": record.path,
                "http.host": record.authority,
                "http.status": record.status,
                "protocol": record.protocol,
                "response_flags": record.flags or "-",
                "route_name": record.route,
                "upstream.cluster": record.cluster,
                "upstream.host": record.upstream,
                "duration": f"{round(record.duration_ms)}ms",
                "bytes_recv": record.request_bytes,
                "bytes_sent": record.response_bytes,
            },
        )
