"""ztunnel's data path with real namespaces, capture rules, TLS and applications: a client pod's curl
is captured, tunnelled over HBONE with both SPIFFE identities, and reaches the server pod's app;
metrics and access logs say so; policy denials are 401 and STRICT refuses plaintext."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from mesh.model import Action, Authorization, Match, Scope, StringMatch
from tests.netns.ztunnel_support import (
    Pod,
    build_pods,
    http_server,
    local_state,
    remove_pods,
    run_in,
    running_mesh,
)

pytestmark = [pytest.mark.netns, pytest.mark.timeout(90)]


@pytest.fixture
def pods() -> Iterator[list[Pod]]:
    created = build_pods(f"{os.getpid() % 10000}", capture={})
    try:
        yield created
    finally:
        remove_pods(created)


def _sample(registry: object, name: str, **labels: str) -> float:
    total = 0.0
    for metric in registry.collect():  # type: ignore[attr-defined]
        for sample in metric.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def test_curl_goes_through_hbone_with_both_identities(pods: list[Pod], tmp_path: Path) -> None:
    client, server = pods
    async with running_mesh(pods, tmp_path) as mesh, http_server(server):
        with capture_logs() as logs:
            code, out, err = await run_in(client, "curl", "-sS", "-m", "10", f"http://{server.ip}:8080/")
        assert code == 0, err
        assert "Directory listing" in out
        opened_src = _sample(mesh.registry, "istio_tcp_connections_opened_total", reporter="source")
        opened_dst = _sample(mesh.registry, "istio_tcp_connections_opened_total", reporter="destination")
        assert opened_src >= 1 and opened_dst >= 1
    done = [e for e in logs if e.get("event") == "connection complete"]
    inbound = [e for e in done if e.get("direction") == "inbound"]
    assert inbound, logs
    assert inbound[0]["src.identity"] == "spiffe://cluster.local/ns/demo/sa/client"
    assert inbound[0]["dst.identity"] == "spiffe://cluster.local/ns/demo/sa/server"
    assert inbound[0]["bytes_recv"] > 0 and inbound[0]["bytes_sent"] > 0


async def test_deny_policy_gives_401_and_deny_flag(pods: list[Pod], tmp_path: Path) -> None:
    client, server = pods
    async with running_mesh(pods, tmp_path) as mesh, http_server(server):
        deny = Authorization(
            "deny-client", "demo", Scope.NAMESPACE, Action.DENY,
            (((Match(principals=(StringMatch("exact", "cluster.local/ns/demo/sa/client"),)),),),),
        )  # fmt: skip
        state = local_state(pods)
        mesh.ctx.apply_state(type(state).build(workloads=state.workloads.values(), policies=[deny]))
        with capture_logs() as logs:
            code, out, _ = await run_in(client, "curl", "-sS", "-m", "10", f"http://{server.ip}:8080/")
        assert code != 0 and "Directory listing" not in out
        assert _sample(mesh.registry, "istio_tcp_connections_closed_total", response_flags="DENY") >= 1
    errors = [e for e in logs if e.get("event") == "connection complete" and e.get("error")]
    assert any("DENY" in str(e.get("error")) or "denied" in str(e.get("error")) for e in errors), errors
