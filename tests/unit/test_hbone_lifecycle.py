"""Connection and stream lifecycle: PING, GOAWAY (graceful and not), resets, requests we do not serve,
trailers, and how the API refuses misuse."""

from __future__ import annotations

from typing import Any

import h2.events
import pytest
from hpack import Encoder

from mesh.h2 import (
    ConnectionTerminated,
    ConnectRequest,
    DataReceived,
    ErrorCode,
    H2Config,
    H2StreamClosedError,
    H2StreamLimitError,
    H2UsageError,
    Http2Engine,
    InvalidRequest,
    PingAcked,
    Response,
    SettingsAcknowledged,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from mesh.h2 import frames as fr
from tests.unit.test_hbone_errors import CONNECT, hdrs, raw_server
from tests.unit.test_hbone_link import Link, frame_list, h2_peer, open_tunnel, ours, payload_by_stream


def _pair(server_config: H2Config | None = None) -> tuple[Link, Http2Engine, Http2Engine]:
    client, server = ours(client_side=True), ours(client_side=False, config=server_config)
    return Link(client, server), client, server


def test_ping_is_answered_in_both_directions() -> None:
    link, client, server = _pair()
    client.ping(b"c-ping-1")
    server.ping(b"s-ping-1")
    link.pump()
    assert PingAcked(b"c-ping-1") in link.take("client")
    assert PingAcked(b"s-ping-1") in link.take("server")


def test_h2_library_pings_are_answered() -> None:
    link = Link(h2_peer(client_side=True), ours(client_side=False))
    peer: Any = link.client
    peer.ping(b"h2-ping!")
    link.pump()
    acks = [e for e in link.take("client") if isinstance(e, h2.events.PingAckReceived)]
    assert [a.ping_data for a in acks] == [b"h2-ping!"]


def test_graceful_goaway_lets_open_streams_finish_and_refuses_new_ones() -> None:
    link, client, server = _pair()
    sid = open_tunnel(link, "10.0.0.1:80")
    server.close()
    link.pump()
    assert ConnectionTerminated(ErrorCode.NO_ERROR, sid, remote=True) in link.take("client")
    assert client.goaway_received and server.goaway_sent and not server.terminated
    with pytest.raises(H2StreamLimitError):
        client.send_connect("10.0.0.2:80")
    client.send_data(sid, b"still flowing", end_stream=True)
    server.send_data(sid, b"and back", end_stream=True)
    link.pump()
    assert payload_by_stream(link.take("server")) == {sid: b"still flowing"}
    assert payload_by_stream(link.take("client")) == {sid: b"and back"}
    assert client.open_streams == server.open_streams == 0
    late = server.receive_data(hdrs(Encoder(), sid + 2))  # a stream the peer opened after our GOAWAY
    assert late == []
    assert [(f[0], f[2]) for f in frame_list(server.data_to_send())] == [(fr.RST_STREAM, sid + 2)]


def test_goaway_below_our_streams_reports_them_refused() -> None:
    link, client, server = _pair()
    sids = [open_tunnel(link, f"10.0.0.{i}:80") for i in range(3)]
    link.take("client")
    server.close(last_stream_id=sids[0])
    link.pump()
    events = link.take("client")
    assert ConnectionTerminated(ErrorCode.NO_ERROR, sids[0], remote=True) in events
    assert [e for e in events if isinstance(e, StreamReset)] == [
        StreamReset(s, ErrorCode.REFUSED_STREAM, remote=True) for s in sids[1:]
    ]
    assert client.open_streams == 1


def test_h2_library_goaway_reaches_our_client() -> None:
    link = Link(ours(client_side=True), h2_peer(client_side=False))
    open_tunnel(link, "10.0.0.1:80")
    peer: Any = link.server
    peer.close_connection(error_code=ErrorCode.ENHANCE_YOUR_CALM, additional_data=b"bye")
    link.pump()
    assert ConnectionTerminated(
        ErrorCode.ENHANCE_YOUR_CALM, 1, remote=True, additional_data=b"bye"
    ) in link.take("client")


def test_close_with_an_error_ends_the_connection() -> None:
    link, client, _ = _pair()
    sid = open_tunnel(link, "10.0.0.1:80")
    client.close(ErrorCode.INTERNAL_ERROR)
    assert client.terminated and client.goaway_sent
    with pytest.raises(H2StreamClosedError):
        client.send_data(sid, b"x")
    assert client.receive_data(fr.ping_frame(b"ignored!")) == []
    link.pump()
    assert ConnectionTerminated(ErrorCode.INTERNAL_ERROR, 0, remote=True) in link.take("server")


def test_local_reset_reaches_the_peer_and_late_data_is_dropped_with_its_credit_returned() -> None:
    link, client, server = _pair(H2Config(connection_window_size=100_000))
    sid = open_tunnel(link, "10.0.0.1:80")
    assert client.send_data(sid, b"x" * 60_000) == 60_000
    in_flight = client.data_to_send()
    server.reset_stream(sid)
    server.reset_stream(sid)  # already closed: a no-op
    assert server.receive_data(in_flight) == []
    to_client = server.data_to_send()
    assert [f[0] for f in frame_list(to_client)] == [fr.RST_STREAM, fr.WINDOW_UPDATE]
    events = client.receive_data(to_client)
    assert events[0] == StreamReset(sid, ErrorCode.CANCEL, remote=True)
    assert isinstance(events[1], WindowUpdated) and events[1].stream_id == 0
    with pytest.raises(H2StreamClosedError):
        client.send_data(sid, b"more")


def test_a_reset_in_the_middle_of_a_frame_drops_the_rest_of_it() -> None:
    link, client, server = _pair()
    sid = open_tunnel(link, "10.0.0.1:80")
    client.send_data(sid, b"y" * 500_000)
    wire = client.data_to_send()
    first = server.receive_data(wire[:100_000])
    assert sum(len(e.data) for e in first if isinstance(e, DataReceived)) == 100_000 - 9
    server.reset_stream(sid, ErrorCode.CONNECT_ERROR)
    assert server.receive_data(wire[100_000:]) == []
    assert not server.terminated


def test_reset_stream_on_a_stream_never_opened_is_an_error() -> None:
    _, client, _ = _pair()
    with pytest.raises(H2StreamClosedError, match="never opened"):
        client.reset_stream(5)


def test_requests_that_are_not_connect_are_surfaced_for_a_400() -> None:
    link = Link(h2_peer(client_side=True), ours(client_side=False))
    peer: Any = link.client
    peer.send_headers(
        1, [(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", "a")], end_stream=True
    )
    link.pump()
    events = [e for e in link.take("server") if isinstance(e, (InvalidRequest, StreamEnded))]
    assert events == [InvalidRequest(1, "GET", "method GET is not CONNECT", ()), StreamEnded(1)]
    server = link.server
    assert isinstance(server, Http2Engine)
    server.send_response(1, 400, end_stream=True)
    link.pump()
    responses = [e for e in link.take("client") if isinstance(e, h2.events.ResponseReceived)]
    status: dict[Any, Any] = dict(responses[0].headers or [])
    assert status[":status"] == "400"
    assert server.open_streams == 0


def test_connect_without_authority_is_surfaced_for_a_400() -> None:
    server = raw_server()
    events = server.receive_data(hdrs(Encoder(), 1, [(b":method", b"CONNECT"), (b"x", b"y")]))
    assert events == [InvalidRequest(1, "CONNECT", "missing :authority", (("x", "y"),))]


def test_trailers_end_the_stream_and_te_trailers_is_allowed() -> None:
    server, enc = raw_server(), Encoder()
    events = server.receive_data(
        hdrs(enc, 1, [*CONNECT, (b"te", b"trailers")])
        + hdrs(enc, 1, [(b"x-t", b"1")], flags=fr.END_HEADERS | fr.END_STREAM)
    )
    assert events == [
        ConnectRequest(1, "10.0.0.1:80", (("te", "trailers"),)),
        TrailersReceived(1, (("x-t", "1"),)),
        StreamEnded(1),
    ]


def test_an_ordinary_request_gets_its_response_body_and_trailers_from_h2() -> None:
    link = Link(ours(client_side=True), h2_peer(client_side=False))
    client: Any = link.client
    sid = client.send_request(
        "POST", scheme="https", authority="istiod:15012", path="/pkg.Svc/Call", headers=[("te", "trailers")]
    )
    client.send_data(sid, b"\x00\x00\x00\x00\x02hi", end_stream=True)
    link.pump()
    peer: Any = link.server
    received = [e for e in link.take("server") if isinstance(e, h2.events.RequestReceived)]
    assert list(received[0].headers) == [  # type: ignore[comparison-overlap]  # h2 decodes to str here
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "istiod:15012"),
        (":path", "/pkg.Svc/Call"),
        ("te", "trailers"),
    ]
    peer.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
    peer.send_data(sid, b"answer")
    peer.send_headers(sid, [("grpc-status", "0")], end_stream=True)
    link.pump()
    events = [e for e in link.take("client") if not isinstance(e, WindowUpdated | SettingsAcknowledged)]
    assert [type(e) for e in events] == [Response, DataReceived, TrailersReceived, StreamEnded]
    assert events[0] == Response(sid, 200, (("content-type", "application/grpc"),))
    assert bytes(events[1].data) == b"answer"
    assert events[2] == TrailersReceived(sid, (("grpc-status", "0"),))


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"method": "CONNECT", "scheme": "https", "authority": "a:1", "path": "/"}, "CONNECT"),
        ({"method": "POST", "scheme": "ftp", "authority": "a:1", "path": "/"}, "scheme"),
        ({"method": "POST", "scheme": "https", "authority": "a:1", "path": "x"}, "path"),
        ({"method": "post", "scheme": "https", "authority": "a:1", "path": "/"}, "method"),
        ({"method": "POST", "scheme": "https", "authority": "a b", "path": "/"}, "authority"),
    ],
)
def test_send_request_refuses_what_is_not_an_ordinary_request(kwargs: dict[str, str], why: str) -> None:
    client: Any = ours(client_side=True)
    method = kwargs.pop("method")
    with pytest.raises(H2UsageError):
        client.send_request(method, **kwargs)
    assert client.open_streams == 0, why


def test_only_a_client_sends_requests() -> None:
    with pytest.raises(H2UsageError, match="only a client"):
        Http2Engine(client_side=False).send_request("POST", scheme="http", authority="a:1", path="/")


def test_informational_responses_are_skipped() -> None:
    link = Link(ours(client_side=True), h2_peer(client_side=False))
    client = link.client
    assert isinstance(client, Http2Engine)
    sid = client.send_connect("10.0.0.1:80")
    link.pump()
    peer: Any = link.server
    peer.send_headers(sid, [(":status", "100")])
    peer.send_headers(sid, [(":status", "200"), ("baggage", "a=b")])
    link.pump()
    assert [e for e in link.take("client") if isinstance(e, Response)] == [
        Response(sid, 200, (("baggage", "a=b"),))
    ]


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c, s: s.send_connect("10.0.0.1:80"), H2UsageError),
        (lambda c, s: c.send_response(1, 200), H2UsageError),
        (lambda c, s: c.send_connect("10.0.0.1:80", [("Upper", "x")]), H2UsageError),
        (lambda c, s: c.send_connect("10.0.0.1:80", [("connection", "close")]), H2UsageError),
        (lambda c, s: c.send_connect("10.0.0.1:80", [("x", "a\r\nb")]), H2UsageError),
        (lambda c, s: c.send_connect("bad authority"), H2UsageError),
        (lambda c, s: c.send_connect(""), H2UsageError),
        (lambda c, s: c.ping(b"short"), H2UsageError),
        (lambda c, s: c.send_data(1, b"x"), H2StreamClosedError),
        (lambda c, s: c.acknowledge_received_data(1, -1), H2UsageError),
    ],
)
def test_misuse_is_refused_with_a_typed_error(call: Any, error: type[Exception]) -> None:
    client, server = ours(client_side=True), ours(client_side=False)
    with pytest.raises(error):
        call(client, server)


def test_server_must_answer_before_sending_data_and_only_once() -> None:
    server = raw_server()
    server.receive_data(hdrs(Encoder(), 1))
    with pytest.raises(H2UsageError, match="send_response first"):
        server.send_data(1, b"x")
    with pytest.raises(H2UsageError, match="final status"):
        server.send_response(1, 101)
    server.send_response(1, 200)
    with pytest.raises(H2UsageError, match="already"):
        server.send_response(1, 200)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_input_may_be_any_byte_buffer(kind: Any) -> None:
    link, client, server = _pair()
    sid = open_tunnel(link, "10.0.0.1:80")
    client.send_data(sid, kind(b"buffer types"), end_stream=True)
    events = server.receive_data(kind(client.data_to_send()))
    assert b"".join(bytes(e.data) for e in events if isinstance(e, DataReceived)) == b"buffer types"


def test_late_headers_on_a_stream_we_reset_are_ignored() -> None:
    server, enc = raw_server(), Encoder()
    server.receive_data(hdrs(enc, 1))
    server.reset_stream(1)
    server.data_to_send()
    trailers = hdrs(enc, 1, [(b"x", b"1")], flags=fr.END_HEADERS | fr.END_STREAM)
    assert server.receive_data(trailers + fr.frame(fr.DATA, 0, 1, b"late")) == []
    assert server.data_to_send() == b"" and not server.terminated


def test_receive_data_before_initiate_connection_sends_our_preface_first() -> None:
    client = ours(client_side=True)
    server = Http2Engine(client_side=False)
    events = server.receive_data(client.data_to_send())
    assert not server.terminated and events
    assert frame_list(server.data_to_send())[0][0] == fr.SETTINGS


def test_padded_data_arriving_byte_by_byte_is_unpadded() -> None:
    server, enc = raw_server(), Encoder()
    wire = hdrs(enc, 1) + fr.frame(fr.DATA, fr.PADDED | fr.END_STREAM, 1, b"\x05" + b"payload" + b"\x00" * 5)
    events = [e for i in range(len(wire)) for e in server.receive_data(wire[i : i + 1])]
    assert b"".join(bytes(e.data) for e in events if isinstance(e, DataReceived)) == b"payload"
    assert events[-1] == StreamEnded(1)
