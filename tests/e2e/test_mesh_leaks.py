"""Nothing is left behind by finished connections: after many connections of every kind a ztunnel
relays (HBONE both ways, plaintext into an enrolled pod, passthrough to a destination outside the
mesh: the node's own address), the ztunnels' open descriptors and tracked connections are back where
they were, and each connection got its access-log line."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from meshctl.ztunnel_config import fetch_admin
from tests.e2e.conftest import CLIENT_NODE, HTTP_PORT, SERVER_NODE, MeshLab

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ROUNDS = 25


def _fds(mesh: MeshLab, node: str) -> int:
    pid = int((mesh.lab.paths.root / "mesh" / "pids" / f"ztunnel-{node}.pid").read_text().split()[0])
    return len(os.listdir(f"/proc/{pid}/fd"))


def _tracked(mesh: MeshLab, node: str) -> int:
    return len(fetch_admin("127.0.0.1:15000", "/connections", netns=mesh.node_netns(node))["connections"])


def _lines(mesh: MeshLab, node: str, match: Callable[[dict[str, object]], bool]) -> int:
    return sum(1 for entry in mesh.access_log(node) if match(entry))


def test_finished_connections_leave_no_descriptor_and_no_tracked_connection(mesh: MeshLab) -> None:
    server_ip, legacy_ip = mesh.pod_ip("demo/server"), mesh.pod_ip("legacy/client")
    outside = f"{mesh.lab.settings.node(CLIENT_NODE).address}:15021"  # the node's own readiness port
    kinds = {
        "hbone": ("demo/client", f"http://{server_ip}:{HTTP_PORT}/leak"),
        "plaintext": ("legacy/client", f"http://{server_ip}:{HTTP_PORT}/leak"),
        "passthrough": ("demo/client", f"http://{outside}/healthz/ready"),
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
