"""The engine's defences against abusive peers (reliability catalogue section B, tests 12-17)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Sequence

import pytest
from hpack import Encoder

from mesh.errors import ConfigError
from mesh.h2 import (
    ConnectionTerminated,
    ConnectRequest,
    ErrorCode,
    Event,
    H2Config,
    H2StreamLimitError,
    Http2Engine,
    StreamReset,
)
from mesh.h2 import frames as fr
from tests.unit.test_hbone_errors import CONNECT, hdrs, raw_client, raw_server
from tests.unit.test_hbone_link import frame_list

CALM = ErrorCode.ENHANCE_YOUR_CALM


def _terminated_with(events: Sequence[Event], code: int) -> bool:
    return bool(events) and isinstance(events[-1], ConnectionTerminated) and events[-1].error_code == code


def _goaway_code(wire: bytes) -> int:
    """The error code of the one GOAWAY in ``wire``."""
    pos, codes = 0, []
    for ftype, _, _, length in frame_list(wire):
        if ftype == fr.GOAWAY:
            codes.append(int.from_bytes(wire[pos + 13 : pos + 17], "big"))
        pos += 9 + length
    assert len(codes) == 1
    return codes[0]


# --- Rapid Reset (CVE-2023-44487) and MadeYouReset (CVE-2025-8671) -------------------------------


def test_rapid_reset_is_stopped_within_a_thousand_streams() -> None:
    server, enc = raw_server(), Encoder()
    opened = 0
    events: list[Event] = []
    for sid in range(1, 20_001, 2):  # 10,000 HEADERS + RST_STREAM pairs
        events = server.receive_data(hdrs(enc, sid) + fr.rst_stream_frame(sid, ErrorCode.CANCEL))
        opened += sum(isinstance(e, ConnectRequest) for e in events)
        if server.terminated:
            break
        server.data_to_send()
    assert _terminated_with(events, CALM)
    assert opened <= 1_000
    assert _goaway_code(server.data_to_send()) == CALM
    assert server.receive_data(hdrs(enc, 30_001)) == []


def test_resets_after_we_answered_are_not_premature() -> None:
    server, enc = raw_server(), Encoder()
    for sid in range(1, 6_001, 2):
        server.receive_data(hdrs(enc, sid))
        server.send_response(sid, 200)
        server.receive_data(fr.rst_stream_frame(sid, ErrorCode.CANCEL))
        server.data_to_send()
    assert not server.terminated and server.open_streams == 0


def test_a_minority_of_premature_resets_is_tolerated_over_many_streams() -> None:
    server, enc = raw_server(), Encoder()
    for i, sid in enumerate(range(1, 10_001, 2)):  # 5,000 streams, 30 % reset before the answer
        server.receive_data(hdrs(enc, sid, flags=fr.END_HEADERS | fr.END_STREAM))
        if i % 10 < 3:
            server.receive_data(fr.rst_stream_frame(sid, ErrorCode.CANCEL))
        else:
            server.send_response(sid, 200, end_stream=True)
        server.data_to_send()
    assert not server.terminated and server.open_streams == 0


@pytest.mark.parametrize("violation", ["window_update_0", "data_after_end_stream"])
def test_made_you_reset_resets_are_reported_and_budgeted(violation: str) -> None:
    server, enc = raw_server(), Encoder()
    surfaced: set[int] = set()
    reset_by_us: set[int] = set()
    events: list[Event] = []
    for sid in range(1, 4_001, 2):  # 2,000 streams
        if violation == "window_update_0":
            wire = hdrs(enc, sid) + fr.window_update_frame(sid, 0)
        else:
            wire = hdrs(enc, sid, flags=fr.END_HEADERS | fr.END_STREAM) + fr.frame(fr.DATA, 0, sid, b"x")
        events = server.receive_data(wire)
        surfaced |= {e.stream_id for e in events if isinstance(e, ConnectRequest)}
        reset_by_us |= {e.stream_id for e in events if isinstance(e, StreamReset) and not e.remote}
        assert server.open_streams <= server.config.max_concurrent_streams
        if server.terminated:
            break
        server.data_to_send()
    assert _terminated_with(events, CALM)
    assert surfaced == reset_by_us  # every stream the transport saw is reported reset: upstream closed
    assert len(surfaced) <= server.config.max_premature_resets + 1
    assert server.open_streams == 0


# --- CONTINUATION flood ----------------------------------------------------------------------------


@pytest.mark.parametrize(("piece", "max_frames"), [(1, 64), (16_384, 4)])
def test_continuation_flood_is_cut_off(piece: int, max_frames: int) -> None:
    server, enc = raw_server(), Encoder()
    events = server.receive_data(hdrs(enc, 1, flags=0))
    assert events == []
    sent = 0
    while not server.terminated and sent < 10_000:
        events = server.receive_data(fr.frame(fr.CONTINUATION, 0, 1, b"\x00" * piece))
        sent += 1
    assert _terminated_with(events, CALM)
    assert sent <= max_frames + 1


# --- HPACK bombs ------------------------------------------------------------------------------------


def _peak_memory_of(server: Http2Engine, wire: bytes) -> tuple[list[Event], int]:
    tracemalloc.start()
    try:
        events = server.receive_data(wire)
        return events, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_hpack_bomb_of_indexed_references_is_rejected_before_64k_decoded() -> None:
    server, enc = raw_server(), Encoder()
    events = server.receive_data(hdrs(enc, 1, [*CONNECT, (b"x-bomb", b"b" * 4050)]))
    assert isinstance(events[0], ConnectRequest)
    bomb = fr.frame(fr.HEADERS, fr.END_HEADERS, 3, b"\xbe" * 16_384)  # 16,384 refs to the 4 KiB entry
    events, peak = _peak_memory_of(server, bomb)
    assert _terminated_with(events, CALM)
    assert peak < 1_000_000  # 16,384 x 4 KiB would be 64 MiB


@pytest.mark.parametrize("literal", [b"\x00\x00\x00", b"\x00\x01a\x00"], ids=["empty", "one-letter"])
def test_thousands_of_empty_header_fields_count_their_overhead(literal: bytes) -> None:
    server = raw_server()
    block = Encoder().encode(CONNECT) + literal * 10_000
    events, peak = _peak_memory_of(server, fr.frame(fr.HEADERS, fr.END_HEADERS, 1, block))
    assert _terminated_with(events, CALM)
    assert peak < 2_000_000


def test_a_header_list_below_the_bound_passes() -> None:
    server, enc = raw_server(), Encoder()
    fields = [*CONNECT, *((f"x-{i}".encode(), b"v" * 100) for i in range(400))]  # ~53 KiB with overhead
    events = server.receive_data(hdrs(enc, 1, fields))
    assert isinstance(events[0], ConnectRequest) and len(events[0].headers) == 400


# --- a peer that never reads --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "control", [fr.ping_frame(b"flooding"), fr.settings_frame()], ids=["ping", "settings"]
)
def test_a_peer_that_never_reads_is_cut_off(control: bytes) -> None:
    server = raw_server()
    events: list[Event] = []
    fed = 0
    while fed < 100_000 and not server.terminated:
        events = server.receive_data(control * 1_000)
        fed += 1_000
        assert server.bytes_to_send_pending() <= 2 * server.config.max_outbound_control_bytes
    assert _terminated_with(events, CALM)
    assert fed <= server.config.max_outbound_control_frames + 1_000


def test_a_peer_that_reads_may_ping_all_it_wants() -> None:
    server = raw_server()
    for _ in range(100):
        events = server.receive_data(fr.ping_frame(b"12345678") * 1_000)
        assert events == []
        assert len(server.data_to_send()) == 17 * 1_000
    assert not server.terminated


def test_refused_streams_whose_resets_are_never_read_are_cut_off() -> None:
    server, enc = raw_server(), Encoder()
    wire = b"".join(hdrs(enc, sid) for sid in range(1, 2 * 20_000, 2))
    events = server.receive_data(wire)
    assert sum(isinstance(e, ConnectRequest) for e in events) == server.config.max_concurrent_streams
    assert _terminated_with(events, CALM)


def test_empty_data_frames_flood_is_cut_off() -> None:
    server, enc = raw_server(), Encoder()
    events = server.receive_data(hdrs(enc, 1) + fr.frame(fr.DATA, 0, 1, b"") * 1_000)
    assert _terminated_with(events, CALM)


# --- stream limits ---------------------------------------------------------------------------------


def test_streams_beyond_our_limit_are_refused() -> None:
    server, enc = raw_server(), Encoder()
    wire = b"".join(hdrs(enc, sid) for sid in range(1, 2_001, 2))  # 1,000 concurrent opens
    events = server.receive_data(wire)
    limit = server.config.max_concurrent_streams  # 200, as ztunnel's server
    assert [e.stream_id for e in events if isinstance(e, ConnectRequest)] == list(range(1, 2 * limit, 2))
    assert not any(isinstance(e, StreamReset) for e in events)
    resets = [f for f in frame_list(server.data_to_send()) if f[0] == fr.RST_STREAM]
    assert [f[2] for f in resets] == list(range(2 * limit + 1, 2_001, 2))
    assert server.open_streams == limit and not server.terminated
    server.send_response(1, 200, end_stream=True)
    server.receive_data(fr.frame(fr.DATA, fr.END_STREAM, 1, b""))
    assert isinstance(server.receive_data(hdrs(enc, 2_001))[0], ConnectRequest)  # a freed slot is reusable


def test_our_client_honours_the_peer_stream_limit_and_edge_settings() -> None:
    client, sid = raw_client()
    client.receive_data(
        fr.settings_frame([(fr.SETTINGS_MAX_CONCURRENT_STREAMS, 0), (fr.SETTINGS_INITIAL_WINDOW_SIZE, 0)])
    )
    assert client.remote_max_concurrent_streams == 0 and not client.can_open_stream
    with pytest.raises(H2StreamLimitError):
        client.send_connect("10.0.0.1:80")
    client.receive_data(fr.frame(fr.HEADERS, fr.END_HEADERS, sid, Encoder().encode([(b":status", b"200")])))
    assert client.send_data(sid, b"no window") == 0
    client.receive_data(fr.goaway_frame(0, ErrorCode.NO_ERROR))
    assert client.goaway_received and not client.terminated


def test_config_limits_are_validated() -> None:
    with pytest.raises(ConfigError, match="max_frame_size"):
        H2Config(max_frame_size=1000)
    with pytest.raises(ConfigError, match="initial_window_size"):
        H2Config(initial_window_size=2**31)
