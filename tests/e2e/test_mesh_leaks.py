"""Nothing is left behind by finished connections: after many connections of every kind a ztunnel
relays (HBONE both ways, plaintext into an enrolled pod, passthrough to a destination outside the
mesh: the node's own address, where its node agent answers readiness), the ztunnels' open
descriptors and tracked connections are back where they were, and each connection got its
access-log line."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from meshctl.lab.meshview import node_agent, ztunnel
from meshctl.ztunnel_config import fetch_admin
from tests.e2e.conftest import CLIENT_NODE, HTTP_PORT, SERVER_NODE, MeshLab

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ROUNDS = 25


def _fds(mesh: MeshLab, node: str) -> int:
    pod = ztunnel(mesh.lab, node)
    pid = pod.pid()
    assert pid is not None, f"{pod.ref} has no running process"
    return len(os.listdir(f"/proc/{pid}/fd"))


def _tracked(mesh: MeshLab, node: str) -> int:
    admin = fetch_admin("127.0.0.1:15000", "/connections", netns=ztunnel(mesh.lab, node).netns)
    return len(admin["connections"])


def _node_readiness_url(mesh: MeshLab, node: str) -> tuple[str, str]:
    """The node agent's readiness endpoint (``host:port``, path): it runs in the node's own network
    namespace (hostNetwork), so its address is the node's, outside the mesh."""
    agent = node_agent(mesh.lab, node)
    probe = mesh.pod(agent.ref)["spec"]["containers"][0]["readinessProbe"]["httpGet"]
    return f"{agent.ip}:{probe['port']}", probe["path"]


def _lines(mesh: MeshLab, node: str, match: Callable[[dict[str, object]], bool]) -> int:
    return sum(1 for entry in mesh.access_log(node) if match(entry))


def test_finished_connections_leave_no_descriptor_and_no_tracked_connection(mesh: MeshLab) -> None:
    server_ip, legacy_ip = mesh.pod_ip("demo/server"), mesh.pod_ip("legacy/client")
    outside, ready_path = _node_readiness_url(mesh, CLIENT_NODE)
    assert outside.partition(":")[0] == mesh.lab.settings.node(CLIENT_NODE).address, outside
    kinds = {
        "hbone": ("demo/client", f"http://{server_ip}:{HTTP_PORT}/leak"),
        "plaintext": ("legacy/client", f"http://{server_ip}:{HTTP_PORT}/leak"),
        "passthrough": ("demo/client", f"http://{outside}{ready_path}"),
    }
    counts = {
        "hbone": lambda e: e.get("direction") == "inbound" and "src.identity" in e,
        "plaintext": lambda e: str(e.get("src.addr", "")).startswith(f"{legacy_ip}:"),
        "passthrough": lambda e: e.get("dst.addr") == outside and "error" not in e,
    }
    nodes = {"hbone": SERVER_NODE, "plaintext": SERVER_NODE, "passthrough": CLIENT_NODE}
    for pod, url in kinds.values():  # warm up: pooled HBONE connections exist before the baseline
        assert mesh.curl(pod, url).returncode == 0, url
    mesh.wait_for(
        lambda: all(_tracked(mesh, n) == 0 for n in (CLIENT_NODE, SERVER_NODE)), what="a quiet mesh"
    )
    fds = {n: _fds(mesh, n) for n in (CLIENT_NODE, SERVER_NODE)}
    lines = {kind: _lines(mesh, nodes[kind], counts[kind]) for kind in kinds}

    for _ in range(ROUNDS):
        for kind, (pod, url) in kinds.items():
            done = mesh.curl(pod, url)
            assert done.returncode == 0, f"{kind}: {done.stderr}"

    for kind in kinds:
        mesh.wait_for(
            lambda kind=kind: _lines(mesh, nodes[kind], counts[kind]) >= lines[kind] + ROUNDS,  # type: ignore[misc]
            what=f"an access-log line for each {kind} connection",
        )
    mesh.wait_for(
        lambda: all(_tracked(mesh, n) == 0 for n in (CLIENT_NODE, SERVER_NODE)),
        what="no tracked connection left",
    )
    mesh.wait_for(
        lambda: all(_fds(mesh, n) <= fds[n] for n in fds),
        what=f"the ztunnels' descriptors back to {fds}",
    )
