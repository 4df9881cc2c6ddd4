"""RFC 9113 error handling, table-driven: a frame sequence in, the error code out, and whether it is a
stream error (RST_STREAM, StreamReset(remote=False), connection lives) or a connection error (GOAWAY,
ConnectionTerminated(remote=False), input ignored afterwards)."""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from hpack import Encoder

from mesh.h2 import ConnectionTerminated, ErrorCode, H2Config, Http2Engine, StreamReset
from mesh.h2 import frames as fr
from tests.unit.test_hbone_link import frame_list, ours

E = ErrorCode
CONNECT = [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80")]
Build = Callable[[Http2Engine, Encoder], bytes]


def raw_server(config: H2Config | None = None) -> Http2Engine:
    """Our server after a raw client's preface, SETTINGS and SETTINGS ACK."""
    server = ours(client_side=False, config=config)
    assert server.receive_data(fr.CONNECTION_PREFACE + fr.settings_frame() + fr.settings_frame(ack=True))
    server.data_to_send()
    return server


def raw_client() -> tuple[Http2Engine, int]:
    """Our client after a raw server's SETTINGS and ACK, with one CONNECT stream sent."""
    client = ours(client_side=True)
    client.receive_data(fr.settings_frame() + fr.settings_frame(ack=True))
    sid = client.send_connect("10.0.0.1:80")
    client.data_to_send()
    return client, sid


def hdrs(
    enc: Encoder, sid: int, fields: list[tuple[bytes, bytes]] | None = None, *, flags: int = fr.END_HEADERS
) -> bytes:
    return fr.frame(fr.HEADERS, flags, sid, enc.encode(CONNECT if fields is None else fields))


def data(sid: int, payload: bytes = b"x", flags: int = 0) -> bytes:
    return fr.frame(fr.DATA, flags, sid, payload)


def u32(value: int) -> bytes:
    return struct.pack(">L", value)


def setting(key: int, value: int) -> bytes:
    return fr.settings_frame([(key, value)])


@dataclass(frozen=True)
class Case:
    build: Build
    code: int
    stream: int | None  # None: connection error
    config: H2Config | None = None
    reset_event: bool = True  # False: the stream was never surfaced or already gone, so only RST_STREAM


def malformed(extra: list[tuple[bytes, bytes]], base: list[tuple[bytes, bytes]] | None = None) -> Case:
    """A request head that breaks RFC 9113 section 8: RST_STREAM PROTOCOL_ERROR, never surfaced."""
    fields = (CONNECT if base is None else base) + extra
    return Case(lambda s, e: hdrs(e, 1, fields), E.PROTOCOL_ERROR, 1, reset_event=False)


def _closed_normally(s: Http2Engine, enc: Encoder) -> bytes:
    s.receive_data(hdrs(enc, 1, flags=fr.END_HEADERS | fr.END_STREAM))
    s.send_response(1, 200, end_stream=True)
    return data(1)


def _headers_after_close(s: Http2Engine, enc: Encoder) -> bytes:
    _closed_normally(s, enc)
    return hdrs(enc, 1, [], flags=fr.END_HEADERS | fr.END_STREAM)


def _after_peer_reset(s: Http2Engine, enc: Encoder) -> bytes:
    s.receive_data(hdrs(enc, 1) + fr.rst_stream_frame(1, E.CANCEL))
    return hdrs(enc, 1, [], flags=fr.END_HEADERS | fr.END_STREAM)


SERVER_CASES: dict[str, Case] = {
    "DATA on stream 0": Case(lambda s, e: data(0), E.PROTOCOL_ERROR, None),
    "DATA on an idle stream": Case(lambda s, e: data(3), E.PROTOCOL_ERROR, None),
    "DATA after END_STREAM": Case(
        lambda s, e: hdrs(e, 1, flags=fr.END_HEADERS | fr.END_STREAM) + data(1), E.STREAM_CLOSED, 1
    ),
    "DATA on a stream closed normally": Case(_closed_normally, E.STREAM_CLOSED, 1, reset_event=False),
    "DATA beyond the stream window": Case(
        lambda s, e: hdrs(e, 1) + data(1, b"x" * 2000),
        E.FLOW_CONTROL_ERROR,
        1,
        H2Config(initial_window_size=1000),
    ),
    "DATA beyond the connection window": Case(
        lambda s, e: hdrs(e, 1) + hdrs(e, 3) + data(1, b"x" * 40_000) + data(3, b"x" * 40_000),
        E.FLOW_CONTROL_ERROR,
        None,
        H2Config(initial_window_size=65_535, connection_window_size=65_535),
    ),
    "DATA padding longer than the frame": Case(
        lambda s, e: hdrs(e, 1) + fr.frame(fr.DATA, fr.PADDED, 1, b"\x05abc"), E.PROTOCOL_ERROR, None
    ),
    "DATA before the request": Case(lambda s, e: hdrs(e, 1) + data(2), E.PROTOCOL_ERROR, None),
    "HEADERS on stream 0": Case(lambda s, e: hdrs(e, 0), E.PROTOCOL_ERROR, None),
    "HEADERS on an even stream from a client": Case(lambda s, e: hdrs(e, 2), E.PROTOCOL_ERROR, None),
    "HEADERS with a lower stream id": Case(lambda s, e: hdrs(e, 5) + hdrs(e, 3), E.PROTOCOL_ERROR, None),
    "HEADERS after END_STREAM": Case(
        lambda s, e: (
            hdrs(e, 1, flags=fr.END_HEADERS | fr.END_STREAM)
            + hdrs(e, 1, [], flags=fr.END_HEADERS | fr.END_STREAM)
        ),
        E.STREAM_CLOSED,
        1,
    ),
    "HEADERS on a stream closed normally": Case(_headers_after_close, E.STREAM_CLOSED, None),
    "padded HEADERS without a pad length": Case(
        lambda s, e: fr.frame(fr.HEADERS, fr.END_HEADERS | fr.PADDED, 1, b""), E.FRAME_SIZE_ERROR, None
    ),
    "GET without :path": malformed([(b":scheme", b"https")], [(b":method", b"GET"), (b":authority", b"a")]),
    "HEADERS after the peer reset the stream": Case(_after_peer_reset, E.STREAM_CLOSED, 1, reset_event=False),
    "HEADERS padding longer than the frame": Case(
        lambda s, e: fr.frame(fr.HEADERS, fr.END_HEADERS | fr.PADDED, 1, b"\xff" + e.encode(CONNECT)),
        E.PROTOCOL_ERROR,
        None,
    ),
    "trailers without END_STREAM": Case(lambda s, e: hdrs(e, 1) + hdrs(e, 1, []), E.PROTOCOL_ERROR, 1),
    "trailers with a pseudo-header": Case(
        lambda s, e: hdrs(e, 1) + hdrs(e, 1, [(b":path", b"/")], flags=fr.END_HEADERS | fr.END_STREAM),
        E.PROTOCOL_ERROR,
        1,
    ),
    "request with an uppercase header name": malformed([(b"X-Up", b"1")]),
    "CONNECT with :path": malformed([(b":path", b"/")]),
    "CONNECT with :scheme": malformed([(b":scheme", b"https")]),
    "request without :method": malformed([(b":authority", b"a:1")], []),
    "unknown pseudo-header": malformed([(b":protocol", b"ws")]),
    "response pseudo-header in a request": malformed([(b":status", b"200")]),
    "duplicate :authority": malformed([(b":authority", b"10.0.0.2:80")]),
    "pseudo-header after a regular one": malformed(
        [(b":method", b"CONNECT"), (b"x", b"1"), (b":authority", b"a:1")], []
    ),
    "connection header": malformed([(b"connection", b"close")]),
    "keep-alive header": malformed([(b"keep-alive", b"5")]),
    "transfer-encoding header": malformed([(b"transfer-encoding", b"chunked")]),
    "upgrade header": malformed([(b"upgrade", b"h2c")]),
    "proxy-connection header": malformed([(b"proxy-connection", b"x")]),
    "te other than trailers": malformed([(b"te", b"gzip")]),
    "LF in a header value": malformed([(b"x", b"a\nb")]),
    "CR in a header value": malformed([(b"x", b"a\rb")]),
    "NUL in a header value": malformed([(b"x", b"a\x00b")]),
    "NUL in a header name": malformed([(b"x\x00", b"1")]),
    "LF in :authority": malformed([(b":method", b"CONNECT"), (b":authority", b"a\n:1")], []),
    "empty header name": malformed([(b"", b"1")]),
    "CONTINUATION without HEADERS": Case(
        lambda s, e: fr.frame(fr.CONTINUATION, fr.END_HEADERS, 1, b""), E.PROTOCOL_ERROR, None
    ),
    "frame between HEADERS and CONTINUATION": Case(
        lambda s, e: hdrs(e, 1, flags=0) + fr.ping_frame(b"12345678"), E.PROTOCOL_ERROR, None
    ),
    "CONTINUATION on another stream": Case(
        lambda s, e: hdrs(e, 1, flags=0) + fr.frame(fr.CONTINUATION, fr.END_HEADERS, 3, b""),
        E.PROTOCOL_ERROR,
        None,
    ),
    "undecodable HPACK": Case(
        lambda s, e: fr.frame(fr.HEADERS, fr.END_HEADERS, 1, b"\xff\xff\xff\xff"), E.COMPRESSION_ERROR, None
    ),
    "HPACK table size above our setting": Case(
        lambda s, e: fr.frame(fr.HEADERS, fr.END_HEADERS, 1, b"\x3f\xe1\x7f" + e.encode(CONNECT)),
        E.COMPRESSION_ERROR,
        None,
    ),
    "SETTINGS on a stream": Case(lambda s, e: fr.frame(fr.SETTINGS, 0, 1, b""), E.PROTOCOL_ERROR, None),
    "SETTINGS length not a multiple of 6": Case(
        lambda s, e: fr.frame(fr.SETTINGS, 0, 0, b"12345"), E.FRAME_SIZE_ERROR, None
    ),
    "SETTINGS ACK with a payload": Case(
        lambda s, e: fr.frame(fr.SETTINGS, fr.ACK, 0, b"123456"), E.FRAME_SIZE_ERROR, None
    ),
    "SETTINGS_INITIAL_WINDOW_SIZE too large": Case(
        lambda s, e: setting(fr.SETTINGS_INITIAL_WINDOW_SIZE, 2**31), E.FLOW_CONTROL_ERROR, None
    ),
    "SETTINGS window change overflows a stream": Case(
        lambda s, e: (
            hdrs(e, 1)
            + fr.window_update_frame(1, 2**31 - 1 - 65_535)
            + setting(fr.SETTINGS_INITIAL_WINDOW_SIZE, 65_536)
        ),
        E.FLOW_CONTROL_ERROR,
        None,
    ),
    "SETTINGS_MAX_FRAME_SIZE too small": Case(
        lambda s, e: setting(fr.SETTINGS_MAX_FRAME_SIZE, 100), E.PROTOCOL_ERROR, None
    ),
    "SETTINGS_MAX_FRAME_SIZE too large": Case(
        lambda s, e: setting(fr.SETTINGS_MAX_FRAME_SIZE, 2**24), E.PROTOCOL_ERROR, None
    ),
    "SETTINGS_ENABLE_PUSH 2": Case(lambda s, e: setting(fr.SETTINGS_ENABLE_PUSH, 2), E.PROTOCOL_ERROR, None),
    "PING of 7 bytes": Case(lambda s, e: fr.frame(fr.PING, 0, 0, b"1234567"), E.FRAME_SIZE_ERROR, None),
    "PING on a stream": Case(lambda s, e: fr.frame(fr.PING, 0, 1, b"12345678"), E.PROTOCOL_ERROR, None),
    "WINDOW_UPDATE of 3 bytes": Case(
        lambda s, e: fr.frame(fr.WINDOW_UPDATE, 0, 0, b"123"), E.FRAME_SIZE_ERROR, None
    ),
    "connection WINDOW_UPDATE of 0": Case(lambda s, e: fr.window_update_frame(0, 0), E.PROTOCOL_ERROR, None),
    "stream WINDOW_UPDATE of 0": Case(
        lambda s, e: hdrs(e, 1) + fr.window_update_frame(1, 0), E.PROTOCOL_ERROR, 1
    ),
    "connection window overflow": Case(
        lambda s, e: fr.window_update_frame(0, 2**31 - 1), E.FLOW_CONTROL_ERROR, None
    ),
    "stream window overflow": Case(
        lambda s, e: hdrs(e, 1) + fr.window_update_frame(1, 2**31 - 1), E.FLOW_CONTROL_ERROR, 1
    ),
    "WINDOW_UPDATE on an idle stream": Case(
        lambda s, e: fr.window_update_frame(7, 1), E.PROTOCOL_ERROR, None
    ),
    "RST_STREAM on stream 0": Case(lambda s, e: fr.rst_stream_frame(0, 0), E.PROTOCOL_ERROR, None),
    "RST_STREAM on an idle stream": Case(lambda s, e: fr.rst_stream_frame(9, 0), E.PROTOCOL_ERROR, None),
    "RST_STREAM of 3 bytes": Case(
        lambda s, e: hdrs(e, 1) + fr.frame(fr.RST_STREAM, 0, 1, b"123"), E.FRAME_SIZE_ERROR, None
    ),
    "PRIORITY on stream 0": Case(lambda s, e: fr.frame(fr.PRIORITY, 0, 0, b"12345"), E.PROTOCOL_ERROR, None),
    "PRIORITY of 4 bytes on an open stream": Case(
        lambda s, e: hdrs(e, 1) + fr.frame(fr.PRIORITY, 0, 1, b"1234"), E.FRAME_SIZE_ERROR, 1
    ),
    "PUSH_PROMISE from a client": Case(
        lambda s, e: fr.frame(fr.PUSH_PROMISE, fr.END_HEADERS, 1, u32(2)), E.PROTOCOL_ERROR, None
    ),
    "GOAWAY on a stream": Case(
        lambda s, e: fr.frame(fr.GOAWAY, 0, 1, u32(0) + u32(0)), E.PROTOCOL_ERROR, None
    ),
    "GOAWAY of 4 bytes": Case(lambda s, e: fr.frame(fr.GOAWAY, 0, 0, u32(0)), E.FRAME_SIZE_ERROR, None),
    "frame above our max frame size": Case(
        lambda s, e: fr.frame(fr.PING, 0, 0, b"x" * 20_000),
        E.FRAME_SIZE_ERROR,
        None,
        H2Config(max_frame_size=16_384),
    ),
}


def _assert_outcome(conn: Http2Engine, events: Sequence[object], case: Case) -> None:
    out = frame_list(conn.data_to_send())
    if case.stream is None:
        assert conn.terminated
        assert isinstance(events[-1], ConnectionTerminated)
        assert (events[-1].error_code, events[-1].remote) == (case.code, False)
        goaways = [f for f in out if f[0] == fr.GOAWAY]
        assert len(goaways) == 1
        assert conn.receive_data(fr.ping_frame(b"12345678")) == []
        return
    assert not conn.terminated
    assert not any(isinstance(e, ConnectionTerminated) for e in events)
    assert (fr.RST_STREAM, 0, case.stream, 4) in out
    resets = [e for e in events if isinstance(e, StreamReset)]
    assert all(r == StreamReset(case.stream, case.code, remote=False) for r in resets)
    assert conn.open_streams == 0


@pytest.mark.parametrize("name", SERVER_CASES)
def test_server_answers_protocol_violations_as_the_rfc_says(name: str) -> None:
    case = SERVER_CASES[name]
    server = raw_server(case.config)
    wire = case.build(server, Encoder())
    server.data_to_send()
    events = server.receive_data(wire)
    _assert_outcome(server, events, case)
    if case.stream is not None:
        assert any(isinstance(e, StreamReset) for e in events) == case.reset_event


def _response(
    enc: Encoder, sid: int, fields: list[tuple[bytes, bytes]], flags: int = fr.END_HEADERS
) -> bytes:
    return fr.frame(fr.HEADERS, flags, sid, enc.encode(fields))


CLIENT_CASES: dict[str, Case] = {
    "PUSH_PROMISE to a client": Case(
        lambda c, e: fr.frame(fr.PUSH_PROMISE, fr.END_HEADERS, 1, u32(2)), E.PROTOCOL_ERROR, None
    ),
    "server opens a stream": Case(
        lambda c, e: _response(e, 2, [(b":status", b"200")]), E.PROTOCOL_ERROR, None
    ),
    "HEADERS on a stream we never opened": Case(
        lambda c, e: _response(e, 3, [(b":status", b"200")]), E.PROTOCOL_ERROR, None
    ),
    "SETTINGS_ENABLE_PUSH 1 from a server": Case(
        lambda c, e: setting(fr.SETTINGS_ENABLE_PUSH, 1), E.PROTOCOL_ERROR, None
    ),
    "response without :status": Case(lambda c, e: _response(e, 1, [(b"x", b"1")]), E.PROTOCOL_ERROR, 1),
    "response :status 101": Case(lambda c, e: _response(e, 1, [(b":status", b"101")]), E.PROTOCOL_ERROR, 1),
    "response :status not three digits": Case(
        lambda c, e: _response(e, 1, [(b":status", b"20")]), E.PROTOCOL_ERROR, 1
    ),
    "request pseudo-header in a response": Case(
        lambda c, e: _response(e, 1, [(b":status", b"200"), (b":path", b"/")]), E.PROTOCOL_ERROR, 1
    ),
    "DATA before the response": Case(lambda c, e: data(1), E.PROTOCOL_ERROR, 1),
    "informational response with END_STREAM": Case(
        lambda c, e: _response(e, 1, [(b":status", b"100")], fr.END_HEADERS | fr.END_STREAM),
        E.PROTOCOL_ERROR,
        1,
    ),
}


@pytest.mark.parametrize("name", CLIENT_CASES)
def test_client_answers_protocol_violations_as_the_rfc_says(name: str) -> None:
    case = CLIENT_CASES[name]
    client, _ = raw_client()
    events = client.receive_data(case.build(client, Encoder()))
    _assert_outcome(client, events, case)


@pytest.mark.parametrize(
    ("wire", "what"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 instead of the preface"),
        (fr.CONNECTION_PREFACE + fr.ping_frame(b"12345678"), "first frame not SETTINGS"),
        (fr.CONNECTION_PREFACE + fr.settings_frame(ack=True), "first frame a SETTINGS ACK"),
    ],
)
def test_a_bad_connection_preface_is_a_connection_error(wire: bytes, what: str) -> None:
    server = ours(client_side=False)
    server.data_to_send()
    events = [e for i in range(0, len(wire), 5) for e in server.receive_data(wire[i : i + 5])]
    assert len(events) == 1 and isinstance(events[0], ConnectionTerminated)
    assert (events[0].error_code, events[0].last_stream_id, events[0].remote) == (E.PROTOCOL_ERROR, 0, False)
    assert [f[0] for f in frame_list(server.data_to_send())] == [fr.GOAWAY], what


def test_frames_we_ignore_change_nothing() -> None:
    server = raw_server()
    enc = Encoder()
    wire = (
        fr.frame(0xFA, 0xFF, 0, b"unknown type on stream 0")
        + fr.frame(0x42, 0, 1, b"unknown type on an idle stream")
        + fr.frame(fr.PRIORITY, 0, 1, b"\x00\x00\x00\x03\x10")  # PRIORITY on an idle stream is allowed
        + hdrs(enc, 1)
        + fr.frame(fr.PRIORITY, 0, 1, b"\x00\x00\x00\x00\x10")
        + setting(0x99, 12345)  # unknown setting
        + fr.frame(
            fr.HEADERS,
            fr.END_HEADERS | fr.PRIORITY_FLAG | fr.PADDED,
            3,
            b"\x02" + b"\x00\x00\x00\x01\x10" + enc.encode(CONNECT) + b"\x00\x00",
        )
    )
    events = server.receive_data(wire)
    assert [type(e).__name__ for e in events] == ["ConnectRequest", "ConnectRequest"]
    assert not server.terminated and server.open_streams == 2
    assert [f[0] for f in frame_list(server.data_to_send())] == [fr.SETTINGS]  # just the ACK
