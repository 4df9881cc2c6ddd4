"""Real peers for the waypoint's streaming tests: a threaded HTTP/1.1 backend whose answers come in
pieces, wait for the test's signal, stall or break off; and raw HTTP/1.1 and h2c clients that see
each piece as it arrives."""

from __future__ import annotations

import collections
import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events

WAIT = 10.0
"""How long a peer waits for the other side's signal before it gives up (then the test fails)."""


@dataclass
class Backend:
    """What the backend saw and the gates the test opens."""

    port: int = 0
    gate: threading.Event = field(default_factory=threading.Event)
    """Opened by the client once it saw the first piece of a response."""
    gate_opened: list[bool] = field(default_factory=list)
    """For each gated response: whether the gate opened before the backend gave up waiting."""
    first_piece: threading.Event = field(default_factory=threading.Event)
    """Set when an upload's first body piece reached the backend."""
    attempts: collections.Counter[str] = field(default_factory=collections.Counter)
    bodies: list[tuple[str, int]] = field(default_factory=list)
    """(path, body bytes) of every request, in arrival order."""
    sent: int = 0
    """Bytes of the big download written so far."""
    lock: threading.Lock = field(default_factory=threading.Lock)


def _read_head(conn: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b"", b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


class _Body:
    """A request body read from the socket as it comes (Content-Length or chunked)."""

    def __init__(self, conn: socket.socket, head: bytes, rest: bytes) -> None:
        self._conn, self._buffer = conn, rest
        lines = head.decode("latin-1").split("\r\n")[1:]
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        self.chunked = "chunked" in headers.get("transfer-encoding", "")
        self.left = int(headers.get("content-length", "0"))
        self.done = not self.chunked and self.left == 0

    def _fill(self) -> None:
        data = self._conn.recv(65536)
        if not data:
            raise ConnectionError("the waypoint closed mid-body")
        self._buffer += data

    def piece(self) -> bytes:
        """The next piece of the body, b"" at its end."""
        if self.done:
            return b""
        if not self.chunked:
            if not self._buffer:
                self._fill()
            piece, self._buffer = self._buffer[: self.left], self._buffer[self.left :]
            self.left -= len(piece)
            self.done = self.left == 0
            return piece
        while b"\r\n" not in self._buffer:
            self._fill()
        size_line, _, self._buffer = self._buffer.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        while len(self._buffer) < size + 2:
            self._fill()
        piece, self._buffer = self._buffer[:size], self._buffer[size + 2 :]
        if size == 0:
            self.done = True
        return piece


def _respond(conn: socket.socket, status: int, body: bytes, *extra: str) -> None:
    head = [f"HTTP/1.1 {status} X", f"content-length: {len(body)}", *extra]
    conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)


def _serve(backend: Backend, conn: socket.socket) -> None:
    with conn:
        while True:
            head, rest = _read_head(conn)
            if not head:
                return
            path = head.split(b" ")[1].decode()
            key = next((line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                        if line.lower().startswith(b"x-key:")), path)  # fmt: skip
            body = _Body(conn, head, rest)
            if not _handle(backend, conn, path, key, body):
                return


def _handle(backend: Backend, conn: socket.socket, path: str, key: str, body: _Body) -> bool:
    """Answers one request; False when the connection is over."""
    total = 0
    while piece := body.piece():
        if not total and path.startswith("/gated"):  # a reader that stalls after the first piece
            backend.first_piece.set()
            backend.gate_opened.append(backend.gate.wait(WAIT))
        total += len(piece)
        backend.first_piece.set()
    with backend.lock:
        backend.attempts[key] += 1
        attempt = backend.attempts[key]
        backend.bodies.append((path, total))
    if path.startswith("/chunks"):  # chunked, in two pieces with the client's signal between
        conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        backend.gate_opened.append(backend.gate.wait(WAIT))
        conn.sendall(b"4\r\nlast\r\n0\r\n\r\n")
    elif path.startswith("/length"):  # the same with a Content-Length
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nfirst")
        backend.gate_opened.append(backend.gate.wait(WAIT))
        conn.sendall(b"last")
    elif path.startswith("/big/"):
        size = int(path.split("/")[2])
        conn.sendall(f"HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n".encode())
        piece = b"x" * 65536
        for offset in range(0, size, len(piece)):
            conn.sendall(piece[: size - offset])
            backend.sent = offset + min(len(piece), size - offset)
    elif path.startswith("/stall"):  # a head and a piece, then nothing until the waypoint gives up
        conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        conn.settimeout(WAIT)
        with contextlib.suppress(OSError):
            conn.recv(1)  # returns once the waypoint closes its side
        return False
    elif path.startswith("/cut"):  # a head promising 1000 bytes, 100 of them, then a reset
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"y" * 100)
        backend.gate_opened.append(backend.gate.wait(WAIT))  # the client has the 100 bytes
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return False
    elif path.startswith("/flaky") and attempt == 1:
        _respond(conn, 503, b"try again")
    else:
        _respond(
            conn,
            200,
            json.dumps({"bytes": total, "attempt": attempt}).encode(),
            "content-type: application/json",
        )
    return True


def wait_until_stalled(progress: Callable[[], int]) -> int:
    """Waits until ``progress()`` stops advancing for half a second (backpressure); returns it."""
    deadline = time.monotonic() + WAIT
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        if progress() != last:
            last, since = progress(), time.monotonic()
        elif time.monotonic() - since > 0.5:
            return last
        time.sleep(0.05)
    return progress()


def start_backend() -> tuple[Backend, Callable[[], None]]:
    """Starts the backend on a free port; returns it and its stop function."""
    backend = Backend()
    listener = socket.create_server(("127.0.0.1", 0))
    backend.port = listener.getsockname()[1]
    stopping = threading.Event()

    def accept() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=_serve, args=(backend, conn), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()

    def stop() -> None:
        stopping.set()
        listener.close()

    return backend, stop


def start_h2_resetter() -> tuple[Backend, Callable[[], None]]:
    """An h2c backend that answers every request with a head and ``first``, then, once the test
    opens the gate, resets the stream (RST_STREAM INTERNAL_ERROR)."""
    backend = Backend()
    listener = socket.create_server(("127.0.0.1", 0))
    backend.port = listener.getsockname()[1]

    def serve(conn: socket.socket) -> None:
        server = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        server.initiate_connection()
        with conn:
            conn.sendall(server.data_to_send())
            while data := conn.recv(65536):
                for event in server.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        server.send_headers(event.stream_id, [(":status", "200")])
                        server.send_data(event.stream_id, b"first")
                        conn.sendall(server.data_to_send())
                        backend.gate_opened.append(backend.gate.wait(WAIT))
                        server.reset_stream(event.stream_id, error_code=2)
                conn.sendall(server.data_to_send())

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return backend, listener.close


class H1Client:
    """One HTTP/1.1 connection to the waypoint, read as bytes arrive."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.received = b""

    def until(self, marker: bytes) -> bytes:
        """Reads until ``marker`` arrived (AssertionError if the connection ends first)."""
        while marker not in self.received:
            data = self.sock.recv(65536)
            assert data, f"the connection ended before {marker!r}: {self.received[-300:]!r}"
            self.received += data
        return self.received

    def to_the_end(self) -> tuple[bytes, bool]:
        """Reads until the waypoint closes; (everything, whether it ended with a reset)."""
        try:
            while data := self.sock.recv(65536):
                self.received += data
        except ConnectionResetError:
            return self.received, True
        return self.received, False

    def close(self) -> None:
        self.sock.close()


class H2Client:
    """One h2c connection to the waypoint (the ``h2`` library as the client)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.data: dict[int, bytearray] = collections.defaultdict(bytearray)
        self.headers: dict[int, dict[str, str]] = {}
        self.ended: set[int] = set()
        self.reset: set[int] = set()

    def request(
        self, path: str, *, body: bytes | None = None, end: bool = True, host: str = "stream",
        headers: tuple[tuple[str, str], ...] = (),
    ) -> int:  # fmt: skip
        """Opens a stream; with ``end`` False the body continues with :meth:`send`."""
        sid = self.conn.get_next_available_stream_id()
        method = "GET" if body is None and end else "POST"
        pseudo = [(":method", method), (":scheme", "http"), (":authority", host), (":path", path)]
        self.conn.send_headers(sid, [*pseudo, *headers], end_stream=body is None and end)
        self.sock.sendall(self.conn.data_to_send())
        if body is not None:
            self.send(sid, body, end=end)
        return sid

    def send(self, sid: int, data: bytes, *, end: bool) -> None:
        """More of a request body, as the windows allow."""
        view = memoryview(data)
        while view:
            size = min(len(view), self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if size == 0:
                self.pump(lambda: self.conn.local_flow_control_window(sid) > 0)
                continue
            self.conn.send_data(sid, bytes(view[:size]))
            view = view[size:]
            self.sock.sendall(self.conn.data_to_send())
        if end:
            self.conn.end_stream(sid)
            self.sock.sendall(self.conn.data_to_send())

    def pump(self, done: Callable[[], bool]) -> None:
        """Reads frames until ``done()`` (AssertionError when the connection ends first)."""
        deadline = time.monotonic() + WAIT
        while not done():
            assert time.monotonic() < deadline, "the waypoint did not answer in time"
            data = self.sock.recv(65536)
            assert data, "the waypoint closed the connection"
            for event in self.conn.receive_data(data):
                self._event(event)
            self.sock.sendall(self.conn.data_to_send())

    def _event(self, event: object) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            self.headers[event.stream_id] = {str(k): str(v) for k, v in event.headers}
        elif isinstance(event, h2.events.DataReceived):
            self.data[event.stream_id] += event.data
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.ended.add(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self.reset.add(event.stream_id)

    def close(self) -> None:
        self.sock.close()
