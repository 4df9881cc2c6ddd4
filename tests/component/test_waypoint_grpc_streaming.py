"""Streaming gRPC through the waypoint process (local Envoy config, --http-listen), real grpcio
client and server (raw bytes, no codegen): a server-streaming RPC whose messages reach the client
one by one while the server is still sending (the server sends message n+1 only once the client
has message n), a bidirectional ping-pong of 10 messages (each request sent only after the
previous reply arrived), counted as gRPC with status 0; a server streaming 40 MiB to an h2c
client that stalls is held back (the waypoint grants the server window only as the client takes
the bytes); and an HTTP/1.1 client's gRPC-framed
request to the HTTP/2 cluster (the waypoint translating)."""

from __future__ import annotations

import queue
import socket
import threading
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.component.streaming_peers import H2Client, wait_until_stalled
from tests.component.test_waypoint_grpc import h2_cluster
from tests.component.test_waypoint_local import local_waypoint

pytestmark = pytest.mark.timeout(120)

ROUTES = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
WAIT = 10.0
AUTHORITY = "stream-grpc:50051"
FLOOD_MESSAGE = b"f" * 65536


@dataclass
class StreamServer:
    """``test.Stream/Count`` sends ``n`` messages, each after the client confirmed the previous
    one; ``test.Stream/Echo`` answers every message as it comes."""

    confirmed: list[threading.Event] = field(default_factory=lambda: [threading.Event() for _ in range(5)])
    waits: list[bool] = field(default_factory=list)
    """For each message after the first: whether the client had the previous one in time."""
    flooded: int = 0
    """Bytes of ``test.Stream/Flood`` messages the server got out so far."""

    def count(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for n in range(int(request)):
            if n:
                self.waits.append(self.confirmed[n - 1].wait(WAIT))
            yield b"message %d" % (n + 1)

    def flood(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for _ in range(int(request)):
            yield FLOOD_MESSAGE
            self.flooded += len(FLOOD_MESSAGE)

    @staticmethod
    def echo(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for request in requests:
            yield b"echo:" + request

    def start(self) -> tuple[grpc.Server, int]:
        handler = grpc.method_handlers_generic_handler(
            "test.Stream",
            {
                "Count": grpc.unary_stream_rpc_method_handler(self.count),
                "Echo": grpc.stream_stream_rpc_method_handler(self.echo),
                "Flood": grpc.unary_stream_rpc_method_handler(self.flood),
            },
        )
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=[handler])
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        return server, port


@dataclass
class Running:
    port: int
    metrics: int
    server: StreamServer


def config(port: int) -> dict[str, Any]:
    routes = {
        "@type": ROUTES, "name": "waypoint",
        "virtual_hosts": [{"name": "grpc", "domains": ["stream-grpc", AUTHORITY],
                           "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "stream"}}]}],
    }  # fmt: skip
    return {"resources": [routes, h2_cluster("stream", port)]}


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp: Path = tmp_path_factory.mktemp("grpc-stream")
    streams = StreamServer()
    server, port = streams.start()
    try:
        with local_waypoint(tmp, config(port)) as wp:
            yield Running(int(wp.started["http.port"]), wp.started["ports"]["metrics"], streams)
    finally:
        server.stop(0)


def channel(port: int) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.default_authority", AUTHORITY)])


def test_server_streaming_messages_arrive_while_the_server_is_still_sending(running: Running) -> None:
    with channel(running.port) as ch:
        count = ch.unary_stream("/test.Stream/Count", request_serializer=None, response_deserializer=None)
        received = []
        for n, message in enumerate(count(b"5", timeout=30)):
            received.append(message)
            if n < len(running.server.confirmed):
                running.server.confirmed[n].set()  # only now may the server send the next one
    assert received == [b"message %d" % n for n in range(1, 6)]
    assert running.server.waits == [True] * 4  # every message reached the client before the next was sent


def test_bidirectional_ping_pong_of_ten_messages(running: Running) -> None:
    outbox: queue.Queue[bytes | None] = queue.Queue()

    def requests() -> Iterator[bytes]:
        while (item := outbox.get(timeout=WAIT)) is not None:
            yield item

    with channel(running.port) as ch:
        echo = ch.stream_stream("/test.Stream/Echo", request_serializer=None, response_deserializer=None)
        outbox.put(b"0")
        replies = []
        call = echo(requests(), timeout=30)
        for reply in call:  # each request goes out only once the previous reply came back
            replies.append(reply)
            outbox.put(str(len(replies)).encode() if len(replies) < 10 else None)
        assert call.code() == grpc.StatusCode.OK
    assert replies == [b"echo:%d" % n for n in range(10)]
    assert counted_ok(running.metrics)


def counted_ok(metrics: int) -> bool:
    """Whether the waypoint counted a gRPC request with grpc-status 0 (from the trailers)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return any(
        'request_protocol="grpc"' in line and 'grpc_response_status="0"' in line
        for line in text.splitlines()
        if line.startswith("istio_requests_total{")
    )


def test_an_http1_client_reaches_the_http2_cluster(running: Running) -> None:
    message = b"1"
    framed = b"\x00" + len(message).to_bytes(4, "big") + message
    head = (
        f"POST /test.Stream/Count HTTP/1.1\r\nhost: {AUTHORITY}\r\ncontent-type: application/grpc\r\n"
        f"content-length: {len(framed)}\r\n\r\n"
    ).encode()
    running.server.confirmed[0].set()
    with socket.create_connection(("127.0.0.1", running.port), timeout=WAIT) as sock:
        sock.sendall(head + framed)
        answer = b""
        while b"message 1" not in answer:
            data = sock.recv(65536)
            assert data, answer
            answer += data
    assert answer.startswith(b"HTTP/1.1 200") and b"content-type: application/grpc" in answer


def test_a_stalled_client_holds_a_streaming_server_back(running: Running) -> None:
    # 640 messages of 64 KiB (40 MiB) to an h2c client that reads nothing for a while: the
    # waypoint takes from the server only what the client takes (its windows), so the server stalls.
    count = 640
    client = H2Client(running.port)
    try:
        sid = client.request(
            "/test.Stream/Flood", body=_framed(str(count).encode()), host=AUTHORITY,
            headers=(("content-type", "application/grpc"), ("te", "trailers")),
        )  # fmt: skip
        client.pump(lambda: sid in client.headers)
        stalled = wait_until_stalled(lambda: running.server.flooded)
        client.pump(lambda: sid in client.ended)
    finally:
        client.close()
    assert len(client.data[sid]) == count * (5 + len(FLOOD_MESSAGE))
    assert stalled < count * len(FLOOD_MESSAGE) // 2, f"the server got {stalled} bytes out meanwhile"


def _framed(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message
