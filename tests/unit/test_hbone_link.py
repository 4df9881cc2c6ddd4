"""A fake in-memory link between two HTTP/2 endpoints (ours or the `h2` library's), and the pair tests:
handshake, CONNECT, byte-exact payloads over many concurrent streams, half-close both ways."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from mesh.h2 import (
    ConnectRequest,
    DataReceived,
    H2Config,
    Http2Engine,
    Response,
    StreamEnded,
)
from mesh.h2 import frames as fr

H2_MAX_FRAME = 2**24 - 1


class Endpoint(Protocol):
    def receive_data(self, data: bytes) -> list[Any]: ...

    def data_to_send(self) -> bytes: ...


def ours(*, client_side: bool, config: H2Config | None = None) -> Http2Engine:
    """Our engine, preface queued."""
    conn = Http2Engine(client_side=client_side, config=config or H2Config())
    conn.initiate_connection()
    return conn


def h2_peer(
    *, client_side: bool, window: int = 4 * 2**20, max_frame: int = 2**20
) -> h2.connection.H2Connection:
    """The reference library, set up like ztunnel (and around trap 5 of calibration.md)."""
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=client_side, header_encoding="utf-8")
    )
    conn.local_settings = h2.settings.Settings(
        client=client_side,
        initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: max_frame,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        },
    )
    conn.initiate_connection()
    conn.increment_flow_control_window(16 * 2**20 - 65_535)
    conn.max_inbound_frame_size = conn.incoming_buffer.max_frame_size = H2_MAX_FRAME
    return conn


def feed(conn: Endpoint, data: bytes, *, chunk: int = 0) -> list[Any]:
    """Delivers bytes in pieces of ``chunk`` (0: all at once) and acknowledges received data."""
    events: list[Any] = []
    pieces = [data] if chunk <= 0 else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    for piece in pieces:
        got = conn.receive_data(piece)
        for event in got:
            if isinstance(event, DataReceived) and isinstance(conn, Http2Engine):
                conn.acknowledge_received_data(event.stream_id, event.flow_controlled_length)
            elif isinstance(event, h2.events.DataReceived) and event.stream_id:
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)  # type: ignore[attr-defined]
        events.extend(_materialize(got))
    return events


def _materialize(events: Iterable[Any]) -> list[Any]:
    out = []
    for event in events:
        if isinstance(event, DataReceived):
            out.append(DataReceived(event.stream_id, bytes(event.data), event.flow_controlled_length))
        else:
            out.append(event)
    return out


@dataclass
class Link:
    """Moves bytes between a client and a server until both are quiet; keeps every event."""

    client: Endpoint
    server: Endpoint
    chunk: int = 0
    client_events: list[Any] = field(default_factory=list)
    server_events: list[Any] = field(default_factory=list)

    def pump(self, *, rounds: int = 1000) -> None:
        for _ in range(rounds):
            to_server, to_client = self.client.data_to_send(), self.server.data_to_send()
            if not to_server and not to_client:
                return
            if to_server:
                self.server_events += feed(self.server, to_server, chunk=self.chunk)
            if to_client:
                self.client_events += feed(self.client, to_client, chunk=self.chunk)
        raise AssertionError("the link did not go quiet")

    def take(self, side: str) -> list[Any]:
        events = self.client_events if side == "client" else self.server_events
        out = list(events)
        events.clear()
        return out


def payload_by_stream(events: Iterable[Any]) -> dict[int, bytes]:
    """Bytes received per stream, ours or h2's DataReceived."""
    out: dict[int, bytearray] = {}
    for event in events:
        if isinstance(event, (DataReceived, h2.events.DataReceived)):
            out.setdefault(event.stream_id, bytearray()).extend(bytes(event.data))
    return {k: bytes(v) for k, v in out.items()}


def frame_list(wire: bytes) -> list[tuple[int, int, int, int]]:
    """(type, flags, stream id, length) of each frame in ``wire`` (a client preface is skipped)."""
    if wire.startswith(fr.CONNECTION_PREFACE):
        wire = wire[len(fr.CONNECTION_PREFACE) :]
    out, pos = [], 0
    while pos < len(wire):
        hi, lo, ftype, flags, sid = fr.FRAME_HEADER.unpack_from(wire, pos)
        length = hi << 8 | lo
        out.append((ftype, flags, sid & 0x7FFFFFFF, length))
        pos += 9 + length
    assert pos == len(wire), "trailing partial frame"
    return out


def ended(events: Iterable[Any]) -> set[int]:
    return {e.stream_id for e in events if isinstance(e, (StreamEnded, h2.events.StreamEnded))}


# --- pair tests ----------------------------------------------------------------------------------

PairFactory = Callable[[], Link]


def _ours_ours() -> Link:
    return Link(ours(client_side=True), ours(client_side=False))


def _ours_client_h2_server() -> Link:
    return Link(ours(client_side=True), h2_peer(client_side=False))


def _h2_client_ours_server() -> Link:
    return Link(h2_peer(client_side=True), ours(client_side=False))


PAIRS = {
    "ours-ours": _ours_ours,
    "ours-h2server": _ours_client_h2_server,
    "h2client-ours": _h2_client_ours_server,
}


def open_tunnel(link: Link, authority: str, headers: list[tuple[str, str]] | None = None) -> int:
    """CONNECT from the client, 200 from the server; returns the stream id."""
    headers = headers or []
    if isinstance(link.client, Http2Engine):
        sid = link.client.send_connect(authority, headers)
    else:
        client: Any = link.client
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, [(":method", "CONNECT"), (":authority", authority), *headers])
    link.pump()
    requests = [e for e in link.server_events if getattr(e, "stream_id", None) == sid]
    assert requests, f"server saw nothing for stream {sid}"
    if isinstance(link.server, Http2Engine):
        assert isinstance(requests[0], ConnectRequest)
        assert requests[0].authority == authority
        assert list(requests[0].headers) == headers
        link.server.send_response(sid, 200)
    else:
        server: Any = link.server
        request: Any = requests[0]
        assert isinstance(request, h2.events.RequestReceived)
        request_headers: dict[Any, Any] = dict(request.headers)
        assert request_headers[":authority"] == authority
        server.send_headers(sid, [(":status", "200")])
    link.pump()
    responses = [e for e in link.client_events if getattr(e, "stream_id", None) == sid]
    assert any(isinstance(e, (Response, h2.events.ResponseReceived)) for e in responses)
    return sid


def send_all(conn: Endpoint, sid: int, data: bytes, *, end_stream: bool) -> int:
    """Sends what the window allows; returns bytes taken."""
    if isinstance(conn, Http2Engine):
        return conn.send_data(sid, data, end_stream=end_stream)
    peer: Any = conn
    n: int = min(len(data), peer.local_flow_control_window(sid))
    step = peer.max_outbound_frame_size
    for i in range(0, n, step):
        peer.send_data(sid, data[i : min(i + step, n)])
    if end_stream and n == len(data):
        peer.end_stream(sid)
    return n


def transfer(link: Link, payloads: dict[int, bytes], *, from_client: bool, end_stream: bool = True) -> None:
    """Pushes every payload through, retrying as windows reopen."""
    sender = link.client if from_client else link.server
    left = dict(payloads)
    for _ in range(10_000):
        if not left:
            return
        for sid, data in list(left.items()):
            n = send_all(sender, sid, data, end_stream=end_stream)
            left[sid] = data[n:]
            if n == len(data) and (n or end_stream):
                del left[sid]
        link.pump()
    raise AssertionError("transfer did not finish")


@pytest.mark.parametrize("pair", PAIRS)
def test_handshake_settles_with_settings_acknowledged(pair: str) -> None:
    link = PAIRS[pair]()
    link.pump()
    for conn in (link.client, link.server):
        if isinstance(conn, Http2Engine):
            assert conn.remote_max_concurrent_streams > 0
            assert conn.bytes_to_send_pending() == 0
            assert not conn.terminated


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("chunk", [0, 1, 7, 9, 10, 4096])
def test_many_concurrent_streams_carry_exact_bytes_both_ways(pair: str, chunk: int) -> None:
    rng = random.Random(chunk)
    link = PAIRS[pair]()
    link.chunk = chunk
    streams = 12 if chunk in (0, 4096) else 3
    size = 300_000 if chunk in (0, 4096) else 3_000
    sids = [
        open_tunnel(link, f"10.0.0.{i}:80{i}", [("baggage", f"k8s.pod.name=p{i}")]) for i in range(streams)
    ]
    up = {sid: rng.randbytes(rng.randrange(size)) for sid in sids}
    down = {sid: rng.randbytes(rng.randrange(size)) for sid in sids}
    link.take("client"), link.take("server")
    transfer(link, up, from_client=True)
    transfer(link, down, from_client=False)
    server_got, client_got = link.take("server"), link.take("client")
    assert payload_by_stream(server_got) == {k: v for k, v in up.items() if v}
    assert payload_by_stream(client_got) == {k: v for k, v in down.items() if v}
    assert ended(server_got) == set(sids) == ended(client_got)
    for conn in (link.client, link.server):
        if isinstance(conn, Http2Engine):
            assert conn.open_streams == 0


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("client_first", [True, False])
def test_half_close_keeps_the_other_direction_open(pair: str, client_first: bool) -> None:
    link = PAIRS[pair]()
    sid = open_tunnel(link, "10.1.2.3:443")
    first, second = (True, False) if client_first else (False, True)
    transfer(link, {sid: b"request"}, from_client=first, end_stream=True)
    transfer(link, {sid: b"reply after the half-close"}, from_client=second, end_stream=False)
    transfer(link, {sid: b" and more"}, from_client=second, end_stream=True)
    client_got, server_got = link.take("client"), link.take("server")
    to_first = client_got if client_first else server_got
    assert payload_by_stream(to_first) == {sid: b"reply after the half-close and more"}
    assert ended(client_got) == {sid} == ended(server_got)


def test_connect_headers_and_response_headers_arrive_intact() -> None:
    link = _ours_ours()
    client, server = link.client, link.server
    assert isinstance(client, Http2Engine) and isinstance(server, Http2Engine)
    sid = client.send_connect(
        "[fd00::1]:8080", [("forwarded", 'for="10.0.0.1:3333"'), ("traceparent", "00-ab-cd-00")]
    )
    link.pump()
    request = next(e for e in link.take("server") if isinstance(e, ConnectRequest))
    assert request == ConnectRequest(
        sid, "[fd00::1]:8080", (("forwarded", 'for="10.0.0.1:3333"'), ("traceparent", "00-ab-cd-00"))
    )
    server.send_response(sid, 503, [("baggage", "k8s.namespace.name=default")], end_stream=True)
    link.pump()
    events = link.take("client")
    assert Response(sid, 503, (("baggage", "k8s.namespace.name=default"),)) in events
    assert StreamEnded(sid) in events


def test_stream_ids_are_odd_and_increasing_from_the_client() -> None:
    link = _ours_ours()
    client = link.client
    assert isinstance(client, Http2Engine)
    assert [client.send_connect(f"10.0.0.1:{p}") for p in (1, 2, 3)] == [1, 3, 5]


def test_large_header_block_is_split_into_continuation_frames() -> None:
    link = _ours_ours()
    client = link.client
    assert isinstance(client, Http2Engine)
    big = [(f"x-h{i}", "v" * 2000) for i in range(20)]  # ~40 KiB, above the 16 KiB default frame size
    sid = client.send_connect("10.0.0.9:9", big)
    wire = client.data_to_send()
    kinds = [(t, f & fr.END_HEADERS) for t, f, s, _ in frame_list(wire) if s == sid]
    assert kinds == [(fr.HEADERS, 0), (fr.CONTINUATION, 0), (fr.CONTINUATION, fr.END_HEADERS)]
    events = feed(link.server, wire)
    request = next(e for e in events if isinstance(e, ConnectRequest))
    assert request.stream_id == sid and list(request.headers) == big


def test_per_tunnel_header_values_are_never_indexed_and_stable_ones_are() -> None:
    from hpack import Decoder  # noqa: PLC0415 (the peer's view of our header blocks)

    client = ours(client_side=True)
    client.initiate_connection()
    client.data_to_send()
    decoder = Decoder()
    for port in range(3000, 3020):
        trace = f"00-{port:032x}-{port:016x}-01"
        headers = [("baggage", "k8s.namespace.name=demo"), ("forwarded", f'for="10.0.0.1:{port}"'),
                   ("traceparent", trace)]  # fmt: skip
        sid = client.send_connect("10.0.0.2:8080", headers)
        wire = client.data_to_send()
        assert [f[0] for f in frame_list(wire)] == [fr.HEADERS]
        assert (b"traceparent", trace.encode()) in list(decoder.decode(wire[9:], raw=True))
        client.reset_stream(sid)
        client.data_to_send()
    names = {bytes(name) for name, _ in decoder.header_table.dynamic_entries}
    assert names == {b":method", b":authority", b"baggage"}, names  # 20 tunnels, no per-tunnel value
