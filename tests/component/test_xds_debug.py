"""The 15014 debug endpoint (syncz, metrics) and meshctl proxy-status against a live plane."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import pytest

from istiod_lite.push.debug import debug_routes
from mesh.rt.http import HttpServer
from mesh.rt.xds import ADDRESS_TYPE_URL as ADDR
from mesh.testing.xds import FakeAgent
from meshctl.proxy_status import fetch_syncz, run
from tests.component.test_xds_push import POD, Source, start_plane, workload

pytestmark = pytest.mark.timeout(30)


async def http_get(port: int, raw: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.fixture
async def debug() -> AsyncIterator[tuple[int, FakeAgent]]:
    plane = await start_plane(Source())
    server = HttpServer(debug_routes(plane.hub, plane.registry))
    port = await server.start("127.0.0.1", 0)
    agent = FakeAgent(plane.target)
    agent.start()
    try:
        await asyncio.wait_for(agent.client.wait_synced(), 5)
        agent.reject({f"{POD}w1"})
        plane.source.put(ADDR, f"{POD}w1", workload("w1", "10.244.1.11", sa="other"))
        await agent.wait_for(lambda a: any(e.rejected for e in a.events))
        yield port, agent
    finally:
        await agent.stop()
        await server.close()
        await plane.stop()


async def test_syncz_and_proxy_status_show_the_nack(
    debug: tuple[int, FakeAgent], capsys: pytest.CaptureFixture[str]
) -> None:
    port, _ = debug
    endpoint = f"http://127.0.0.1:{port}"
    deadline = asyncio.get_running_loop().time() + 5
    while True:  # the NACK reaches the server just after the agent recorded it
        doc = await asyncio.to_thread(fetch_syncz, endpoint)
        types = {t["type_url"]: t for t in doc["subscribers"][0]["types"]}
        if types[ADDR]["nacked"] or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.02)
    assert f"{POD}w1" in types[ADDR]["nacked"]["error"]
    assert doc["subscribers"][0]["node"] == "node-1"
    code = await asyncio.to_thread(run, argparse.Namespace(istiod=endpoint, timeout=5.0, output="table"))
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("NAME"))  # logs may come first
    assert lines[header].split()[:4] == ["NAME", "NODE", "AUTHORIZATION", "ADDRESS"]
    assert lines[header + 1].split()[:4] == ["ztunnel-a.istio-system", "node-1", "SYNCED", "STALE"]
    assert "rejected by the test" in out


async def test_metrics_page_counts_pushes_and_nacks(debug: tuple[int, FakeAgent]) -> None:
    port, _ = debug
    status, body = await http_get(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    text = body.decode()
    assert 'pilot_xds_pushes_total{type="Address"}' in text
    assert "pilot_xds_push_time_seconds_bucket" in text
    assert "pilot_xds 1.0" in text
    assert 'istio_build{component="istiod_lite"' in text


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /nope HTTP/1.1\r\n\r\n", 404),
        (b"POST /metrics HTTP/1.1\r\n\r\n", 405),
        (b"GET /debug/syncz?x=1 HTTP/1.0\r\n\r\n", 200),
        (b"\x00" * 9000, 400),  # no end of head within the limit
    ],
)
async def test_requests_are_answered_or_refused(
    debug: tuple[int, FakeAgent], raw: bytes, status: int
) -> None:
    port, _ = debug
    got, _ = await http_get(port, raw)
    assert got == status


async def test_proxy_status_reports_an_unreachable_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(istiod="http://127.0.0.1:9", timeout=1.0, output="table")
    assert await asyncio.to_thread(run, args) == 1
    assert "cannot read http://127.0.0.1:9/debug/syncz" in capsys.readouterr().err
