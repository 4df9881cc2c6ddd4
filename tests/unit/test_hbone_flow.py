"""Flow control and the DATA hot path: stalls and resumes, batching, frame sizes, padding, zero-copy."""

from __future__ import annotations

from typing import Any

import h2.events
import h2.exceptions
import h2.settings
import pytest

from mesh.h2 import DataReceived, H2Config, H2UsageError, Http2Engine, WindowUpdated
from mesh.h2 import frames as fr
from tests.unit.test_hbone_link import Link, frame_list, h2_peer, open_tunnel, ours, payload_by_stream

KiB, MiB = 1024, 2**20


def _pair(server_config: H2Config | None = None) -> tuple[Link, Http2Engine, Http2Engine, int]:
    client, server = ours(client_side=True), ours(client_side=False, config=server_config)
    link = Link(client, server)
    sid = open_tunnel(link, "10.0.0.1:80")
    link.take("client"), link.take("server")
    return link, client, server, sid


def _deliver(src: Http2Engine, dst: Http2Engine) -> list[Any]:
    """One hop without acknowledging anything (the consumer is slow)."""
    return dst.receive_data(src.data_to_send())


def test_send_data_stalls_at_the_stream_window_and_resumes_on_window_update() -> None:
    _, client, server, sid = _pair(H2Config(initial_window_size=100_000))
    assert client.send_window(sid) == 100_000
    assert client.send_data(sid, b"a" * 300_000) == 100_000
    assert client.send_window(sid) == 0
    assert client.send_data(sid, b"a" * 200_000) == 0
    got = _deliver(client, server)
    assert sum(e.flow_controlled_length for e in got if isinstance(e, DataReceived)) == 100_000
    server.acknowledge_received_data(sid, 10_000)  # below a quarter of the window: batched
    assert client.receive_data(server.data_to_send()) == []
    server.acknowledge_received_data(sid, 20_000)
    events = client.receive_data(server.data_to_send())
    assert WindowUpdated(sid, 30_000) in events
    assert client.send_data(sid, b"a" * 200_000) == 30_000


def test_connection_window_is_shared_by_streams() -> None:
    cfg = H2Config(initial_window_size=65_535, connection_window_size=65_535)
    link, client, server, sid1 = _pair(cfg)
    sid2 = open_tunnel(link, "10.0.0.2:80")
    assert client.send_data(sid1, b"x" * 65_535) == 65_535
    assert client.send_window(sid2) == 0
    assert client.send_data(sid2, b"y" * 10) == 0
    got = _deliver(client, server)
    server.acknowledge_received_data(sid1, sum(len(e.data) for e in got if isinstance(e, DataReceived)))
    events = client.receive_data(server.data_to_send())
    assert any(isinstance(e, WindowUpdated) and e.stream_id == 0 for e in events)
    assert client.send_data(sid2, b"y" * 10) == 10


def test_a_consumer_that_never_acknowledges_bounds_what_the_peer_can_send() -> None:
    _, client, server, sid = _pair()
    sent = 0
    for _ in range(10):
        sent += client.send_data(sid, b"z" * MiB)
        _deliver(client, server)
        client.receive_data(server.data_to_send())
    assert sent == H2Config().initial_window_size == 4 * MiB


def test_acknowledging_more_than_was_delivered_is_a_usage_error() -> None:
    _, client, server, sid = _pair()
    client.send_data(sid, b"q" * 100)
    _deliver(client, server)
    with pytest.raises(H2UsageError, match="unacknowledged"):
        server.acknowledge_received_data(sid, 101)
    server.acknowledge_received_data(sid, 100)


def test_our_frames_are_as_large_as_the_peer_allows() -> None:
    _, client, _, sid = _pair()
    assert client.send_data(sid, b"b" * (3 * MiB + 5)) == 3 * MiB + 5
    assert [n for t, _, s, n in frame_list(client.data_to_send()) if t == fr.DATA] == [MiB, MiB, MiB, 5]


def test_frames_are_split_at_the_h2_peer_default_max_frame_size() -> None:
    link = Link(ours(client_side=True), h2_peer(client_side=False, max_frame=16_384))
    sid = open_tunnel(link, "10.0.0.1:80")
    client = link.client
    assert isinstance(client, Http2Engine)
    assert client.send_data(sid, b"c" * 40_000) == 40_000
    assert [n for t, _, _, n in frame_list(client.data_to_send()) if t == fr.DATA] == [16_384, 16_384, 7_232]


def test_peer_settings_change_the_send_window_of_open_streams() -> None:
    link = Link(ours(client_side=True), h2_peer(client_side=False, window=65_535))
    sid = open_tunnel(link, "10.0.0.1:80")
    client, server = link.client, link.server
    assert isinstance(client, Http2Engine)
    assert client.send_window(sid) == 65_535
    server.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1_000_000})  # type: ignore[attr-defined]
    link.pump()
    assert WindowUpdated(sid, 1_000_000 - 65_535) in link.take("client")
    assert client.send_window(sid) == 1_000_000
    server.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 10})  # type: ignore[attr-defined]
    link.pump()
    assert client.send_window(sid) == 10
    assert client.send_data(sid, b"d" * 100) == 10


def test_padded_data_from_h2_is_delivered_without_padding_and_credit_comes_back() -> None:
    link = Link(h2_peer(client_side=True), ours(client_side=False))
    sid = open_tunnel(link, "10.0.0.1:80")
    client: Any = link.client
    window = client.local_flow_control_window(sid)
    for i in range(40):
        client.send_data(sid, bytes([i]) * 1000, pad_length=200)
    link.pump()
    got = link.take("server")
    assert payload_by_stream(got) == {sid: b"".join(bytes([i]) * 1000 for i in range(40))}
    assert sum(e.flow_controlled_length for e in got if isinstance(e, DataReceived)) == 40_000
    threshold = H2Config().initial_window_size // 4
    assert client.local_flow_control_window(sid) > window - threshold


def test_data_payloads_are_views_of_the_received_buffer() -> None:
    _, client, server, sid = _pair()
    client.send_data(sid, b"v" * 500_000)
    wire = client.data_to_send()
    events = server.receive_data(wire)
    data = [e for e in events if isinstance(e, DataReceived)]
    assert len(data) == 1 and isinstance(data[0].data, memoryview) and data[0].data.obj is wire
    client.send_data(sid, b"w" * 500_000)
    wire = client.data_to_send()
    pieces = [wire[i : i + 65_536] for i in range(0, len(wire), 65_536)]
    views = [e.data for p in pieces for e in server.receive_data(p) if isinstance(e, DataReceived)]
    assert [v.obj for v in views if isinstance(v, memoryview)] == pieces
    assert b"".join(bytes(v) for v in views) == b"w" * 500_000


def test_peer_data_frames_arriving_in_one_byte_pieces_are_reassembled() -> None:
    _, client, server, sid = _pair()
    client.send_data(sid, bytes(range(256)) * 8, end_stream=True)
    wire = client.data_to_send()
    events = [e for i in range(len(wire)) for e in server.receive_data(wire[i : i + 1])]
    assert b"".join(bytes(e.data) for e in events if isinstance(e, DataReceived)) == bytes(range(256)) * 8
    assert server.open_streams == 1  # half-closed (remote): our side is still open


def test_h2_client_data_respects_our_advertised_windows() -> None:
    link = Link(
        h2_peer(client_side=True), ours(client_side=False, config=H2Config(initial_window_size=70_000))
    )
    sid = open_tunnel(link, "10.0.0.1:80")
    client: Any = link.client
    assert client.local_flow_control_window(sid) == 70_000
    client.send_data(sid, b"e" * 70_000)
    with pytest.raises(h2.exceptions.FlowControlError):
        client.send_data(sid, b"e")


def test_outbound_pieces_reference_the_payload_without_copying() -> None:
    _, client, server, sid = _pair()
    payload = b"p" * 200_000
    client.send_data(sid, payload)
    pieces = client.data_to_send_pieces()
    assert any(isinstance(p, memoryview) and p.obj is payload for p in pieces)
    assert client.bytes_to_send_pending() == 0 and client.data_to_send() == b""
    events = server.receive_data(b"".join(pieces))
    assert b"".join(bytes(e.data) for e in events if isinstance(e, DataReceived)) == payload


def test_mutable_payloads_are_copied_when_queued() -> None:
    _, client, server, sid = _pair()
    buffer = bytearray(b"before")
    client.send_data(sid, buffer)
    buffer[:] = b"after!"
    events = server.receive_data(client.data_to_send())
    assert [bytes(e.data) for e in events if isinstance(e, DataReceived)] == [b"before"]


def test_frame_data_is_the_frame_send_data_would_queue_with_the_same_window_debits() -> None:
    _, client, server, sid = _pair()
    _, twin, _, twin_sid = _pair()
    frame = client.frame_data(sid, memoryview(b"ping" * 25))
    twin.send_data(twin_sid, b"ping" * 25)
    assert frame == twin.data_to_send()
    assert client.send_window(sid) == twin.send_window(twin_sid)
    events = server.receive_data(frame)
    assert [bytes(e.data) for e in events if isinstance(e, DataReceived)] == [b"ping" * 25]


@pytest.mark.parametrize(
    "case",
    ["output queued", "empty", "over the stream window", "over the frame size", "stream ended", "unknown"],
)
def test_frame_data_declines_what_only_send_data_can_do_and_takes_nothing(case: str) -> None:
    _, client, _, sid = _pair(H2Config(initial_window_size=1000))
    data = b"x" * 100
    if case == "output queued":
        client.ping(b"12345678")
    elif case == "empty":
        data = b""
    elif case == "over the stream window":
        data = b"x" * 1001
    elif case == "over the frame size":
        client._peer_max_frame = 50
    elif case == "stream ended":
        client.end_stream(sid)
    elif case == "unknown":
        sid += 2
    window = client.send_window(sid)
    queued = client.bytes_to_send_pending()
    assert client.frame_data(sid, data) == b""
    assert client.send_window(sid) == window and client.bytes_to_send_pending() == queued


def _state(conn: Http2Engine, sid: int) -> tuple[int, ...]:
    stream = conn._streams[sid]
    return (conn._recv_conn_window, conn._conn_unacked, stream.recv_window, stream.recv_unacked)


def test_a_lone_data_frame_is_taken_as_receive_data_would_take_it() -> None:
    _, client, server, sid = _pair()
    _, twin_client, twin, twin_sid = _pair()
    client.send_data(sid, b"hello")
    twin_client.send_data(twin_sid, b"hello")
    wire = memoryview(client.data_to_send())
    assert server.receive_data_frame(wire) == sid
    events = twin.receive_data(twin_client.data_to_send())
    assert events == [DataReceived(twin_sid, memoryview(b"hello"), 5)]
    assert _state(server, sid) == _state(twin, twin_sid)
    server.acknowledge_received_data(sid, 5)  # counted as delivered, so it can be acknowledged


@pytest.mark.parametrize(
    "case", ["two frames", "partial frame", "end of stream", "padded", "ping", "unknown stream", "empty"]
)
def test_anything_but_one_plain_data_frame_is_left_to_receive_data(case: str) -> None:
    _, client, server, sid = _pair()
    if case == "two frames":
        client.send_data(sid, b"a")
        client.send_data(sid, b"b")
    elif case == "partial frame":
        client.send_data(sid, b"abcdef")
    elif case == "end of stream":
        client.send_data(sid, b"a", end_stream=True)
    elif case == "ping":
        client.ping(b"12345678")
    wire = client.data_to_send()
    if case == "partial frame":
        wire = wire[:-2]
    elif case == "padded":
        wire = fr.FRAME_HEADER.pack(0, 3, fr.DATA, fr.PADDED, sid) + b"\x01a\x00"
    elif case == "unknown stream":
        wire = fr.FRAME_HEADER.pack(0, 1, fr.DATA, 0, sid + 2) + b"a"
    before = _state(server, sid)
    assert server.receive_data_frame(memoryview(wire)) == 0
    assert _state(server, sid) == before


def test_queue_small_data_queues_one_frame_behind_what_is_queued() -> None:
    _, client, server, sid = _pair()
    client.ping(b"12345678")
    assert client.frame_data(sid, b"x") == b""  # something is queued: frame_data declines
    assert client.queue_small_data(sid, bytearray(b"hello"))
    assert client.queue_small_data(sid, b" world")
    wire = client.data_to_send()
    assert wire.index(b"12345678") < wire.index(b"hello")
    events = server.receive_data(wire)
    assert b"".join(bytes(e.data) for e in events if isinstance(e, DataReceived)) == b"hello world"


def test_queue_small_data_declines_what_does_not_fit_and_takes_nothing() -> None:
    _, client, _, sid = _pair(H2Config(initial_window_size=1000))
    assert not client.queue_small_data(sid, b"x" * 1001)
    assert not client.queue_small_data(sid, b"")
    assert client.send_window(sid) == 1000 and client.bytes_to_send_pending() == 0
