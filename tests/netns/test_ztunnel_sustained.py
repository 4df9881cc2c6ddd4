"""Issue 16: sustained new connections from one client to one server pod, through both ztunnels.

Every connection the server's ztunnel delivers comes from the client's IP, and each one it closes
leaves a TIME_WAIT socket in the server pod for 60 s. The server pod's ephemeral range is narrowed
to 10,000 ports so that this machine's rate (about 700 connections a second here) runs through it
well within those 60 s: without a way to reuse TIME_WAIT tuples (the in-pod bind with
IP_BIND_ADDRESS_NO_PORT plus the pod sysctl ``net.ipv4.tcp_tw_reuse=1``) the connects then fail
(with the default 28,232 ports they only slow down: 30,000 connections took 87 s instead of 44 s).
Rates are measured in ``perf/bench_ztunnel_sustained``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.netns.ztunnel_support import Pod, metric_total, run_in, running_mesh, sh, tcp_echo

pytestmark = pytest.mark.netns

CONNECTIONS = 30_000
PORTS = (40_000, 49_999)

# Sequential connections: connect, one byte echoed, close; prints "ok failed first_error".
_SEQUENTIAL = r"""
import socket, sys
dst, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ok = failed = 0
first = "-"
for _ in range(n):
    try:
        with socket.create_connection((dst, port), timeout=10) as conn:
            conn.sendall(b"x")
            if conn.recv(1) != b"x":
                raise ConnectionError("no echo")
        ok += 1
    except OSError as exc:
        failed += 1
        first = first if first != "-" else repr(exc).replace(" ", "_")
print(ok, failed, first)
"""


@pytest.mark.timeout(400)
async def test_30000_sequential_connections_to_one_server_pod_all_succeed(
    pods: list[Pod], tmp_path: Path
) -> None:
    client, server = pods
    sh("sysctl", "-qw", f"net.ipv4.ip_local_port_range={PORTS[0]} {PORTS[1]}", ns=server.netns)
    async with running_mesh(pods, tmp_path) as mesh, tcp_echo(server):
        code, out, err = await run_in(
            client, sys.executable, "-c", _SEQUENTIAL, server.ip, "9000", str(CONNECTIONS), limit=360
        )
        assert code == 0, err
        ok, failed, first_error = out.split()
        assert (int(ok), int(failed)) == (CONNECTIONS, 0), f"first error: {first_error}"
        time_wait = sh("ss", "-Htan", "state", "time-wait", "src", client.ip, ns=server.netns)
        # connect() takes ports of one parity first (bind the other): about half the range is in use
        assert len(time_wait.splitlines()) > 0.4 * (PORTS[1] - PORTS[0]), "too few TIME_WAIT sockets"
        delivered = metric_total(mesh.registry, "istio_tcp_connections_opened_total", reporter="destination")
        assert delivered == CONNECTIONS
