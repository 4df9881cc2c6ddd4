"""ztunnel's data path with real namespaces, capture rules, TLS and applications: a client pod's curl
is captured, tunnelled over HBONE with both SPIFFE identities, and reaches the server pod's app;
metrics and access logs say so; policy denials are 401 and STRICT refuses plaintext."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from mesh.identity import WorkloadIdentity
from mesh.model import Action, Authorization, Match, Scope, StringMatch
from mesh.rt.certs import NoValidCertificate
from mesh.rt.http import HttpServer
from mesh.rt.metrics import Registry
from mesh.testing.polling import wait_until
from meshctl.ztunnel_config import fetch_admin, render_table
from tests.netns.ztunnel_support import (
    Pod,
    build_pods,
    client_hbone_pool,
    http_server,
    local_state,
    metric_total,
    remove_pods,
    run_in,
    running_mesh,
    tcp_echo,
    wait_port,
)
from ztunnel.admin import admin_routes
from ztunnel.connections import ConnectionRegistry
from ztunnel.state import ProxyState

pytestmark = [pytest.mark.netns, pytest.mark.timeout(90)]


async def test_curl_goes_through_hbone_with_both_identities(pods: list[Pod], tmp_path: Path) -> None:
    client, server = pods
    async with running_mesh(pods, tmp_path) as mesh, http_server(server):
        with capture_logs() as logs:
            code, out, err = await run_in(client, "curl", "-sS", "-m", "10", f"http://{server.ip}:8080/")
        assert code == 0, err
        assert "Directory listing" in out
        opened_src = metric_total(mesh.registry, "istio_tcp_connections_opened_total", reporter="source")
        opened_dst = metric_total(mesh.registry, "istio_tcp_connections_opened_total", reporter="destination")
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
            (((Match(principals=(StringMatch.exact("cluster.local/ns/demo/sa/client"),)),),),),
        )  # fmt: skip
        state = local_state(pods)
        mesh.ctx.apply_state(type(state).build(workloads=state.workloads.values(), policies=[deny]))
        with capture_logs() as logs:
            code, out, _ = await run_in(client, "curl", "-sS", "-m", "10", f"http://{server.ip}:8080/")
        assert code != 0 and "Directory listing" not in out
        assert metric_total(mesh.registry, "istio_tcp_connections_closed_total", response_flags="DENY") >= 1
        _assert_balanced(mesh.registry)  # a refusal after the plan counts one open and one close
    errors = [e for e in logs if e.get("event") == "connection complete" and e.get("error")]
    assert any("DENY" in str(e.get("error")) or "denied" in str(e.get("error")) for e in errors), errors


_PLAIN_ATTEMPTS = """
import socket, sys, time
echoed, slowest = 0, 0.0
for _ in range(int(sys.argv[3])):
    started = time.monotonic()
    try:  # refused, reset or closed: each is a refusal
        with socket.create_connection((sys.argv[1], int(sys.argv[2])), 5) as s:
            s.settimeout(5)
            s.sendall(b"x" * 1024)
            while chunk := s.recv(65536):
                echoed += len(chunk)
    except OSError:
        pass
    slowest = max(slowest, time.monotonic() - started)
print(echoed, round(slowest, 3))
"""

_SEND_AND_ECHO = """
import socket, sys
n = int(sys.argv[3])
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 5)
s.sendall(b"x" * n)
s.shutdown(socket.SHUT_WR)
got = 0
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    got += len(chunk)
print(got)
"""

_HOLD = """
import selectors, socket, sys, time
held = []
for _ in range(int(sys.argv[2])):
    s = socket.create_connection((sys.argv[1], 9000), 5)
    s.sendall(b"hi\\n")
    s.recv(16)
    s.setblocking(False)
    held.append(s)
t = time.time()
sel = selectors.DefaultSelector()
for s in held:
    sel.register(s, selectors.EVENT_READ)
received, last = 0, 0.0
while sel.get_map() and time.time() - t < 10:
    for key, _ in sel.select(timeout=1):
        try:
            data = key.fileobj.recv(16)
        except ConnectionError:
            data = b""
        received += len(data)
        if not data:
            sel.unregister(key.fileobj)
            last = time.time() - t
print(round(last, 2), received, len(sel.get_map()))
"""
"""A client that keeps N connections open (each used once) and reports how long until the last was
closed, what came after, and how many stayed open."""

_SINK = """
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 9000)); srv.listen(8)
total = 0
while True:
    c, _ = srv.accept()
    while True:
        data = c.recv(65536)
        if not data:
            break
        total += len(data)
        open(sys.argv[1], "w").write(str(total))
    c.close()
"""


async def test_byte_counts_in_metrics_equal_what_was_sent(pods: list[Pod], tmp_path: Path) -> None:
    client, server = pods
    async with running_mesh(pods, tmp_path) as mesh, tcp_echo(server):
        code, out, err = await run_in(
            client, sys.executable, "-c", _SEND_AND_ECHO, server.ip, "9000", "100000"
        )
        assert code == 0, err
        assert int(out) == 100_000
        await wait_until(
            lambda: (
                metric_total(mesh.registry, "istio_tcp_connections_closed_total", reporter="destination") >= 1
            )
        )
        for reporter in ("source", "destination"):
            received = metric_total(mesh.registry, "istio_tcp_received_bytes_total", reporter=reporter)
            sent = metric_total(mesh.registry, "istio_tcp_sent_bytes_total", reporter=reporter)
            assert (received, sent) == (100_000, 100_000), reporter


async def test_tunnel_on_the_wire_is_tls_only(pods: list[Pod], tmp_path: Path) -> None:
    client, server = pods
    pcap = tmp_path / "wire.pcap"
    async with running_mesh(pods, tmp_path), http_server(server):
        tshark = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", server.netns, "tshark", "-q", "-i", "eth0", "-w", str(pcap), "-f", "tcp",
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        assert tshark.stderr is not None
        while b"Capturing on" not in await asyncio.wait_for(tshark.stderr.readline(), 10):
            pass
        code, out, _ = await run_in(
            client, "curl", "-sS", "-m", "10", f"http://{server.ip}:8080/?secret-path"
        )
        assert code == 0 and "Directory listing" in out
        await asyncio.sleep(0.5)
        tshark.send_signal(signal.SIGINT)  # tshark flushes the capture on SIGINT
        await asyncio.wait_for(tshark.wait(), 10)
    await asyncio.to_thread(_assert_tls_only, pcap)


def _assert_tls_only(pcap: Path) -> None:
    wire = pcap.read_bytes()
    assert len(wire) > 1000
    assert b"secret-path" not in wire and b"Directory listing" not in wire
    summary = subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", "tls", "-T", "fields", "-e", "tcp.dstport"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.split()  # fmt: skip
    assert "15008" in summary
    plain = subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", "tcp.port == 8080"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert plain.strip() == ""


async def test_strict_workload_gets_zero_bytes_from_an_unenrolled_client(tmp_path: Path) -> None:
    pods = build_pods(f"s{os.getpid() % 10000}", capture={"client": False})
    client, server = pods
    try:
        async with running_mesh(pods, tmp_path, enrolled=[server]) as mesh:
            strict = Authorization(
                "istio_converted_static_strict", "istio-system", Scope.WORKLOAD_SELECTOR, Action.DENY,
                (((Match(not_principals=(StringMatch.presence(),)),),),),
            )  # fmt: skip
            base = local_state(pods)
            workloads = [
                dataclasses.replace(w, authorization_policies=(strict.key,)) if w.name == "server" else w
                for w in base.workloads.values()
            ]
            mesh.ctx.apply_state(ProxyState.build(workloads=workloads, policies=[strict]))
            count = tmp_path / "received"
            sink = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", server.netns, sys.executable, "-c", _SINK, str(count),
                start_new_session=True,
            )  # fmt: skip
            try:
                await wait_port(server, 9000)
                for port, attempts in (("9000", 100), ("15008", 20)):  # catalogue 1: plain TCP, and
                    # plain bytes where TLS is expected
                    code, out, err = await run_in(
                        client, sys.executable, "-c", _PLAIN_ATTEMPTS, server.ip, port, str(attempts)
                    )
                    assert code == 0, err
                    echoed, slowest = out.split()
                    assert echoed == "0" and float(slowest) < 1.0, (port, out)
                await asyncio.sleep(0.3)
                assert not count.exists(), f"the STRICT app received {count.read_text()} bytes"
                closed = "istio_tcp_connections_closed_total"
                assert metric_total(mesh.registry, closed, response_flags="DENY") == 100
            finally:
                sink.terminate()
                await sink.wait()
    finally:
        remove_pods(pods)


async def test_a_pod_without_a_certificate_gets_no_connection_and_sends_no_plaintext(
    pods: list[Pod], tmp_path: Path
) -> None:
    """Catalogue 2: the CA refuses the client's identity. Its connections to a mesh destination end
    quickly with nothing echoed back (a plaintext fallback would reach the server's echo through its
    15006), the server side never opens a connection, and the client has no certificate."""
    client, server = pods
    async with running_mesh(pods, tmp_path, uncertified=(client,)) as mesh, tcp_echo(server):
        started = asyncio.get_running_loop().time()
        for _ in range(5):
            code, out, err = await run_in(
                client, sys.executable, "-c", _SEND_AND_ECHO, server.ip, "9000", "1024"
            )
            assert code != 0 or out.strip() == "0", (out, err)
        assert asyncio.get_running_loop().time() - started < 5 * 5.0
        assert metric_total(mesh.registry, "istio_tcp_connections_opened_total", reporter="destination") == 0
        failed = metric_total(mesh.registry, "istio_tcp_connections_closed_total", reporter="source")
        assert failed >= 5
        _assert_balanced(mesh.registry)
        with pytest.raises(NoValidCertificate):
            mesh.ctx.certs.current(WorkloadIdentity("cluster.local", "demo", "client"))


async def test_ip_mismatch_is_400(pods: list[Pod], tmp_path: Path) -> None:
    client, server = pods
    async with (
        running_mesh(pods, tmp_path) as mesh,
        client_hbone_pool(mesh, client, server) as (pool, key),
    ):
        status, _ = await pool.open_stream(key, "10.244.9.99:8080")
        assert status == 400
        for port in (15001, 15006, 15008):  # ztunnel's own ports: never a self-call (catalogue 5b)
            status, _ = await pool.open_stream(key, f"{server.ip}:{port}")
            assert status == 400, port
        status, _ = await pool.open_stream(key, "server.demo.svc.cluster.local:8080")
        assert status == 400  # a host name is not an authority HBONE accepts (catalogue 5e)
        opened = "istio_tcp_connections_opened_total"
        refused = metric_total(mesh.registry, opened, reporter="destination", response_flags="CONNECT")
        assert refused == 5
        assert metric_total(mesh.registry, opened, reporter="destination", response_flags="-") == 0


async def test_policy_change_closes_live_connections(pods: list[Pod], tmp_path: Path) -> None:
    client, server = pods
    async with running_mesh(pods, tmp_path) as mesh, tcp_echo(server):
        holder = asyncio.ensure_future(run_in(client, sys.executable, "-c", _HOLD, server.ip, "50"))
        await wait_until(lambda: _inbound(mesh.ctx.registry) == 50)  # catalogue 10: 50 live connections
        deny = Authorization(
            "deny-all", "demo", Scope.NAMESPACE, Action.DENY, (((Match(destination_ports=(9000,)),),),)
        )
        state = local_state(pods)
        closed = mesh.ctx.apply_state(ProxyState.build(workloads=state.workloads.values(), policies=[deny]))
        assert closed == 50
        _, out, err = await holder
        waited, received, still_open = out.split()
        assert float(waited) < 2.0 and received == "0" and still_open == "0", (out, err)


def _assert_balanced(registry: Registry) -> None:
    """Every reporter counted each connection opened once and closed once (the soak found a refused
    outbound connection counted opened twice)."""
    for reporter in ("source", "destination"):
        opened = metric_total(registry, "istio_tcp_connections_opened_total", reporter=reporter)
        closed = metric_total(registry, "istio_tcp_connections_closed_total", reporter=reporter)
        assert opened == closed, (reporter, opened, closed)


async def test_admin_config_dump_and_ztunnel_config_views(pods: list[Pod], tmp_path: Path) -> None:
    server = pods[1]
    async with running_mesh(pods, tmp_path) as mesh:
        admin = HttpServer(admin_routes(mesh.ctx, mesh.manager, quit_=lambda: None))
        port = await admin.start("127.0.0.1", 0)
        try:
            dump = await asyncio.to_thread(fetch_admin, f"127.0.0.1:{port}", "/config_dump")
            workloads = render_table("workloads", dump["workloads"])
            certificates = render_table("certificates", dump["certificates"])
        finally:
            await admin.close()
    assert workloads.splitlines()[0].split() == [
        "NAMESPACE",
        "POD",
        "NAME",
        "ADDRESS",
        "NODE",
        "WAYPOINT",
        "PROTOCOL",
    ]
    assert any(
        line.split()[:3] == ["demo", "server", server.ip] and line.endswith("HBONE")
        for line in workloads.splitlines()
    )
    assert "spiffe://cluster.local/ns/demo/sa/client" in certificates
    assert {p["pod"] for p in dump["proxies"]} == {"demo/client", "demo/server"}
    assert all(c["state"] == "valid" for c in dump["certificates"]), dump["certificates"]


async def test_drain_stops_new_connections_and_ends_old_ones_by_the_deadline(
    pods: list[Pod], tmp_path: Path
) -> None:
    """SIGTERM's drain: listeners close at once, 50 live tunnels are closed at the deadline (catalogue 27)."""
    client, server = pods
    async with running_mesh(pods, tmp_path) as mesh, tcp_echo(server):
        holder = asyncio.ensure_future(run_in(client, sys.executable, "-c", _HOLD, server.ip, "50"))
        await wait_until(lambda: _inbound(mesh.ctx.registry) == 50)  # 50 live tunnels
        started = asyncio.get_running_loop().time()
        drain = asyncio.ensure_future(mesh.manager.stop_all(deadline=1.0))
        await asyncio.sleep(0.2)
        refused, _, _ = await run_in(client, "curl", "-sS", "-m", "3", f"http://{server.ip}:9000/")
        assert refused != 0  # the listeners are gone: nothing new is accepted, nothing bypasses
        await asyncio.wait_for(drain, 5)
        assert asyncio.get_running_loop().time() - started < 2.5
        _, out, err = await holder
        waited, received, still_open = out.split()
        assert float(waited) < 3.0 and received == "0" and still_open == "0", (out, err)


_KEEP_TALKING = """
import json, socket, sys, time
host, seconds = sys.argv[1], float(sys.argv[2])
ok, failed = 0, []
s = socket.create_connection((host, 9000), 5)
s.settimeout(5)
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        s.sendall(b"ping\\n")
        got = b""
        while not got.endswith(b"\\n"):
            chunk = s.recv(64)
            if not chunk:
                raise ConnectionError("closed")
            got += chunk
        ok += 1
    except OSError as exc:
        failed.append(repr(exc))
        break
    time.sleep(0.1)
print(json.dumps({"ok": ok, "failed": failed}))
"""
"""One long-lived connection exchanging a line every 100 ms."""

_NEW_CONNECTIONS = """
import json, socket, sys, time
host, seconds = sys.argv[1], float(sys.argv[2])
ok, failed = 0, []
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        with socket.create_connection((host, 9000), 5) as s:
            s.settimeout(5)
            s.sendall(b"hello\\n")
            s.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := s.recv(64):
                got += chunk
        ok += got == b"hello\\n"
    except OSError as exc:
        failed.append(repr(exc))
    time.sleep(0.2)
print(json.dumps({"ok": ok, "failed": failed}))
"""
"""A new connection every 200 ms."""


async def test_certificates_rotate_under_traffic_without_a_dropped_connection(
    pods: list[Pod], tmp_path: Path
) -> None:
    """Catalogue 29: 8 s certificates, renewed at half life, while one connection stays open and new
    ones keep coming: no failure, and every identity got new certificates along the way."""
    client, server = pods
    async with running_mesh(pods, tmp_path, cert_ttl=8), tcp_echo(server):
        with capture_logs() as logs:
            (code_a, long_lived, err_a), (code_b, fresh, err_b) = await asyncio.gather(
                run_in(client, sys.executable, "-c", _KEEP_TALKING, server.ip, "10", limit=30),
                run_in(client, sys.executable, "-c", _NEW_CONNECTIONS, server.ip, "10", limit=30),
            )
    assert code_a == 0 and code_b == 0, (err_a, err_b)
    kept, new = json.loads(long_lived), json.loads(fresh)
    assert kept["failed"] == [] and kept["ok"] >= 50, kept
    assert new["failed"] == [] and new["ok"] >= 25, new
    issued: dict[str, set[str]] = {}
    for event in logs:
        if event.get("event") == "certs.issued":
            issued.setdefault(str(event["identity"]), set()).add(str(event["serial"]))
    for pod in pods:
        uri = f"spiffe://cluster.local/ns/{pod.namespace}/sa/{pod.service_account}"
        assert len(issued.get(uri, ())) >= 2, issued  # renewed at least once under traffic


def _inbound(registry: ConnectionRegistry) -> int:
    """Live inbound connections (the registry lists both directions; here both ztunnel ends share it)."""
    return sum(1 for conn in registry if conn.direction == "inbound")
