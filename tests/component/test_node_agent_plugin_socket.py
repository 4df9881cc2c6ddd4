"""The plugin-event socket over a real unix socket: the plugin's own client against the agent's
server, a verdict for every request (also garbage, silence and a crashing handler)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from ztunnel.cni.plugin import PluginError, call_agent
from ztunnel.cni.plugin_server import CniEvent, CniVerdict, PluginServer

REQUEST = {
    "command": "ADD",
    "containerId": "c1",
    "netns": "/var/run/netns/p",
    "podNamespace": "demo",
    "podName": "a",
}


class Handler:
    def __init__(self) -> None:
        self.events: list[CniEvent] = []
        self.crash = False

    async def __call__(self, event: CniEvent) -> CniVerdict:
        self.events.append(event)
        if self.crash:
            raise RuntimeError("boom")
        return CniVerdict(ok=True, msg="enrolled")


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, Handler]]:
    handler = Handler()
    server = PluginServer(
        str(tmp_path / "pluginevent.sock"), handler, log=structlog.get_logger(), read_timeout=0.5
    )
    await server.start()
    try:
        yield server.path, handler
    finally:
        await server.close()


async def test_request_and_verdict_round_trip(served: tuple[str, Handler]) -> None:
    path, handler = served
    verdict = await asyncio.to_thread(call_agent, path, REQUEST, 5.0)
    assert verdict == {"ok": True, "code": 0, "msg": "enrolled", "details": ""}
    assert (handler.events[0].namespace, handler.events[0].name) == ("demo", "a")


async def test_a_crashing_handler_still_answers(served: tuple[str, Handler]) -> None:
    path, handler = served
    handler.crash = True
    verdict = await asyncio.to_thread(call_agent, path, REQUEST, 5.0)
    assert verdict["ok"] is False and "boom" in verdict["msg"]


async def test_garbage_gets_an_error_verdict(served: tuple[str, Handler]) -> None:
    path, handler = served
    verdict = await asyncio.to_thread(call_agent, path, {"command": "EXPLODE"}, 5.0)
    assert verdict["ok"] is False and verdict["code"] == 5 and "unknown plugin command" in verdict["msg"]
    assert handler.events == []


async def test_a_silent_client_is_answered_after_the_read_timeout(served: tuple[str, Handler]) -> None:
    path, _ = served

    def silent() -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(path)
            return sock.recv(4096)

    answer = await asyncio.to_thread(silent)
    assert b'"ok": false' in answer and b"no complete request line" in answer


async def test_an_agent_that_never_answers_times_out_in_the_plugin(tmp_path: Path) -> None:
    path = str(tmp_path / "mute.sock")
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(path)
    mute.listen(1)
    try:
        with pytest.raises(PluginError) as caught:
            await asyncio.to_thread(call_agent, path, REQUEST, 0.3)
        assert caught.value.code == 11 and "did not answer within 0.3 s" in caught.value.msg
    finally:
        mute.close()
