"""The lab's readiness probes against real servers on loopback (no namespaces: the lab's own)."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mesh.rt.clock import SystemClock
from mesh.testing.pki import TestPki, write_pem_files
from meshctl.lab.prober import ProbeResult, ProbeTarget, container_launched, probe_once, watch_readiness
from meshctl.lab.probes import HTTP_GET, PORTS, TCP_SOCKET, Probe

pytestmark = pytest.mark.timeout(30)


@dataclass
class Answering:
    """A loopback HTTP server answering ``status`` (None: never answers) and keeping the request heads."""

    status: int | None = 200
    heads: list[bytes] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.heads.append(await reader.readuntil(b"\r\n\r\n"))
        if self.status is None:  # until the client goes
            await reader.read()
            return
        writer.write(f"HTTP/1.1 {self.status} X\r\nContent-Length: 2\r\n\r\nhi".encode())
        await writer.drain()
        writer.close()


@pytest.fixture
async def server() -> AsyncIterator[Answering]:
    answering = Answering()
    srv = await asyncio.start_server(answering.handle, "127.0.0.1", 0)
    answering.port = srv.sockets[0].getsockname()[1]
    async with srv:
        yield answering
        srv.close()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process standing for a started container (its command: ``sleep 30``)."""
    proc = subprocess.Popen(["sleep", "30"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def target(pid: int = 0) -> ProbeTarget:
    return ProbeTarget(None, "127.0.0.1", pid or os.getpid(), ("sleep", "30"), dict(os.environ))


@pytest.mark.parametrize(
    ("status", "result"),
    [
        (200, ProbeResult(True)),
        (302, ProbeResult(True)),  # a redirect is not followed: a success
        (503, ProbeResult(False, "HTTP probe failed with statuscode: 503")),
        (404, ProbeResult(False, "HTTP probe failed with statuscode: 404")),
    ],
)
async def test_http_get_succeeds_on_200_to_399(server: Answering, status: int, result: ProbeResult) -> None:
    server.status = status
    assert await probe_once(Probe(HTTP_GET, port=server.port, path="/readyz"), target()) == result


async def test_http_get_sends_the_kubelets_request_with_the_probes_headers(server: Answering) -> None:
    probe = Probe(HTTP_GET, port=server.port, path="/healthz/ready", headers=(("X-Custom", "yes"),))
    assert (await probe_once(probe, target())).ok
    lines = server.heads[0].decode().split("\r\n")
    assert lines[0] == "GET /healthz/ready HTTP/1.1"
    assert {f"Host: 127.0.0.1:{server.port}", "User-Agent: kube-probe/lab", "X-Custom: yes"} <= set(lines)
    host = Probe(HTTP_GET, port=server.port, headers=(("host", "web.local"),))
    assert (await probe_once(host, target())).ok
    assert "host: web.local" in server.heads[1].decode().split("\r\n")  # the probe's Host wins


async def test_http_get_fails_on_no_answer_within_the_timeout_and_on_a_closed_port(server: Answering) -> None:
    server.status = None
    probe = Probe(HTTP_GET, port=server.port, timeout=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await probe_once(probe, target())
    assert result == ProbeResult(False, f'Get "http://127.0.0.1:{server.port}/": no answer within 0.2 s')
    assert loop.time() - started < 1.0
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    refused = await probe_once(Probe(HTTP_GET, port=port), target())
    assert refused == ProbeResult(False, f'Get "http://127.0.0.1:{port}/": Connection refused')


async def test_https_get_does_not_verify_the_certificate(tmp_path: Path) -> None:
    pki = TestPki.create()
    files = write_pem_files(tmp_path, pki.issue_leaf(dns_sans=["elsewhere.example"]), roots=pki.roots)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert_chain, files.key)
    answering = Answering(status=204)
    srv = await asyncio.start_server(answering.handle, "127.0.0.1", 0, ssl=context)
    async with srv:
        port = srv.sockets[0].getsockname()[1]
        assert await probe_once(Probe(HTTP_GET, port=port, scheme="HTTPS"), target()) == ProbeResult(True)
        plain = await probe_once(Probe(HTTP_GET, port=port, timeout=0.5), target())
        assert not plain.ok  # plain HTTP to a TLS port does not pass
        srv.close()


async def test_tcp_socket_and_the_labs_port_check(server: Answering) -> None:
    assert await probe_once(Probe(TCP_SOCKET, port=server.port), target()) == ProbeResult(True)
    listening = Probe(PORTS, ports=frozenset({server.port}))
    assert await probe_once(listening, target()) == ProbeResult(True)  # this process listens on it
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    closed = await probe_once(Probe(TCP_SOCKET, port=port), target())
    assert closed == ProbeResult(False, f"dial tcp 127.0.0.1:{port}: Connection refused")
    missing = await probe_once(Probe(PORTS, ports=frozenset({server.port, port})), target())
    assert missing == ProbeResult(False, f"ports {port} do not listen")


def test_a_container_is_launched_once_it_runs_its_command(sleeper: subprocess.Popen[bytes]) -> None:
    assert container_launched(target(sleeper.pid))
    assert not container_launched(ProbeTarget(None, "", sleeper.pid, ("30",), {}))  # 'sleep' before it
    assert not container_launched(target(2**22 + 7))  # no such process


async def test_readiness_flips_with_the_answers_after_the_thresholds(
    server: Answering, sleeper: subprocess.Popen[bytes]
) -> None:
    server.status = 503
    probe = Probe(HTTP_GET, port=server.port, period=0.05, failure_threshold=3)
    reports: list[tuple[bool, str]] = []
    changed = asyncio.Event()

    def report(ready: bool, failure: str) -> None:
        reports.append((ready, failure))
        changed.set()

    async def next_report() -> tuple[bool, str]:
        await asyncio.wait_for(changed.wait(), 5)
        changed.clear()
        return reports[-1]

    task = asyncio.create_task(
        watch_readiness(probe, target(sleeper.pid), clock=SystemClock(), report=report)
    )
    try:
        assert await next_report() == (False, "HTTP probe failed with statuscode: 503")
        await asyncio.sleep(0.3)
        assert len(reports) == 1  # the same failure again is not reported again
        server.status = 200
        assert await next_report() == (True, "")
        answered = len(server.heads)
        server.status = 500
        assert await next_report() == (True, "HTTP probe failed with statuscode: 500")  # 1 failure of 3
        assert await next_report() == (False, "HTTP probe failed with statuscode: 500")
        assert len(server.heads) - answered >= 3
    finally:
        task.cancel()


async def test_the_labs_port_check_reports_ready_only_and_then_ends(sleeper: subprocess.Popen[bytes]) -> None:
    reports: list[tuple[bool, str]] = []
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        probe = Probe(PORTS, ports=frozenset({sock.getsockname()[1]}), period=0.05)
        task = asyncio.create_task(
            watch_readiness(
                probe, target(sleeper.pid), clock=SystemClock(), report=lambda *r: reports.append(r)
            )
        )
        await asyncio.sleep(0.3)
        assert reports == []  # no probe, no failure to report
        sock.listen()
        await asyncio.wait_for(task, 2)  # ends once ready
    assert reports == [(True, "")]
