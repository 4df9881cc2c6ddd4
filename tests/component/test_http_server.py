"""The small admin/metrics HTTP server: routes, methods, bad requests, failing handlers."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Mapping

from mesh.rt.http import HttpReply, HttpServer, ThreadedHttpServer, json_reply, text_reply


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


async def test_a_threaded_server_answers_while_the_main_loop_is_busy() -> None:
    server = ThreadedHttpServer({"/ready": lambda m, q: text_reply("ready\n")}, name="readiness")
    port = await server.start("127.0.0.1", 0)
    answers: list[tuple[float, bytes]] = []

    def probe() -> None:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"GET /ready HTTP/1.1\r\n\r\n")
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
        answers.append((time.monotonic() - started, data))

    try:
        prober = threading.Thread(target=probe)
        prober.start()
        busy_until = time.monotonic() + 0.5
        while time.monotonic() < busy_until:  # the main loop busy in Python, as with a burst of work
            pass
        prober.join(5)
        assert answers, "no answer"
        took, data = answers[0]
        assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"ready\n")
        assert took < 0.25, f"answered after {took:.3f} s while the main loop was busy for 0.5 s"
    finally:
        await server.close()
    await server.close()  # idempotent
    assert not any(t.name == "readiness" for t in threading.enumerate()), "the thread ended"
