"""Bodies stream through the waypoint process (local Envoy config, --http-listen), between real
sockets: a response reaches the client piece by piece while the backend is still sending it
(HTTP/1.1 chunked and Content-Length, and h2c), a request body reaches the backend while the client
is still sending it, 40 MiB to a stalled reader (downloads over HTTP/1.1 and h2c, an upload) hold
the sender back and pass without the waypoint's memory growing by the body, a body over the
per-request buffer limit is forwarded once (no retry, no mirror) while a small one is retried and
mirrored, a timeout or an upstream close or reset after the response head cuts the client's
response off (reset stream, closed connection) flagged UT / UC / UR (an HTTP/2 cluster's
RST_STREAM to an HTTP/1.1 client), and the access log counts the streamed bytes."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.component.streaming_peers import (
    WAIT,
    Backend,
    H1Client,
    H2Client,
    start_backend,
    start_h2_resetter,
    wait_until_stalled,
)
from tests.component.test_waypoint_grpc import h2_cluster
from tests.component.test_waypoint_local import LocalWaypoint, cluster, local_waypoint

pytestmark = pytest.mark.timeout(120)

ROUTES = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
MiB = 1024 * 1024
ABORT = {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
    "abort": {"http_status": 503, "percentage": {"numerator": 100}},
}


def config(main: int, mirror: int, h2_resetter: int) -> dict[str, Any]:
    retry = {"retry_on": "5xx", "num_retries": 2, "retry_back_off": {"base_interval": "0.01s"}}
    routes = {
        "@type": ROUTES, "name": "waypoint",
        "virtual_hosts": [{"name": "stream", "domains": ["stream"], "routes": [
            {"match": {"prefix": "/stall"}, "route": {"cluster": "main", "timeout": "1s"}},
            {"match": {"prefix": "/upload-timed"}, "route": {"cluster": "main", "timeout": "1s"}},
            {"match": {"prefix": "/h2-reset"}, "route": {"cluster": "h2-resetter"}},
            {"match": {"prefix": "/abort-all"}, "route": {"cluster": "main"},
             "typed_per_filter_config": {"envoy.filters.http.fault": ABORT}},
            {"match": {"prefix": "/flaky"}, "route": {"cluster": "main", "retry_policy": retry,
                                                      "request_mirror_policies": [{"cluster": "mirror"}]}},
            {"match": {"prefix": "/"}, "route": {"cluster": "main", "timeout": "60s"}},
        ]}],
    }  # fmt: skip
    clusters = [cluster("main", main), cluster("mirror", mirror), h2_cluster("h2-resetter", h2_resetter)]
    return {"resources": [routes, *clusters]}


@dataclass
class Running:
    waypoint: LocalWaypoint
    backend: Backend
    mirror: Backend
    resetter: Backend

    @property
    def port(self) -> int:
        return int(self.waypoint.started["http.port"])

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.waypoint.started['ports']['metrics']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            return str(reply.read().decode())

    def series(self, code: str, flags: str) -> bool:
        return any(
            f'response_code="{code}"' in line and f'response_flags="{flags}"' in line
            for line in self.metrics().splitlines()
            if line.startswith("istio_requests_total{")
        )


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    backend, stop = start_backend()
    mirror, stop_mirror = start_backend()
    resetter, stop_resetter = start_h2_resetter()
    tmp = tmp_path_factory.mktemp("streaming")
    try:
        with local_waypoint(tmp, config(backend.port, mirror.port, resetter.port)) as wp:
            yield Running(wp, backend, mirror, resetter)
    finally:
        stop()
        stop_mirror()
        stop_resetter()


@pytest.fixture
def fresh(running: Running) -> Running:
    running.backend.gate.clear()
    running.backend.first_piece.clear()
    return running


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: stream\r\n\r\n".encode()


@pytest.mark.parametrize("path", ["/chunks", "/length"])
def test_an_http1_response_reaches_the_client_piece_by_piece(fresh: Running, path: str) -> None:
    client = H1Client(fresh.port)
    try:
        client.sock.sendall(get(path))
        seen = client.until(b"first")
        assert b"last" not in seen
        fresh.backend.gate.set()  # only now does the backend send the rest
        everything = client.until(b"last")
    finally:
        client.close()
    assert fresh.backend.gate_opened[-1] is True
    assert everything.startswith(b"HTTP/1.1 200")


def test_an_h2c_response_reaches_the_client_piece_by_piece(fresh: Running) -> None:
    client = H2Client(fresh.port)
    try:
        sid = client.request("/chunks")
        client.pump(lambda: b"first" in client.data[sid])
        assert sid not in client.ended
        fresh.backend.gate.set()
        client.pump(lambda: sid in client.ended)
    finally:
        client.close()
    assert fresh.backend.gate_opened[-1] is True
    assert client.headers[sid][":status"] == "200" and client.data[sid] == b"firstlast"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_http1_request_body_reaches_the_backend_while_the_client_sends_it(
    fresh: Running, framing: str
) -> None:
    first, rest = b"a" * 1000, b"b" * 5000
    if framing == "chunked":
        head = b"POST /upload HTTP/1.1\r\nhost: stream\r\ntransfer-encoding: chunked\r\n\r\n"
        parts = [b"%x\r\n%b\r\n" % (len(first), first), b"%x\r\n%b\r\n0\r\n\r\n" % (len(rest), rest)]
    else:
        head = b"POST /upload HTTP/1.1\r\nhost: stream\r\ncontent-length: 6000\r\n\r\n"
        parts = [first, rest]
    client = H1Client(fresh.port)
    try:
        client.sock.sendall(head + parts[0])
        assert fresh.backend.first_piece.wait(WAIT), "the backend saw nothing before the whole body"
        client.sock.sendall(parts[1])
        answer = client.until(b"}")
    finally:
        client.close()
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["bytes"] == 6000


def test_an_h2c_request_body_reaches_the_backend_while_the_client_sends_it(fresh: Running) -> None:
    client = H2Client(fresh.port)
    try:
        sid = client.request("/upload", body=b"a" * 1000, end=False)
        assert fresh.backend.first_piece.wait(WAIT), "the backend saw nothing before the whole body"
        client.send(sid, b"b" * 5000, end=True)
        client.pump(lambda: sid in client.ended)
    finally:
        client.close()
    assert json.loads(client.data[sid])["bytes"] == 6000


def test_the_route_timeout_runs_from_the_end_of_the_request(fresh: Running) -> None:
    # Envoy's route timeout starts once the whole request went upstream: an upload that takes
    # longer than the timeout is not cut by it.
    client = H1Client(fresh.port)
    try:
        client.sock.sendall(b"POST /upload-timed HTTP/1.1\r\nhost: stream\r\ncontent-length: 6\r\n\r\nabc")
        assert fresh.backend.first_piece.wait(WAIT)
        time.sleep(1.5)  # longer than the route's 1 s timeout
        client.sock.sendall(b"def")
        answer = client.until(b"}")
    finally:
        client.close()
    assert answer.startswith(b"HTTP/1.1 200") and json.loads(answer.partition(b"\r\n\r\n")[2])["bytes"] == 6


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.mark.parametrize("case", ["download-http1", "download-h2c", "upload-http1"])
def test_40_mib_to_a_stalled_reader_do_not_grow_the_waypoint_by_the_body(tmp_path: Path, case: str) -> None:
    backend, stop = start_backend()
    try:
        with local_waypoint(tmp_path, config(backend.port, backend.port, backend.port)) as wp:
            pid = wp.proc.pid
            before = rss_kib(pid, "VmRSS")
            port = int(wp.started["http.port"])
            if case == "upload-http1":
                stalled, moved = _upload(backend, port)
            else:
                stalled, moved = _download(backend, port, h2c=case == "download-h2c")
            peak = rss_kib(pid, "VmHWM")
            logged = access_log_line(wp, "/gated" if case == "upload-http1" else f"/big/{SIZE}")
    finally:
        stop()
    assert moved == SIZE
    # counted as the bytes passed, recorded once the exchange ended
    assert logged["bytes_recv" if case == "upload-http1" else "bytes_sent"] == SIZE
    assert logged["http.status"] == 200
    assert stalled < SIZE // 2, f"{stalled} bytes went towards a reader that took none"
    assert (peak - before) * 1024 < 16 * MiB, f"the waypoint grew by {(peak - before) // 1024} MiB"


SIZE = 40 * MiB


def access_log_line(waypoint: LocalWaypoint, path: str) -> dict[str, Any]:
    """The waypoint's access-log line for ``path`` (written when the exchange ends)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        for line in waypoint.log.read_text().splitlines():
            if line.startswith("{") and '"event": "request"' in line:
                entry: dict[str, Any] = json.loads(line)
                if entry.get("http.path") == path:
                    return entry
        time.sleep(0.05)
    raise AssertionError(f"no access-log line for {path}")


def _download(backend: Backend, port: int, *, h2c: bool) -> tuple[int, int]:
    """The client reads the head, then nothing until the backend is held back, then the rest:
    (bytes the backend sent meanwhile, bytes the client received)."""
    if h2c:
        h2 = H2Client(port)
        sid = h2.request(f"/big/{SIZE}")
        h2.pump(lambda: sid in h2.headers)
        stalled = wait_until_stalled(lambda: backend.sent)
        h2.pump(lambda: sid in h2.ended)
        h2.close()
        return stalled, len(h2.data[sid])
    client = H1Client(port)
    client.sock.sendall(get(f"/big/{SIZE}"))
    client.until(b"\r\n\r\n")
    stalled = wait_until_stalled(lambda: backend.sent)
    received = len(client.received.partition(b"\r\n\r\n")[2])
    while received < SIZE:
        data = client.sock.recv(1 << 20)
        assert data, f"the download ended after {received} bytes"
        received += len(data)
    client.close()
    return stalled, received


def _upload(backend: Backend, port: int) -> tuple[int, int]:
    """The client sends as fast as it can to a backend that stops reading after the first piece
    until the test lets it go on: (bytes the client got out meanwhile, bytes the backend read)."""
    client = H1Client(port)
    sent = [0]

    def send() -> None:
        client.sock.sendall(
            f"POST /gated HTTP/1.1\r\nhost: stream\r\ncontent-length: {SIZE}\r\n\r\n".encode()
        )
        piece = b"u" * 65536
        while sent[0] < SIZE:
            client.sock.sendall(piece)
            sent[0] += len(piece)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    assert backend.first_piece.wait(WAIT)
    stalled = wait_until_stalled(lambda: sent[0])
    backend.gate.set()
    sender.join(WAIT)
    answer = client.until(b"}")
    client.close()
    return stalled, json.loads(answer.partition(b"\r\n\r\n")[2])["bytes"]


def post(path: str, size: int, key: str) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nhost: stream\r\nx-key: {key}\r\ncontent-length: {size}\r\n\r\n"
    return head.encode() + b"z" * size


@pytest.mark.parametrize(
    ("size", "status", "attempts", "mirrored"),
    [(10_000, 200, 2, True), (2 * MiB, 503, 1, False)],
    ids=["small-body-retried-and-mirrored", "body-over-the-buffer-limit-sent-once"],
)
def test_retries_and_mirrors_only_for_a_body_within_the_buffer_limit(
    fresh: Running, size: int, status: int, attempts: int, mirrored: bool
) -> None:
    key = f"k{size}"
    client = H1Client(fresh.port)
    try:
        client.sock.sendall(post("/flaky", size, key))
        answer = client.until(b"\r\n\r\n")
    finally:
        client.close()
    assert answer.startswith(f"HTTP/1.1 {status}".encode())
    assert fresh.backend.attempts[key] == attempts
    assert [n for path, n in fresh.backend.bodies if path == "/flaky"].count(size) >= attempts
    deadline = time.monotonic() + WAIT
    while mirrored and ("/flaky", size) not in fresh.mirror.bodies and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (("/flaky", size) in fresh.mirror.bodies) is mirrored
    if not mirrored:
        assert 'waypoint_mirror_skipped_total{upstream_cluster="mirror"}' in fresh.metrics()


def test_a_timeout_after_the_head_cuts_the_http1_response_off_flagged_ut(fresh: Running) -> None:
    client = H1Client(fresh.port)
    try:
        client.sock.sendall(get("/stall"))
        everything, _ = client.to_the_end()
    finally:
        client.close()
    assert everything.startswith(b"HTTP/1.1 200") and b"first" in everything
    assert not everything.endswith(b"0\r\n\r\n")  # no last chunk: the client knows it is cut short
    assert fresh.series("200", "UT")


def test_a_timeout_after_the_head_resets_the_h2_stream(fresh: Running) -> None:
    client = H2Client(fresh.port)
    try:
        sid = client.request("/stall")
        client.pump(lambda: sid in client.reset or sid in client.ended)
    finally:
        client.close()
    assert sid in client.reset and client.data[sid] == b"first"


@pytest.mark.parametrize("protocol", ["http1", "h2c"])
def test_an_upstream_reset_mid_body_is_passed_on(fresh: Running, protocol: str) -> None:
    if protocol == "http1":
        client = H1Client(fresh.port)
        try:
            client.sock.sendall(get("/cut"))
            client.until(b"y" * 100)
            fresh.backend.gate.set()
            everything, _ = client.to_the_end()
        finally:
            client.close()
        assert everything.count(b"y") == 100  # the client saw a Content-Length body cut short
    else:
        h2 = H2Client(fresh.port)
        try:
            sid = h2.request("/cut")
            h2.pump(lambda: len(h2.data[sid]) >= 100)
            fresh.backend.gate.set()
            h2.pump(lambda: sid in h2.reset or sid in h2.ended)
        finally:
            h2.close()
        assert sid in h2.reset
    assert fresh.series("200", "UC")


def test_an_http2_upstream_reset_mid_body_closes_the_http1_client_flagged_ur(running: Running) -> None:
    # HTTP/1.1 downstream, HTTP/2 cluster: the waypoint translates, and passes the RST_STREAM on.
    client = H1Client(running.port)
    try:
        client.sock.sendall(get("/h2-reset"))
        client.until(b"first")
        running.resetter.gate.set()
        everything, _ = client.to_the_end()
    finally:
        client.close()
    assert everything.startswith(b"HTTP/1.1 200") and not everything.endswith(b"0\r\n\r\n")
    assert running.series("200", "UR")


def test_an_h2_request_reset_in_the_same_read_is_not_forwarded(fresh: Running) -> None:
    client = H2Client(fresh.port)
    try:
        reset = client.conn.get_next_available_stream_id()
        headers = [(":method", "GET"), (":scheme", "http"), (":authority", "stream"),
                   (":path", "/reset-early"), ("x-key", "reset-early")]  # fmt: skip
        client.conn.send_headers(reset, headers, end_stream=True)
        client.conn.reset_stream(reset)
        client.sock.sendall(client.conn.data_to_send())  # HEADERS and RST_STREAM in one write
        after = client.request("/after-reset")
        client.pump(lambda: after in client.ended)
    finally:
        client.close()
    assert fresh.backend.attempts["/after-reset"] >= 1
    assert fresh.backend.attempts["reset-early"] == 0


def test_a_fault_answers_before_the_body_and_the_connection_goes_on(fresh: Running) -> None:
    # The abort is decided on the head: the client gets its 503 while it is still sending a 2 MiB
    # body, which the waypoint then reads and drops; the next request on the connection is served.
    client = H1Client(fresh.port)
    try:
        head = f"POST /abort-all HTTP/1.1\r\nhost: stream\r\ncontent-length: {2 * MiB}\r\n\r\n"
        client.sock.sendall(head.encode() + b"a" * 1000)
        assert client.until(b"fault filter abort").startswith(b"HTTP/1.1 503")
        client.sock.sendall(b"a" * (2 * MiB - 1000) + post("/upload", 10, "after-abort"))
        answer = client.until(b'"attempt"')
    finally:
        client.close()
    assert b'"bytes": 10' in answer
    assert ("/abort-all", 2 * MiB) not in fresh.backend.bodies
