"""The sample apps: the HTTP/1.1 parser, the echo reply, the TCP line prefixer, and httpecho on loopback."""

from __future__ import annotations

import asyncio
import json

import pytest

from meshctl.apps.http1 import HttpParseError, Request, RequestParser, render_response
from meshctl.apps.httpecho import Identity, handle, start_server
from meshctl.apps.tcpecho import LinePrefixer

ME = Identity(pod="server-v1-abc", namespace="demo", version="v1", node="node2")


def test_parser_handles_pipelining_split_reads_and_bodies() -> None:
    parser = RequestParser()
    wire = (
        b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\n\r\n"
        b"POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
        b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-T: 1\r\n\r\n"
        b"GET /d HTTP/1.0\r\n\r\n"
    )
    requests = [r for i in range(0, len(wire), 7) for r in parser.feed(wire[i : i + 7])]
    assert [(r.method, r.target, r.body) for r in requests] == [
        ("GET", "/a", b""),
        ("POST", "/b", b"hello"),
        ("PUT", "/c", b"abcde"),
        ("GET", "/d", b""),
    ]
    assert requests[0].header("x-a") == "1, 2" and requests[0].keep_alive and not requests[3].keep_alive


@pytest.mark.parametrize(
    "wire",
    [
        b"NONSENSE\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
    ],
)
def test_parser_rejects_bad_requests(wire: bytes) -> None:
    with pytest.raises(HttpParseError):
        RequestParser().feed(wire)


def test_parser_limits_header_size() -> None:
    with pytest.raises(HttpParseError, match="too large"):
        RequestParser(max_header=100).feed(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 50)


def test_echo_reply_names_pod_version_and_headers() -> None:
    request = Request("GET", "/hello?x=1", "HTTP/1.1", (("Host", "server"), ("X-B3", "1")), b"")
    reply = handle(request, identity=ME, client="10.244.1.2:5000", server="10.244.2.2:8080")
    doc = json.loads(reply.body)
    assert reply.status == 200 and reply.delay == 0
    assert (doc["pod"], doc["version"], doc["path"], doc["query"]) == ("server-v1-abc", "v1", "/hello", "x=1")
    assert doc["headers"] == {"Host": "server", "X-B3": "1"} and doc["client"] == "10.244.1.2:5000"


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
    reply = handle(Request("GET", path, "HTTP/1.1", (), b""), identity=ME, client="", server="")
    assert (reply.status, reply.delay) == (status, delay)


def test_response_framing() -> None:
    out = render_response(404, [("a", "b")], b"xy", keep_alive=False)
    assert out == b"HTTP/1.1 404 Not Found\r\na: b\r\ncontent-length: 2\r\nconnection: close\r\n\r\nxy"


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
