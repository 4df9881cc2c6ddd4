"""Catalogue 30 and 9(a): the ztunnel container of a node's ztunnel pod killed with SIGKILL while its
pods are enrolled.

While no ztunnel runs, an enrolled pod's connections are refused: the capture rules stay in the pod,
so nothing bypasses the mesh in plaintext. The lab restarts the container in the same pod (as
kubelet does); the node agent replays its snapshot to the new process, which takes the pods over
with the same rules, and traffic flows again with the server's identity in the access log. No
network namespace is added.

The lab daemon, which restarts containers, is frozen for the moment of the check, so the new
ztunnel cannot win the race against it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Iterator

import pytest

from meshctl.lab.meshview import ZTUNNEL, mesh_pods, ztunnel
from tests.e2e.conftest import CLIENT_NODE, HTTP_PORT, MeshLab, spiffe

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), 2).close()
    print("connected")
except ConnectionRefusedError:
    print("refused")
except OSError as exc:
    print(type(exc).__name__)
"""


def _rules(mesh: MeshLab, pod: str) -> str:
    """The pod's rules without comments and counters (those change with time and traffic)."""
    lines = (line for line in mesh.iptables(pod).splitlines() if not line.startswith("#"))
    return re.sub(r"\[\d+:\d+\]", "", "\n".join(lines))


def _namespaces(mesh: MeshLab) -> set[str]:
    """The network namespaces of the lab's live pods that exist (pods of earlier tests still being
    deleted, and their namespaces, do not count)."""
    present = set(os.listdir("/var/run/netns"))
    pods = [p for p in mesh.lab.pods() if not p["spec"].get("hostNetwork") and p["metadata"].get("uid")]
    return {mesh.lab.pod_netns(p) for p in pods} & present


@contextlib.contextmanager
def _lab_daemon_frozen(mesh: MeshLab) -> Iterator[None]:
    pid = mesh.lab.daemon_pid()
    assert pid is not None, "the lab daemon is not running"
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_killed_ztunnel_fails_closed_and_its_successor_takes_the_pods_over(mesh: MeshLab) -> None:
    server_ip = mesh.pod_ip("demo/server")
    url = f"http://{server_ip}:{HTTP_PORT}/restart"
    assert mesh.curl("demo/client", url).returncode == 0
    rules = _rules(mesh, "demo/client")
    namespaces = _namespaces(mesh)
    pod = ztunnel(mesh.lab, CLIENT_NODE)
    killed = pod.pid()
    assert killed is not None, f"the container of {pod.ref} is not running"

    with _lab_daemon_frozen(mesh):
        os.kill(killed, signal.SIGKILL)
        probe = mesh.exec("demo/client", "python", "-c", PROBE, server_ip, str(HTTP_PORT))
        assert probe.stdout.strip() == "refused", probe  # captured, and nobody to take it: no bypass
        assert _rules(mesh, "demo/client") == rules
        legacy = mesh.curl("legacy/client", url)
        assert legacy.returncode == 0, "a pod outside the mesh does not depend on ztunnel"

    mesh.wait_for(
        lambda: pod.pid() not in (None, killed), what=f"the lab to start {pod.ref} again", timeout=30
    )
    mesh.wait_for(
        lambda: mesh.curl("demo/client", url).returncode == 0,
        what="traffic through the new ztunnel",
        timeout=30,
    )
    assert _rules(mesh, "demo/client") == rules, "the new ztunnel took the pod over with the same rules"
    on_node = [p.name for p in mesh_pods(mesh.lab, ZTUNNEL) if p.node == CLIENT_NODE]
    assert on_node == [pod.name], "the container restarted in the same pod"
    assert _namespaces(mesh) == namespaces, "no network namespace was added or lost"
    outbound = [e for e in mesh.access_log(CLIENT_NODE) if e.get("direction") == "outbound"]
    assert outbound, "the new ztunnel logged the connection"
    assert outbound[-1].get("dst.identity") == spiffe("demo", "server")
