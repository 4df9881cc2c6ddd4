"""gRPC's wire rules (mesh.rpc): message framing, statuses, and grpc-timeout values."""

from __future__ import annotations

import pytest

from mesh.rpc import (
    MessageReader,
    RpcError,
    StatusCode,
    frame_message,
    status_for_http,
    status_for_reset,
    status_of,
    timeout_value,
)

MESSAGES = [b"", b"a", b"hello world", bytes(range(256)) * 40]


@pytest.mark.parametrize("piece", [1, 2, 5, 7, 4096, 1 << 20])
def test_messages_come_out_whole_however_the_bytes_are_cut(piece: int) -> None:
    wire = b"".join(frame_message(m) for m in MESSAGES)
    reader = MessageReader(max_message_bytes=1 << 20)
    out: list[bytes] = []
    for start in range(0, len(wire), piece):
        out += [bytes(m) for m in reader.feed(wire[start : start + piece])]
    assert out == MESSAGES
    assert not reader.pending


def test_a_message_cut_short_is_pending() -> None:
    reader = MessageReader(max_message_bytes=100)
    assert reader.feed(frame_message(b"abcdef")[:8]) == []
    assert reader.pending
    assert reader.feed(b"def") == [bytearray(b"abcdef")]
    assert not reader.pending


def test_a_compressed_message_is_refused() -> None:
    with pytest.raises(RpcError) as err:
        MessageReader(max_message_bytes=100).feed(b"\x01\x00\x00\x00\x01x")
    assert err.value.code == StatusCode.INTERNAL


def test_a_message_over_the_limit_is_refused_before_its_body_is_buffered() -> None:
    with pytest.raises(RpcError) as err:
        MessageReader(max_message_bytes=100).feed(b"\x00\x00\x00\x00\x65")  # 101 bytes announced
    assert err.value.code == StatusCode.RESOURCE_EXHAUSTED
    assert "limit of 100" in err.value.details


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ((("grpc-status", "0"),), (StatusCode.OK, "")),
        (
            (("grpc-status", "7"), ("grpc-message", "no%20way%3A%20100%25")),
            (StatusCode.PERMISSION_DENIED, "no way: 100%"),
        ),
        ((("grpc-status", "99"),), (StatusCode.UNKNOWN, "the server sent an unknown grpc-status '99'")),
        ((("grpc-status", "x"),), (StatusCode.UNKNOWN, "the server sent an unknown grpc-status 'x'")),
        ((("content-type", "application/grpc"),), None),
    ],
)
def test_status_of_trailers(
    headers: tuple[tuple[str, str], ...], expected: tuple[StatusCode, str] | None
) -> None:
    assert status_of(headers) == expected


@pytest.mark.parametrize(
    ("http", "code"),
    [(400, StatusCode.INTERNAL), (401, StatusCode.UNAUTHENTICATED), (403, StatusCode.PERMISSION_DENIED),
     (404, StatusCode.UNIMPLEMENTED), (503, StatusCode.UNAVAILABLE), (500, StatusCode.UNKNOWN)],
)  # fmt: skip
def test_http_statuses_map_as_grpc_documents(http: int, code: StatusCode) -> None:
    assert status_for_http(http) == code


@pytest.mark.parametrize(
    ("reset", "code"),
    [(0x7, StatusCode.UNAVAILABLE), (0x8, StatusCode.CANCELLED), (0xB, StatusCode.RESOURCE_EXHAUSTED),
     (0xC, StatusCode.PERMISSION_DENIED), (0x2, StatusCode.INTERNAL)],
)  # fmt: skip
def test_stream_resets_map_as_grpc_documents(reset: int, code: StatusCode) -> None:
    assert status_for_reset(reset) == code


@pytest.mark.parametrize(
    ("seconds", "value"),
    [(10.0, "10000000u"), (0.3, "300000u"), (100.0, "100000m"), (0.0000001, "1u"), (200_000.0, "200000S"),
     (10**9, "277778H")],
)  # fmt: skip
def test_timeout_values_fit_eight_digits(seconds: float, value: str) -> None:
    assert timeout_value(seconds) == value
    assert len(value) <= 9
