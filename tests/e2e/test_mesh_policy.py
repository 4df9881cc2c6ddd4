"""Policy on the lab: the ``legacy`` namespace is left alone by capture; a STRICT PeerAuthentication
keeps a plaintext client's bytes from the app; an L4 DENY AuthorizationPolicy refuses the demo client,
says so in the access log and metrics, and stops refusing once removed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from meshctl.lab.meshview import ztunnel
from meshctl.ztunnel_config import fetch_admin
from tests.e2e.conftest import (
    CLIENT_NODE,
    HTTP_PORT,
    REDIRECTION,
    SEND,
    SERVER_NODE,
    SINK_PORT,
    MeshLab,
    spiffe,
)
from ztunnel.cni.rules import PROBE_SOURCE

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

STRICT_POLICY = "istio_converted_static_strict"
NBYTES = 5000


def peer_authentication_strict() -> dict[str, Any]:
    """Istio docs' namespace-wide STRICT mTLS, for ``demo``."""
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": "demo"},
        "spec": {"mtls": {"mode": "STRICT"}},
    }


def deny_demo_client() -> dict[str, Any]:
    """An L4 DENY for the demo client's principal on the server workloads."""
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-demo-client", "namespace": "demo"},
        "spec": {
            "selector": {"matchLabels": {"app": "server"}},
            "action": "DENY",
            "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/demo/sa/client"]}}]}],
        },
    }


def sink_receipts(mesh: MeshLab, source_ip: str) -> list[int]:
    """Byte counts the sink app recorded for connections from ``source_ip``."""
    pattern = re.compile(rf"^sink: received (\d+) bytes from {re.escape(source_ip)}$", re.MULTILINE)
    return [int(n) for n in pattern.findall(mesh.lab.logs("demo/sink"))]


def test_legacy_namespace_is_untouched_by_capture(mesh: MeshLab) -> None:
    legacy, demo = mesh.pod("legacy/client"), mesh.pod("demo/client")
    assert ":ISTIO_" in mesh.iptables("demo/client"), "control: an enrolled pod has the ISTIO chains"
    rules = mesh.iptables("legacy/client")
    assert "ISTIO" not in rules, f"the legacy pod has capture rules:\n{rules}"
    assert REDIRECTION not in legacy["metadata"].get("annotations", {})
    assert demo["metadata"]["annotations"][REDIRECTION] == "enabled"
    for node in (CLIENT_NODE, SERVER_NODE):
        protocols = {
            w["namespace"] + "/" + w["workloadName"]: w["protocol"] for w in mesh.zc(node, "workloads")
        }
        assert protocols.get("legacy/client") == "TCP", (node, protocols)
        assert protocols.get("demo/client") == "HBONE", (node, protocols)


@pytest.fixture
def strict_demo(mesh: MeshLab) -> Iterator[None]:
    """``demo`` STRICT while the test runs; the sink workload's ztunnel has the converted policy."""
    mesh.lab.apply([peer_authentication_strict()])
    try:
        mesh.wait_policy(SERVER_NODE, STRICT_POLICY, present=True)
        sink = mesh.pod("demo/sink")["metadata"]["name"]

        def bound() -> bool:
            workload = mesh.workload(SERVER_NODE, sink)
            return (
                workload is not None and f"istio-system/{STRICT_POLICY}" in workload["authorizationPolicies"]
            )

        mesh.wait_for(bound, what="the sink workload to reference the STRICT policy")
        yield
    finally:
        mesh.lab.delete([peer_authentication_strict()])
        mesh.wait_policy(SERVER_NODE, STRICT_POLICY, present=False)


def _plaintext_denied(mesh: MeshLab) -> float:
    return mesh.metric(
        SERVER_NODE, "istio_tcp_connections_closed_total",
        reporter="destination", destination_workload="sink", source_workload_namespace="legacy",
        source_principal="unknown", response_flags="DENY",
    )  # fmt: skip


def test_strict_demo_gets_zero_bytes_from_legacy_but_the_demo_client_gets_through(
    mesh: MeshLab, strict_demo: None
) -> None:
    sink_ip = mesh.pod_ip("demo/sink")
    legacy_ip, client_ip = mesh.pod_ip("legacy/client"), mesh.pod_ip("demo/client")
    before_legacy, before_client = sink_receipts(mesh, legacy_ip), sink_receipts(mesh, client_ip)
    denied_before, logged_before = _plaintext_denied(mesh), len(mesh.access_log(SERVER_NODE))

    legacy = mesh.send("legacy/client", sink_ip, SINK_PORT, NBYTES)
    client = mesh.send("demo/client", sink_ip, SINK_PORT, NBYTES)

    assert client.error == "" and client.sent == NBYTES, client
    mesh.wait_for(
        lambda: sink_receipts(mesh, client_ip) == [*before_client, NBYTES],
        what="the sink to record the demo client's bytes",
    )
    assert sink_receipts(mesh, legacy_ip) == before_legacy, (
        f"the STRICT sink got bytes from the plaintext client ({legacy}):\n{mesh.lab.logs('demo/sink')}"
    )

    def refused() -> list[dict[str, Any]]:
        entries = _errors(
            mesh, SERVER_NODE, since=logged_before, direction="inbound", addr=f"{sink_ip}:{SINK_PORT}"
        )
        return [
            e for e in entries if e["src.addr"].startswith(f"{legacy_ip}:") and STRICT_POLICY in e["error"]
        ]

    refusals = mesh.wait_for(refused, what="the inbound access-log line of the refused plaintext connection")
    assert all("src.identity" not in e for e in refusals), refusals
    mesh.wait_for(
        lambda: _plaintext_denied(mesh) == denied_before + 1,
        what="the refused plaintext connection counted once with DENY",
    )


def _send_from_node(mesh: MeshLab, node: str, host: str, port: int) -> dict[str, Any]:
    """What a node-local process (as kubelet is) gets when it sends NBYTES to ``host:port``."""
    argv = [sys.executable, "-c", SEND, host, str(port), str(NBYTES), "probe"]
    in_node = ["ip", "netns", "exec", mesh.node_netns(node), *argv]
    done = subprocess.run(in_node, check=False, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_node_local_probes_reach_a_strict_pod_past_ztunnel_and_nothing_else_does(
    mesh: MeshLab, strict_demo: None
) -> None:
    """kubelet probes come from the pod's own node: the node agent SNATs them to 169.254.7.127, which
    the pod's rules let past ztunnel, so they work under STRICT (Istio's hostprobe). The same bytes from
    another node are forwarded traffic, captured and refused."""
    sink_ip = mesh.pod_ip("demo/sink")
    before = sink_receipts(mesh, PROBE_SOURCE)
    local = _send_from_node(mesh, SERVER_NODE, sink_ip, SINK_PORT)
    assert local["error"] == "" and local["sent"] == NBYTES, local
    mesh.wait_for(
        lambda: sink_receipts(mesh, PROBE_SOURCE) == [*before, NBYTES],
        what=f"the sink to record the probe's bytes from {PROBE_SOURCE}",
    )
    logged_before, delivered = len(mesh.access_log(SERVER_NODE)), mesh.lab.logs("demo/sink").count("received")
    _send_from_node(mesh, CLIENT_NODE, sink_ip, SINK_PORT)
    addr = f"{sink_ip}:{SINK_PORT}"
    mesh.wait_for(
        lambda: _errors(mesh, SERVER_NODE, since=logged_before, direction="inbound", addr=addr),
        what="ztunnel to refuse the other node's plaintext connection",
    )
    assert mesh.lab.logs("demo/sink").count("received") == delivered, "the other node's bytes got through"


def test_without_strict_the_legacy_client_does_deliver(mesh: MeshLab) -> None:
    """The control for the STRICT test: the same plaintext bytes arrive when ``demo`` is permissive,
    and once both sides closed, the destination ztunnel closes the relay and logs the connection."""
    legacy_ip, sink_ip = mesh.pod_ip("legacy/client"), mesh.pod_ip("demo/sink")
    before, logged_before = sink_receipts(mesh, legacy_ip), len(mesh.access_log(SERVER_NODE))
    sent = mesh.send("legacy/client", sink_ip, SINK_PORT, NBYTES)
    assert sent.error == "", sent
    mesh.wait_for(
        lambda: sink_receipts(mesh, legacy_ip) == [*before, NBYTES], what="plaintext bytes at the sink"
    )

    def logged() -> list[dict[str, Any]]:
        entries = mesh.access_log(SERVER_NODE)[logged_before:]
        return [
            e
            for e in entries
            if e["src.addr"].startswith(f"{legacy_ip}:") and e.get("direction") == "inbound"
        ]

    (entry,) = mesh.wait_for(logged, what="the inbound plaintext connection's access-log line at close")
    assert entry["dst.addr"] == f"{sink_ip}:{SINK_PORT}" and entry["bytes_recv"] == NBYTES, entry
    assert "src.identity" not in entry and "error" not in entry, entry
    open_now = fetch_admin("127.0.0.1:15000", "/connections", netns=ztunnel(mesh.lab, SERVER_NODE).netns)
    assert not [c for c in open_now["connections"] if c["src.addr"].startswith(f"{legacy_ip}:")], open_now


@pytest.fixture
def deny_policy(mesh: MeshLab) -> Iterator[dict[str, Any]]:
    """The DENY policy applied and bound to the server workload; removed again (and gone) afterwards."""
    policy = deny_demo_client()
    mesh.lab.apply([policy])
    try:
        server = mesh.pod("demo/server")["metadata"]["name"]

        def bound() -> bool:
            workload = mesh.workload(SERVER_NODE, server)
            return workload is not None and "demo/deny-demo-client" in workload["authorizationPolicies"]

        mesh.wait_policy(SERVER_NODE, "deny-demo-client", present=True)
        mesh.wait_for(bound, what="the server workload to reference deny-demo-client")
        yield policy
    finally:
        if mesh.lab.objects("AuthorizationPolicy", "demo"):
            mesh.lab.delete([policy])
        mesh.wait_policy(SERVER_NODE, "deny-demo-client", present=False)


def _denied(mesh: MeshLab, node: str, reporter: str) -> float:
    return mesh.metric(
        node, "istio_tcp_connections_closed_total",
        reporter=reporter, destination_workload="server", response_flags="DENY",
        source_principal=spiffe("demo", "client"),
    )  # fmt: skip


def _errors(mesh: MeshLab, node: str, *, since: int, direction: str, addr: str) -> list[dict[str, Any]]:
    entries = mesh.access_log(node)[since:]
    return [
        e for e in entries if (e.get("direction"), e.get("dst.addr")) == (direction, addr) and e.get("error")
    ]


def test_l4_deny_refuses_the_demo_client_and_says_so(mesh: MeshLab, deny_policy: dict[str, Any]) -> None:
    server_ip = mesh.pod_ip("demo/server")
    addr, url = f"{server_ip}:{HTTP_PORT}", f"http://{server_ip}:{HTTP_PORT}/denied"
    sides = ((CLIENT_NODE, "source", "outbound"), (SERVER_NODE, "destination", "inbound"))
    denied_before = {node: _denied(mesh, node, reporter) for node, reporter, _ in sides}
    logged_before = {node: len(mesh.access_log(node)) for node, _, _ in sides}

    refused = mesh.curl("demo/client", url)
    assert refused.returncode != 0 and refused.stdout == "", f"curl got through a DENY policy: {refused}"

    for node, reporter, direction in sides:

        def denial(node: str = node, direction: str = direction) -> list[dict[str, Any]]:
            return _errors(mesh, node, since=logged_before[node], direction=direction, addr=addr)

        def counted(node: str = node, reporter: str = reporter) -> bool:
            return _denied(mesh, node, reporter) == denied_before[node] + 1

        (entry, *_) = mesh.wait_for(denial, what=f"the {direction} access-log line with the denial on {node}")
        identities = (entry["src.identity"], entry["dst.identity"])
        assert identities == (spiffe("demo", "client"), spiffe("demo", "server")), entry
        # the server's ztunnel names the policy; the client's saw the HBONE CONNECT answered 401
        assert ("DENY" in entry["error"]) if direction == "inbound" else ("401" in entry["error"]), entry
        mesh.wait_for(counted, what=f'response_flags="DENY" counted once by reporter={reporter} on {node}')

    mesh.lab.delete([deny_policy])
    mesh.wait_policy(SERVER_NODE, "deny-demo-client", present=False)

    def works_again() -> str | None:
        done = mesh.curl("demo/client", url)
        return done.stdout if done.returncode == 0 else None

    body = mesh.wait_for(works_again, what="curl to work again after the policy is removed")
    assert json.loads(body)["path"] == "/denied", body
