"""WebSocket through the waypoint process (local Envoy config, --http-listen): an aiohttp client and
an aiohttp WebSocket echo server; the Upgrade is routed like any request and, after the 101, the
messages flow both ways; an upgrade to a route without endpoints is answered 503."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from mesh.testing.ports import free_port
from tests.component.test_waypoint_local import _started_in, cluster, start_command

pytestmark = pytest.mark.timeout(60)

ROUTES = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


async def echo_socket(request: web.Request) -> web.WebSocketResponse:
    socket = web.WebSocketResponse()
    await socket.prepare(request)
    async for message in socket:
        if message.type == aiohttp.WSMsgType.TEXT:
            await socket.send_str(f"echo:{message.data}")
    return socket


def everything(cluster_name: str) -> dict[str, object]:
    return {"match": {"prefix": "/"}, "route": {"cluster": cluster_name}}


def start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as sink:
        return subprocess.Popen(argv, stderr=sink, stdout=subprocess.DEVNULL)


@pytest.fixture
async def waypoint(tmp_path: Path) -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_get("/ws", echo_socket)
    runner = web.AppRunner(app)
    await runner.setup()
    backend = free_port()
    await web.TCPSite(runner, "127.0.0.1", backend).start()
    routes = {
        "@type": ROUTES, "name": "waypoint",
        "virtual_hosts": [
            {"name": "chat", "domains": ["chat"], "routes": [everything("chat")]},
            {"name": "gone", "domains": ["gone"], "routes": [everything("empty")]},
        ],
    }  # fmt: skip
    empty = {**cluster("empty", 1), "load_assignment": {"cluster_name": "empty", "endpoints": []}}
    path = tmp_path / "waypoint.yaml"
    path.write_text(yaml.safe_dump({"resources": [routes, cluster("chat", backend), empty]}, sort_keys=False))
    port = free_port()
    log = tmp_path / "waypoint.log"
    argv = start_command(path, http=f"127.0.0.1:{port}")
    proc = await asyncio.to_thread(start, argv, log)
    try:
        await asyncio.to_thread(_started_in, log, proc)
        yield port
    finally:
        proc.kill()
        proc.wait()
        await runner.cleanup()


async def test_a_websocket_works_through_the_waypoint(waypoint: int) -> None:
    url = f"http://127.0.0.1:{waypoint}/ws"
    async with aiohttp.ClientSession() as client, client.ws_connect(url, headers={"Host": "chat"}) as socket:
        for text in ("one", "two", "x" * 100_000):
            await socket.send_str(text)
            reply = await asyncio.wait_for(socket.receive(), 10)
            assert reply.type == aiohttp.WSMsgType.TEXT and reply.data == f"echo:{text}"


async def test_an_upgrade_without_endpoints_is_answered_503(waypoint: int) -> None:
    async with aiohttp.ClientSession() as client:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await client.ws_connect(f"http://127.0.0.1:{waypoint}/ws", headers={"Host": "gone"})
    assert info.value.status == 503
