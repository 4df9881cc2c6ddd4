"""Catalogue 33, connection capacity: what ztunnel does beyond ``--max-connections``.

The flood test opens 5,000 connections against a ztunnel configured for 4,096. The client pod is
enrolled; the server pod is outside the mesh, so each connection costs exactly one place of the
budget (the client's captured outbound connection), and the server is real (the sample TCP echo
app). Real sockets from a separate process in the client pod open the flood. The stream test checks
the inbound side: HBONE streams beyond the limit are answered 503.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.identity.spiffe import WorkloadIdentity
from mesh.rt.http import ThreadedHttpServer
from tests.netns.ztunnel_support import (
    Pod,
    build_pods,
    client_hbone_pool,
    metric_total,
    remove_pods,
    run_in,
    running_mesh,
    tcp_echo,
)
from ztunnel.admin import readiness_routes
from ztunnel.connections import ConnectionBudget

LIMIT = 4096
FLOOD = 5000

# Opens ``n`` connections 250 at a time and holds the served ones: each one sends a byte, and within
# 10 s it is served (the byte echoed), refused (reset or closed) or hung (neither); the next batch
# starts when this one is sorted (a burst of thousands of SYNs would overflow the kernel's accept
# queue, which is not what is tested). Prints "served refused hung".
_FLOOD = r"""
import selectors, socket, sys, time
dst, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sel = selectors.DefaultSelector()
held, served, refused, hung = [], 0, 0, 0
for start in range(0, n, 250):
    for _ in range(start, min(n, start + 250)):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((dst, port))
        sel.register(s, selectors.EVENT_WRITE)
    deadline = time.monotonic() + 10
    while sel.get_map() and time.monotonic() < deadline:
        for key, event in sel.select(timeout=0.5):
            s = key.fileobj
            if event & selectors.EVENT_WRITE:
                try:
                    s.send(b"x")
                    sel.modify(s, selectors.EVENT_READ)
                except OSError:
                    sel.unregister(s)
                    refused += 1
                continue
            sel.unregister(s)
            try:
                echoed = s.recv(1) == b"x"
            except OSError:
                echoed = False
            if echoed:
                served += 1
                held.append(s)
            else:
                refused += 1
    hung += len(sel.get_map())
    for key in list(sel.get_map().values()):
        sel.unregister(key.fileobj)
print(served, refused, hung)
"""

# One connection made before the flood, then a 1 KiB echo 20 times a second until stdin closes;
# prints "round_trips errors".
_STEADY = r"""
import select, socket, sys
dst, port = sys.argv[1], int(sys.argv[2])
conn = socket.create_connection((dst, port), timeout=5)
print("connected", flush=True)
ok = errors = 0
while not select.select([sys.stdin], [], [], 0.05)[0]:
    try:
        conn.sendall(b"y" * 1024)
        got = b""
        while len(got) < 1024:
            chunk = conn.recv(1024 - len(got))
            if not chunk:
                raise ConnectionError("closed")
            got += chunk
        ok += 1
    except OSError:
        errors += 1
print(ok, errors)
"""


@pytest.fixture
def client_and_plain_server() -> Iterator[list[Pod]]:
    """An enrolled client pod and a server pod outside the mesh (no capture rules)."""
    created = build_pods(f"cap{time.monotonic_ns() % 10000}", capture={"server": False})
    try:
        yield created
    finally:
        remove_pods(created)


async def test_connections_beyond_the_limit_are_refused_at_once_and_nothing_else_suffers(
    client_and_plain_server: list[Pod], tmp_path: Path
) -> None:
    client, server = client_and_plain_server
    async with running_mesh([client], tmp_path, max_connections=LIMIT) as mesh, tcp_echo(server):
        identity = WorkloadIdentity("cluster.local", client.namespace, client.service_account)
        ready = readiness_routes(lambda: [] if mesh.ctx.certs.usable(identity) else ["no certificate"])
        readiness = ThreadedHttpServer(ready)  # as ztunnel serves it
        port = await readiness.start("127.0.0.1", 0)
        steady = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", client.netns, sys.executable, "-c", _STEADY, server.ip, "9000",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert steady.stdout is not None
            assert (await asyncio.wait_for(steady.stdout.readline(), 10)).strip() == b"connected"
            flooding = asyncio.ensure_future(
                run_in(client, sys.executable, "-c", _FLOOD, server.ip, "9000", str(FLOOD), limit=90)
            )
            latencies = await _readiness_latencies(port, until=flooding)
            code, out, err = await flooding
            steady_out, _ = await asyncio.wait_for(steady.communicate(b""), 10)
        finally:
            if steady.returncode is None:
                steady.kill()
                await steady.wait()
            await readiness.close()
        assert code == 0, err
        served, refused, hung = map(int, out.split())
        assert (served, refused, hung) == (LIMIT - 1, FLOOD - LIMIT + 1, 0), out
        refused_metric = metric_total(mesh.registry, "ztunnel_downstream_connections_refused_total")
        assert refused_metric == refused
        round_trips, errors = map(int, steady_out.split())
        assert errors == 0 and round_trips >= 100, steady_out
        assert latencies and max(latencies) < 0.1, f"readiness answered in up to {max(latencies):.3f} s"
        await _eventually_released(mesh.ctx.budget)


async def _readiness_latencies(port: int, *, until: asyncio.Future[tuple[int, str, str]]) -> list[float]:
    """Times ``GET /healthz/ready`` every 100 ms until ``until`` is done, by curl in its own process as
    the kubelet probes (a client thread in this process would compete for the GIL with the ztunnel
    under test, and its own wait would be counted against the ztunnel)."""
    latencies = []
    while not until.done():
        probe = await asyncio.create_subprocess_exec(
            "curl", "-s", "-o", "/dev/null", "--max-time", "5", "-w", "%{http_code} %{time_total}",
            f"http://127.0.0.1:{port}/healthz/ready", stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await probe.communicate()
        status, seconds = out.decode().split()
        assert status == "200", f"readiness answered {status} during the flood"
        latencies.append(float(seconds))
        await asyncio.sleep(0.1)
    return latencies


async def _eventually_released(budget: ConnectionBudget) -> None:
    # After a flood, thousands of closes are reported on this busy 2-core machine: allow 15 s.
    await _eventually_below(budget, 1, within=15.0)


async def test_inbound_hbone_streams_beyond_the_limit_get_503_and_a_freed_place_is_reused(
    pods: list[Pod], tmp_path: Path
) -> None:
    client, server = pods
    async with (
        running_mesh(pods, tmp_path, max_connections=3) as mesh,
        tcp_echo(server),
        client_hbone_pool(mesh, client, server) as (pool, key),
    ):
        opened = [await pool.open_stream(key, f"{server.ip}:9000") for _ in range(3)]
        assert [status for status, _ in opened] == [200, 200, 200]
        status, _ = await pool.open_stream(key, f"{server.ip}:9000")
        assert status == 503
        refused = metric_total(
            mesh.registry, "istio_tcp_connections_closed_total", reporter="destination", response_flags="OM"
        )
        assert refused == 1
        assert metric_total(mesh.registry, "ztunnel_downstream_connections_refused_total") == 1
        opened[0][1].close()
        await _eventually_below(mesh.ctx.budget, 3)
        status, stream = await pool.open_stream(key, f"{server.ip}:9000")
        assert status == 200
        for _, live in [*opened[1:], (status, stream)]:
            live.close()
        await _eventually_released(mesh.ctx.budget)


async def _eventually_below(budget: ConnectionBudget, limit: int, *, within: float = 5.0) -> None:
    for _ in range(int(within / 0.02)):
        if budget.active < limit:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{budget.active} places still taken after {within:g} s")
