"""The engine's server side for ordinary requests (``accept_requests``): an HTTP/2 client (the ``h2``
library as the reference peer) sends GET and a gRPC-style POST with a body; the engine reports them
with their pseudo-headers and answers with headers, data and trailers. Without the setting (an
HBONE server) they stay InvalidRequest."""

from __future__ import annotations

from typing import Any

import h2.events

from mesh.h2 import DataReceived, H2Config, InvalidRequest, RequestReceived, StreamEnded
from tests.unit.test_hbone_link import Link, h2_peer, ours


def test_ordinary_requests_are_reported_and_answered_with_trailers() -> None:
    server = ours(client_side=False, config=H2Config(accept_requests=True))
    link = Link(h2_peer(client_side=True), server)
    peer: Any = link.client
    get = peer.get_next_available_stream_id()
    peer.send_headers(get, [(":method", "GET"), (":scheme", "http"), (":authority", "reviews:9080"),
                            (":path", "/reviews/1?x=1"), ("x-user", "ada")], end_stream=True)  # fmt: skip
    post = peer.get_next_available_stream_id()
    grpc = [("content-type", "application/grpc"), ("te", "trailers")]
    peer.send_headers(post, [(":method", "POST"), (":scheme", "http"), (":authority", "grpc:50051"),
                             (":path", "/pkg.Svc/Call"), *grpc])  # fmt: skip
    peer.send_data(post, b"\x00\x00\x00\x00\x02hi", end_stream=True)
    link.pump()
    events = link.take("server")
    requests = [e for e in events if isinstance(e, RequestReceived)]
    assert [(r.method, r.scheme, r.authority, r.path) for r in requests] == [
        ("GET", "http", "reviews:9080", "/reviews/1?x=1"),
        ("POST", "http", "grpc:50051", "/pkg.Svc/Call"),
    ]
    assert ("x-user", "ada") in requests[0].headers
    assert b"".join(bytes(e.data) for e in events if isinstance(e, DataReceived)) == b"\x00\x00\x00\x00\x02hi"
    assert {e.stream_id for e in events if isinstance(e, StreamEnded)} == {get, post}
    server.send_response(get, 200, [("content-type", "text/plain")])
    assert server.send_data(get, b"ok", end_stream=True) == 2
    server.send_response(post, 200, [("content-type", "application/grpc")])
    server.send_data(post, b"\x00\x00\x00\x00\x00")
    server.send_trailers(post, [("grpc-status", "0"), ("grpc-message", "")])
    link.pump()
    answers = link.take("client")
    trailers = [e for e in answers if isinstance(e, h2.events.TrailersReceived)]
    assert [(e.stream_id, _text(e.headers)["grpc-status"]) for e in trailers] == [(post, "0")]
    ended = {e.stream_id for e in answers if isinstance(e, h2.events.StreamEnded)}
    assert ended == {get, post}


def test_an_hbone_server_still_refuses_ordinary_requests() -> None:
    link = Link(h2_peer(client_side=True), ours(client_side=False))
    peer: Any = link.client
    sid = peer.get_next_available_stream_id()
    peer.send_headers(sid, [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/")],
                      end_stream=True)  # fmt: skip
    link.pump()
    events = link.take("server")
    assert any(isinstance(e, InvalidRequest) for e in events)
    assert not any(isinstance(e, RequestReceived) for e in events)


def _text(headers: list[tuple[Any, Any]]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in headers
    }
