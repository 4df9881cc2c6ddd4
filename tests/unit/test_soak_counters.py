"""The soak's per-label-set reconciliation of ztunnel's opened and closed counters."""

from __future__ import annotations

import dataclasses

from mesh.rt.metrics import build_registry, render
from mesh.rt.tcp_metrics import TcpMetrics
from perf._ztunnel_lab import count_mtls_opened
from perf.soak_ztunnel import _unbalanced
from tests.unit.test_ztunnel_telemetry import RECORD


def test_only_the_label_set_opened_and_never_closed_is_reported() -> None:
    registry = build_registry(component="ztunnel")
    metrics = TcpMetrics(registry)
    metrics.connection_opened(RECORD)  # a normal connection: opened "-", closed "-"
    metrics.connection_closed(RECORD, bytes_from_client=1, bytes_to_client=1, response_flags="-")
    refused = dataclasses.replace(RECORD, reporter="source")  # refused: both counted at close
    metrics.connection_closed(refused, bytes_from_client=0, bytes_to_client=0, response_flags="CONNECT")
    assert _unbalanced(render(registry).decode()) == []
    assert count_mtls_opened(render(registry).decode()) == 1  # RECORD: reporter=destination, mTLS
    leaked = dataclasses.replace(RECORD, source_addr="10.244.1.5:40001", mtls=False)
    metrics.connection_opened(leaked)
    (only,) = _unbalanced(render(registry).decode())
    assert (only["opened"], only["closed"]) == (1, 0)
    assert 'connection_security_policy="unknown"' in only["labels"]
    assert "response_flags" not in only["labels"]
