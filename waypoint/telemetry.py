"""The waypoint's request telemetry with Istio's names and labels (``reporter="waypoint"``):
``istio_requests_total``, ``istio_request_duration_milliseconds``, ``istio_request_bytes`` and
``istio_response_bytes`` (histograms), and one JSON access-log line per request.

The labels are Istio's standard set (``mesh.telemetry.LABELS`` plus ``response_code`` and
``grpc_response_status``). Who the client and the chosen endpoint are comes from the workload API
the waypoint receives (an :class:`AddressBook`): the client by its IP, the endpoint by the
address the request went to, the service by the cluster's hostname; without it, ``unknown``.
A request answered without an upstream (an injected abort) after its route chose a cluster
whose endpoints are all one workload (a subset: one version) is reported against that workload,
so a fault injected into a canary's traffic shows in that version's signals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import structlog

from mesh.model import Service, Workload
from mesh.rt.metrics import Counter, Histogram, Registry
from mesh.telemetry import LABELS, ConnectionRecord

__all__ = ["REQUEST_LABELS", "AddressBook", "RequestMetrics", "RequestRecord"]

REQUEST_LABELS = (*LABELS, "response_code", "grpc_response_status")
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
    source_addr: str = ""
    """The client's IP (the HBONE peer: the client pod's ztunnel connects from the pod's address)."""
    grpc_status: str = ""


class AddressBook:
    """Workloads by IP and Services by hostname, from the workload API the waypoint receives
    (re-indexed when ``addresses()`` returns a new mapping)."""

    def __init__(self, addresses: Callable[[], Mapping[str, Workload | Service]]) -> None:
        self._addresses = addresses
        self._indexed: Mapping[str, Workload | Service] | None = None
        self._by_ip: dict[str, Workload] = {}
        self._by_host: dict[str, Service] = {}
        self._by_vip: dict[str, Service] = {}

    def workload_at(self, ip: str) -> Workload | None:
        """The workload with address ``ip``, if known."""
        self._index()
        return self._by_ip.get(ip)

    def service_at(self, ip: str) -> Service | None:
        """The Service with the virtual IP ``ip``, if known."""
        self._index()
        return self._by_vip.get(ip)

    def service_named(self, hostname: str) -> Service | None:
        """The Service with this hostname (``name.namespace.svc.<domain>``), if known."""
        self._index()
        return self._by_host.get(hostname)

    def _index(self) -> None:
        current = self._addresses()
        if current is self._indexed:
            return
        self._indexed = current
        self._by_ip = {str(a): v for v in current.values() if isinstance(v, Workload) for a in v.addresses}
        self._by_host = {v.hostname: v for v in current.values() if isinstance(v, Service)}
        self._by_vip = {str(ip): v for v in self._by_host.values() for _, ip in v.vips}


class RequestMetrics:
    """Counts and logs finished requests."""

    def __init__(
        self,
        registry: Registry,
        log: structlog.typing.FilteringBoundLogger,
        book: AddressBook | None = None,
        *,
        cluster_hosts: Callable[[str], Sequence[str]] = lambda _: (),
    ) -> None:
        """``cluster_hosts`` gives a cluster's endpoint IPs (to name the workload an injected abort
        was routed to)."""
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
        self.mirrors_skipped = Counter(
            "waypoint_mirror_skipped_total",
            "Mirrored copies not sent: the request body was over the per-request buffer limit",
            ("upstream_cluster",), registry=registry,
        )  # fmt: skip
        self._log = log
        self._book = book
        self._cluster_hosts = cluster_hosts

    def mirror_skipped(self, cluster: str) -> None:
        """Counts a mirror that was not sent for want of the request body."""
        self.mirrors_skipped.labels(cluster).inc()

    def _destination(self, record: RequestRecord) -> Workload | None:
        book = self._book
        if book is None:
            return None
        if record.upstream:
            return book.workload_at(record.upstream.rpartition(":")[0])
        if not record.cluster:
            return None
        workloads = [book.workload_at(ip) for ip in self._cluster_hosts(record.cluster)]
        names = {(w.namespace, w.workload_name) if w else None for w in workloads}
        return workloads[0] if len(names) == 1 and None not in names else None

    def done(self, record: RequestRecord) -> None:
        """Counts ``record`` and writes its access-log line."""
        hostname = record.cluster.split("|")[-1] if "|" in record.cluster else record.cluster
        book = self._book
        destination = self._destination(record)
        service = book.service_named(hostname) if book and hostname else None
        if service is None and hostname.count(".") >= 2:  # known by name only: Istio's labels still apply
            name, namespace = hostname.split(".")[:2]
            service = Service(name=name, namespace=namespace, hostname=hostname, vips=(), ports=())
        connection = ConnectionRecord(
            reporter="waypoint",
            source=book.workload_at(record.source_addr) if book and record.source_addr else None,
            source_principal=record.source_principal,
            destination=destination,
            destination_principal=destination.spiffe_uri if destination else "",
            service=service,
            mtls=record.mtls,
        )
        labels = (
            *connection.label_values(record.flags, request_protocol=record.protocol),
            str(record.status),
            record.grpc_status or "-",
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
