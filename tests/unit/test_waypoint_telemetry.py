"""The waypoint's request metrics carry Istio's standard labels, with the client and the endpoint
resolved from the workload API by address (``unknown`` where nothing is known)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from types import MappingProxyType

import structlog
from prometheus_client.parser import text_string_to_metric_families

from mesh.model import Service, Workload
from mesh.rt.metrics import build_registry, render
from mesh.telemetry import LABELS
from waypoint.telemetry import REQUEST_LABELS, AddressBook, RequestMetrics, RequestRecord

CLIENT = Workload(
    uid="c", name="client-7d9-abc", namespace="demo", addresses=(ipaddress.ip_address("10.244.1.2"),),
    service_account="client", canonical_name="client", canonical_revision="latest", workload_name="client",
)  # fmt: skip
SERVER = Workload(
    uid="s", name="server-v2-xyz", namespace="demo", addresses=(ipaddress.ip_address("10.244.2.3"),),
    service_account="server", canonical_name="server", canonical_revision="v2", workload_name="server-v2",
)  # fmt: skip
SERVICE = Service(
    name="server", namespace="demo", hostname="server.demo.svc.cluster.local", vips=(), ports=()
)


def record(**overrides: object) -> RequestRecord:
    fields: dict[str, object] = {
        "method": "GET", "path": "/", "authority": "server", "protocol": "http", "status": 503,
        "flags": "URX", "route": "default", "cluster": "inbound-vip|80|http/v2|server.demo.svc.cluster.local",
        "upstream": "10.244.2.3:8080", "duration_ms": 3.0, "request_bytes": 0, "response_bytes": 10,
        "source_principal": "spiffe://cluster.local/ns/demo/sa/client", "mtls": True,
        "source_addr": "10.244.1.2",
    }  # fmt: skip
    return RequestRecord(**{**fields, **overrides})  # type: ignore[arg-type]


def request_labels(metrics_text: bytes) -> list[dict[str, str]]:
    families = {f.name: f for f in text_string_to_metric_families(metrics_text.decode())}
    return [dict(s.labels) for s in families["istio_requests"].samples]


def test_labels_are_istios_with_client_and_endpoint_resolved_by_address() -> None:
    registry = build_registry(component="waypoint")
    addresses: Mapping[str, Workload | Service] = MappingProxyType({"c": CLIENT, "s": SERVER, "svc": SERVICE})
    RequestMetrics(registry, structlog.get_logger(), AddressBook(lambda: addresses)).done(record())
    (labels,) = request_labels(render(registry))
    assert set(labels) == set(REQUEST_LABELS) and set(LABELS) < set(labels)
    assert labels == labels | {
        "reporter": "waypoint",
        "source_workload": "client", "source_workload_namespace": "demo",
        "source_canonical_service": "client",
        "source_principal": "spiffe://cluster.local/ns/demo/sa/client",
        "destination_workload": "server-v2", "destination_workload_namespace": "demo",
        "destination_canonical_revision": "v2", "destination_version": "v2",
        "destination_principal": "spiffe://cluster.local/ns/demo/sa/server",
        "destination_service": "server.demo.svc.cluster.local", "destination_service_name": "server",
        "destination_service_namespace": "demo", "request_protocol": "http", "response_code": "503",
        "response_flags": "URX", "connection_security_policy": "mutual_tls", "grpc_response_status": "-",
    }  # fmt: skip


def test_without_the_workload_api_the_peers_are_unknown_but_the_service_is_named() -> None:
    registry = build_registry(component="waypoint")
    RequestMetrics(registry, structlog.get_logger()).done(record(mtls=False, source_principal=""))
    (labels,) = request_labels(render(registry))
    assert (labels["source_workload"], labels["destination_workload"]) == ("unknown", "unknown")
    assert (labels["destination_service_name"], labels["destination_service_namespace"]) == ("server", "demo")
    assert labels["connection_security_policy"] == "unknown"


def test_an_injected_abort_counts_against_the_one_workload_its_route_chose() -> None:
    registry = build_registry(component="waypoint")
    addresses: Mapping[str, Workload | Service] = MappingProxyType({"c": CLIENT, "s": SERVER})
    hosts = {"v2": ["10.244.2.3"], "mixed": ["10.244.2.3", "10.244.1.2"]}
    metrics = RequestMetrics(
        registry,
        structlog.get_logger(),
        AddressBook(lambda: addresses),
        cluster_hosts=lambda c: hosts.get(c, []),
    )
    metrics.done(record(upstream="", cluster="v2", flags="FI", status=503))
    metrics.done(record(upstream="", cluster="mixed", flags="FI", status=500))
    by_code = {labels["response_code"]: labels for labels in request_labels(render(registry))}
    assert by_code["503"]["destination_workload"] == "server-v2"
    assert by_code["500"]["destination_workload"] == "unknown"  # two workloads: no one to blame
