"""The sample apps: the echo reply, the TCP line prefixer, and httpecho on loopback."""

from __future__ import annotations

import asyncio
import json

import pytest

from mesh.http1 import Message
from meshctl.apps.httpecho import Identity, handle, start_server
from meshctl.apps.tcpecho import LinePrefixer

ME = Identity(pod="server-v1-abc", namespace="demo", version="v1", node="node2")


def test_echo_reply_names_pod_version_and_headers() -> None:
    request = Message(method="GET", target="/hello?x=1", headers=[("host", "server"), ("x-b3", "1")])
    reply = handle(request, identity=ME, client="10.244.1.2:5000", server="10.244.2.2:8080")
    doc = json.loads(reply.body)
    assert reply.status == 200 and reply.delay == 0
    assert (doc["pod"], doc["version"], doc["path"], doc["query"]) == ("server-v1-abc", "v1", "/hello", "x=1")
    assert doc["headers"] == {"host": "server", "x-b3": "1"} and doc["client"] == "10.244.1.2:5000"


@pytest.mark.parametrize(
    ("path", "status", "delay"),
    [
        ("/status/503", 503, 0.0),
        ("/status/999", 200, 0.0),
        ("/delay/0.25", 200, 0.25),
        ("/delay/99", 200, 10.0),
        ("/delay/x", 400, 0.0),
    ],
)
def test_status_and_delay_paths(path: str, status: int, delay: float) -> None:
    reply = handle(Message(method="GET", target=path), identity=ME, client="", server="")
    assert (reply.status, reply.delay) == (status, delay)


def test_tcp_line_prefixer() -> None:
    prefixer = LinePrefixer(b"hello")
    assert prefixer.feed(b"one\ntw") == b"hello one\n"
    assert prefixer.feed(b"o\n") == b"hello two\n"
    assert prefixer.feed(b"end") == b"" and prefixer.flush() == b"hello end"


async def test_httpecho_serves_keepalive_requests_on_loopback() -> None:
    server = await start_server("127.0.0.1", 0, ME)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET /status/418 HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    first, second = data.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"418 ") and second.startswith(b"200 ")
    assert json.loads(second.split(b"\r\n\r\n", 1)[1])["path"] == "/x"


def test_flaky_fails_the_first_requests_of_a_key_then_counts_attempts() -> None:
    seen: dict[str, int] = {}
    replies = [
        handle(Message(method="GET", target="/fail-first/2/k1"), identity=ME, client="", server="", seen=seen)
        for _ in range(3)
    ]
    assert [r.status for r in replies] == [503, 503, 200]
    assert json.loads(replies[2].body)["attempt"] == 3
    other = handle(
        Message(method="GET", target="/fail-first/2/k2"), identity=ME, client="", server="", seen=seen
    )
    assert other.status == 503  # another key starts over
    bad = handle(
        Message(method="GET", target="/fail-first/x/k"), identity=ME, client="", server="", seen=seen
    )
    assert bad.status == 400
