"""HTTP/2 frame layout (RFC 9113 section 4 and 6): type and flag numbers, and frame builders.

Builders return ``bytes`` ready for the wire; the 9-byte header is packed with one struct call."""

from __future__ import annotations

import struct
from collections.abc import Iterable

__all__ = [
    "ACK",
    "CONNECTION_PREFACE",
    "CONTINUATION",
    "DATA",
    "END_HEADERS",
    "END_STREAM",
    "FRAME_HEADER",
    "GOAWAY",
    "HEADERS",
    "PADDED",
    "PING",
    "PRIORITY",
    "PRIORITY_FLAG",
    "PUSH_PROMISE",
    "RST_STREAM",
    "SETTINGS",
    "SETTINGS_ENABLE_CONNECT_PROTOCOL",
    "SETTINGS_ENABLE_PUSH",
    "SETTINGS_HEADER_TABLE_SIZE",
    "SETTINGS_INITIAL_WINDOW_SIZE",
    "SETTINGS_MAX_CONCURRENT_STREAMS",
    "SETTINGS_MAX_FRAME_SIZE",
    "SETTINGS_MAX_HEADER_LIST_SIZE",
    "WINDOW_UPDATE",
    "data_frame_header",
    "frame",
    "goaway_frame",
    "header_block_frames",
    "ping_frame",
    "rst_stream_frame",
    "settings_frame",
    "window_update_frame",
]

CONNECTION_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6
SETTINGS_ENABLE_CONNECT_PROTOCOL = 0x8

FRAME_HEADER = struct.Struct(">HBBBL")
"""Length (high 16 bits, low 8 bits), type, flags, stream id (with the reserved bit)."""
_U32 = struct.Struct(">L")
_U32_PAIR = struct.Struct(">LL")
_SETTING = struct.Struct(">HL")


def data_frame_header(length: int, flags: int, stream_id: int) -> bytes:
    """The 9-byte header of a DATA frame whose payload follows separately."""
    return FRAME_HEADER.pack(length >> 8, length & 0xFF, DATA, flags, stream_id)


def frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One whole frame: header plus payload."""
    length = len(payload)
    return FRAME_HEADER.pack(length >> 8, length & 0xFF, frame_type, flags, stream_id) + payload


def settings_frame(settings: Iterable[tuple[int, int]] = (), *, ack: bool = False) -> bytes:
    """A SETTINGS frame (or its ACK, which carries no payload)."""
    payload = b"".join(_SETTING.pack(key, value) for key, value in settings)
    return frame(SETTINGS, ACK if ack else 0, 0, payload)


def ping_frame(opaque: bytes, *, ack: bool = False) -> bytes:
    """A PING frame with its 8 opaque bytes."""
    return frame(PING, ACK if ack else 0, 0, opaque)


def window_update_frame(stream_id: int, increment: int) -> bytes:
    """A WINDOW_UPDATE for a stream, or for the connection when ``stream_id`` is 0."""
    return frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))


def rst_stream_frame(stream_id: int, error_code: int) -> bytes:
    """An RST_STREAM frame."""
    return frame(RST_STREAM, 0, stream_id, _U32.pack(error_code))


def goaway_frame(last_stream_id: int, error_code: int, additional_data: bytes = b"") -> bytes:
    """A GOAWAY frame."""
    return frame(GOAWAY, 0, 0, _U32_PAIR.pack(last_stream_id, error_code) + additional_data)


def header_block_frames(stream_id: int, block: bytes, *, end_stream: bool, max_frame_size: int) -> bytes:
    """HEADERS plus as many CONTINUATION frames as the peer's frame size needs, joined."""
    first = block[:max_frame_size]
    rest = block[max_frame_size:]
    flags = (END_STREAM if end_stream else 0) | (0 if rest else END_HEADERS)
    parts = [frame(HEADERS, flags, stream_id, first)]
    while rest:
        chunk, rest = rest[:max_frame_size], rest[max_frame_size:]
        parts.append(frame(CONTINUATION, 0 if rest else END_HEADERS, stream_id, chunk))
    return b"".join(parts)
