"""The small admin/metrics HTTP server: routes, methods, bad requests, failing handlers."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from mesh.rt.http import HttpReply, HttpServer, json_reply, text_reply


async def _request(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


def _echo(method: str, query: Mapping[str, str]) -> HttpReply:
    return json_reply({"method": method, "query": dict(query)})


def _broken(method: str, query: Mapping[str, str]) -> HttpReply:
    raise RuntimeError("boom")


async def test_routes_and_errors() -> None:
    server = HttpServer(
        {"/echo": _echo, "/broken": _broken, "/ready": lambda m, q: text_reply("", status=503)}
    )
    port = await server.start("127.0.0.1", 0)
    try:
        ok = await _request(port, b"GET /echo?a=1&b HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 OK") and b'"a": "1"' in ok and b'"b": ""' in ok
        post = await _request(port, b"POST /echo HTTP/1.1\r\n\r\n")
        assert b'"method": "POST"' in post
        head = await _request(port, b"HEAD /echo HTTP/1.1\r\n\r\n")
        assert head.endswith(b"\r\n\r\n")
        assert (await _request(port, b"GET /nope HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
        assert (await _request(port, b"GET /broken HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 500")
        assert (await _request(port, b"GET /ready HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 503")
        assert (await _request(port, b"x" * 9000)).startswith(b"HTTP/1.1 400")
        assert (await _request(port, b"GET /echo HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 200")
    finally:
        await server.close()
