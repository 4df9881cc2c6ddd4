"""Catalogue 30 and 9(a): ztunnel killed with SIGKILL while its pods are enrolled.

While no ztunnel runs, an enrolled pod's connections are refused: the capture rules stay in the pod,
so nothing bypasses the mesh in plaintext. The lab restarts ztunnel (as the DaemonSet would); the
node agent replays its snapshot to the new one, which takes the pods over with the same rules,
and traffic flows again with the server's identity in the access log. No network namespace is added.

The lab daemon, which restarts processes, is frozen for the moment of the check, so the new
ztunnel cannot win the race against it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Iterator

import pytest

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


def _ztunnel_pid(mesh: MeshLab) -> int:
    return int((mesh.lab.paths.root / "mesh" / "pids" / f"ztunnel-{CLIENT_NODE}.pid").read_text().split()[0])


def _rules(mesh: MeshLab, pod: str) -> str:
    """The pod's rules without comments and counters (those change with time and traffic)."""
    lines = (line for line in mesh.iptables(pod).splitlines() if not line.startswith("#"))
    return re.sub(r"\[\d+:\d+\]", "", "\n".join(lines))


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
    namespaces = set(os.listdir("/var/run/netns"))
    killed = _ztunnel_pid(mesh)

    with _lab_daemon_frozen(mesh):
        os.kill(killed, signal.SIGKILL)
        probe = mesh.exec("demo/client", "python", "-c", PROBE, server_ip, str(HTTP_PORT))
        assert probe.stdout.strip() == "refused", probe  # captured, and nobody to take it: no bypass
        assert _rules(mesh, "demo/client") == rules
        legacy = mesh.curl("legacy/client", url)
        assert legacy.returncode == 0, "a pod outside the mesh does not depend on ztunnel"

    mesh.wait_for(lambda: _ztunnel_pid(mesh) != killed, what="the lab to start ztunnel again", timeout=30)
    mesh.wait_for(
        lambda: mesh.curl("demo/client", url).returncode == 0,
        what="traffic through the new ztunnel",
        timeout=30,
    )
    assert _rules(mesh, "demo/client") == rules, "the new ztunnel took the pod over with the same rules"
    assert set(os.listdir("/var/run/netns")) <= namespaces, "no network namespace was left behind"
    outbound = [e for e in mesh.access_log(CLIENT_NODE) if e.get("direction") == "outbound"]
    assert outbound, "the new ztunnel logged the connection"
    assert outbound[-1].get("dst.identity") == spiffe("demo", "server")
