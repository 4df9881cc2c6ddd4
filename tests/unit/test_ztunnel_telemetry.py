"""ztunnel's L4 metrics and access-log fields, with Istio's names and labels."""

from __future__ import annotations

import shutil
import subprocess
from ipaddress import ip_address

import pytest

from mesh.model import Service, Workload
from mesh.rt.metrics import build_registry, render
from mesh.rt.tcp_metrics import TcpMetrics
from mesh.telemetry import LABELS, ConnectionRecord, access_log_fields

CLIENT = Workload(
    uid="Kubernetes//Pod/demo/client-1",
    name="client-1",
    namespace="demo",
    addresses=(ip_address("10.244.1.5"),),
    canonical_name="client",
    canonical_revision="v1",
    workload_name="client",
)
SERVER = Workload(
    uid="Kubernetes//Pod/demo/server-1",
    name="server-1",
    namespace="demo",
    addresses=(ip_address("10.244.2.7"),),
    service_account="server",
    canonical_name="server",
    canonical_revision="v2",
    workload_name="server-v2",
)
SERVICE = Service("server", "demo", "server.demo.svc.cluster.local", (), ())
RECORD = ConnectionRecord(
    reporter="destination",
    source=CLIENT,
    source_principal="spiffe://cluster.local/ns/demo/sa/client",
    destination=SERVER,
    destination_principal="spiffe://cluster.local/ns/demo/sa/server",
    service=SERVICE,
    mtls=True,
    source_addr="10.244.1.5:40000",
    destination_addr="10.244.2.7:8080",
    hbone_addr="10.244.2.7:15008",
)


def test_label_values() -> None:
    labels = dict(zip(LABELS, RECORD.label_values("-"), strict=True))
    assert labels["reporter"] == "destination"
    assert labels["source_workload"] == "client"
    assert labels["destination_workload"] == "server-v2"
    assert labels["destination_canonical_revision"] == "v2"
    assert labels["destination_service"] == "server.demo.svc.cluster.local"
    assert labels["source_principal"] == "spiffe://cluster.local/ns/demo/sa/client"
    assert labels["connection_security_policy"] == "mutual_tls"
    assert labels["response_flags"] == "-"


def test_missing_values_are_unknown() -> None:
    plaintext = ConnectionRecord("destination", None, "", SERVER, "", None, mtls=False)
    labels = dict(zip(LABELS, plaintext.label_values("DENY"), strict=True))
    assert labels["source_workload"] == "unknown"
    assert labels["source_principal"] == "unknown"
    assert labels["destination_service"] == "unknown"
    assert labels["connection_security_policy"] == "unknown"
    assert labels["response_flags"] == "DENY"


def test_counters_count_connections_and_bytes() -> None:
    registry = build_registry(component="ztunnel")
    metrics = TcpMetrics(registry)
    metrics.connection_opened(RECORD)
    metrics.connection_closed(RECORD, bytes_from_client=100, bytes_to_client=2000, response_flags="-")
    denied = ConnectionRecord("destination", None, "", SERVER, "", None, mtls=False)
    metrics.connection_closed(denied, bytes_from_client=0, bytes_to_client=0, response_flags="DENY")
    labels = dict(zip(LABELS, RECORD.label_values("-"), strict=True))
    assert registry.get_sample_value("istio_tcp_connections_opened_total", labels) == 1
    assert registry.get_sample_value("istio_tcp_connections_closed_total", labels) == 1
    assert registry.get_sample_value("istio_tcp_received_bytes_total", labels) == 100
    assert registry.get_sample_value("istio_tcp_sent_bytes_total", labels) == 2000
    deny_labels = dict(zip(LABELS, denied.label_values("DENY"), strict=True))
    assert registry.get_sample_value("istio_tcp_connections_opened_total", deny_labels) == 1
    assert registry.get_sample_value("istio_tcp_connections_closed_total", deny_labels) == 1


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool comes with 'make test' (Debian prometheus)"
)
def test_exposition_passes_promtool() -> None:
    registry = build_registry(component="ztunnel")
    metrics = TcpMetrics(registry)
    metrics.connection_opened(RECORD)
    metrics.connection_closed(RECORD, bytes_from_client=1, bytes_to_client=2, response_flags="-")
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=render(registry), capture_output=True, timeout=20, check=False
    )
    assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()


def test_access_log_fields() -> None:
    fields = access_log_fields(RECORD, bytes_sent=2000, bytes_recv=100, duration_ms=12.6)
    assert fields["src.identity"] == "spiffe://cluster.local/ns/demo/sa/client"
    assert fields["dst.identity"] == "spiffe://cluster.local/ns/demo/sa/server"
    assert fields["dst.service"] == "server.demo.svc.cluster.local"
    assert fields["direction"] == "inbound"
    assert fields["duration"] == "13ms"
    assert "error" not in fields
    plaintext = ConnectionRecord(
        "destination", None, "", SERVER, "", None, mtls=False, source_addr="1.2.3.4:5"
    )
    denied = access_log_fields(plaintext, bytes_sent=0, bytes_recv=0, duration_ms=0, error="policy denied")
    assert "src.identity" not in denied and denied["error"] == "policy denied"
