"""Header blocks: HPACK with a decoded-size bound, and RFC 9113 section 8 field validation."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from hpack import Decoder, Encoder, HPACKError, OversizedHeaderListError

from mesh.h2.errors import ErrorCode, H2ConnectionError, H2ProtocolError, H2UsageError

__all__ = [
    "HeaderCodec",
    "MalformedHeadersError",
    "RequestHead",
    "encode_fields",
    "parse_request",
    "parse_response",
    "parse_trailers",
]

ENTRY_OVERHEAD = 32
"""Bytes counted per field on top of name and value (RFC 9113 section 6.5.2, RFC 7541 section 4.1)."""

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+\Z")
_BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path"})
_RESPONSE_PSEUDO = frozenset({b":status"})
_NO_PSEUDO: frozenset[bytes] = frozenset()

_PER_TUNNEL = frozenset({b"forwarded", b"traceparent"})
"""HBONE headers whose values differ on every tunnel (client port, trace id): indexing them would only
churn both ends' HPACK tables, so they are sent as never-indexed literals."""

Fields = list[tuple[bytes, bytes]]
StrHeaders = tuple[tuple[str, str], ...]


class MalformedHeadersError(H2ProtocolError):
    """A header block breaks RFC 9113 section 8 rules: the stream is reset with PROTOCOL_ERROR."""

    def __init__(self, message: str) -> None:
        super().__init__(message, hint="the peer must send a well-formed HTTP/2 request or response")


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A well-formed request head; ``authority`` is None when absent."""

    method: str
    authority: str | None
    headers: StrHeaders
    scheme: str = ""
    path: str = ""


class HeaderCodec:
    """One connection's HPACK state: our encoder and a decoder bounded by the header list size."""

    def __init__(self, *, max_header_list_size: int, header_table_size: int) -> None:
        self._max_list = max_header_list_size
        self._table_cap = header_table_size
        self._decoder = Decoder(max_header_list_size=max_header_list_size)
        self._encoder = Encoder()

    def decode(self, block: bytes) -> Fields:
        """Decodes a whole header block; errors are connection errors (the HPACK state is shared)."""
        try:
            fields = self._decoder.decode(block, raw=True)
        except OversizedHeaderListError as err:
            raise H2ConnectionError(
                f"header list larger than {self._max_list} bytes decoded: {err}",
                error_code=ErrorCode.ENHANCE_YOUR_CALM,
            ) from err
        except (HPACKError, ValueError, IndexError) as err:
            raise H2ConnectionError(
                f"HPACK decoding failed: {err}", error_code=ErrorCode.COMPRESSION_ERROR
            ) from err
        size = 0
        for name, value in fields:
            size += ENTRY_OVERHEAD + len(name) + len(value)
        if size > self._max_list:
            raise H2ConnectionError(
                f"header list of {size} bytes exceeds {self._max_list}",
                error_code=ErrorCode.ENHANCE_YOUR_CALM,
            )
        return [(bytes(n), bytes(v)) for n, v in fields]

    def encode(self, fields: Fields) -> bytes:
        """Encodes a header block for sending.

        HBONE's per-tunnel values (``forwarded``, ``traceparent``) are never indexed, and nothing is
        Huffman-coded: for those values it cost more CPU per tunnel than the bytes it saves."""
        marked = [(name, value, name in _PER_TUNNEL) for name, value in fields]
        return bytes(self._encoder.encode(marked, huffman=False))

    def peer_table_size(self, size: int) -> None:
        """Applies the peer's SETTINGS_HEADER_TABLE_SIZE to our encoder (never above our own cap)."""
        self._encoder.header_table_size = min(size, self._table_cap)

    def allow_table_size(self, size: int) -> None:
        """The dynamic table size our SETTINGS allow the peer's encoder (applied once acknowledged)."""
        self._decoder.max_allowed_table_size = size


def parse_request(fields: Fields) -> RequestHead:
    """Validates a request head; raises MalformedHeadersError when it is malformed."""
    pseudo, headers = _split(fields, _REQUEST_PSEUDO)
    method = pseudo.get(b":method")
    if not method:
        raise MalformedHeadersError("request without :method")
    if method == b"CONNECT":
        if b":scheme" in pseudo or b":path" in pseudo:
            raise MalformedHeadersError("CONNECT request with :scheme or :path (RFC 9113 section 8.5)")
    elif not pseudo.get(b":scheme") or not pseudo.get(b":path"):
        raise MalformedHeadersError("request without :scheme or :path")
    authority = pseudo.get(b":authority")
    return RequestHead(
        method=method.decode("latin-1"),
        authority=None if authority is None else authority.decode("latin-1"),
        headers=headers,
        scheme=pseudo.get(b":scheme", b"").decode("latin-1"),
        path=pseudo.get(b":path", b"").decode("latin-1"),
    )


def parse_response(fields: Fields) -> tuple[int, StrHeaders]:
    """Validates a response head and returns (status, headers)."""
    pseudo, headers = _split(fields, _RESPONSE_PSEUDO)
    status = pseudo.get(b":status", b"")
    if len(status) != 3 or not status.isdigit():
        raise MalformedHeadersError(f"response :status must be three digits, got {status!r}")
    code = int(status)
    if code < 100 or code == 101:
        raise MalformedHeadersError(f"response :status {code} is not allowed in HTTP/2")
    return code, headers


def parse_trailers(fields: Fields) -> StrHeaders:
    """Validates a trailer block (no pseudo-header fields)."""
    return _split(fields, _NO_PSEUDO)[1]


def encode_fields(pseudo: Sequence[tuple[bytes, bytes]], headers: Sequence[tuple[str, str]]) -> Fields:
    """Our own outbound fields: pseudo-headers first, then the caller's headers, validated."""
    out = list(pseudo)
    for name, value in headers:
        try:
            raw_name, raw_value = name.encode("ascii"), value.encode("latin-1")
        except UnicodeEncodeError as err:
            raise H2UsageError(
                f"header {name!r} is not ASCII/latin-1", hint="encode the value first"
            ) from err
        try:
            _check_regular(raw_name, raw_value)
        except MalformedHeadersError as err:
            raise H2UsageError(f"cannot send header {name!r}: {err.message}") from err
        out.append((raw_name, raw_value))
    return out


def _split(fields: Fields, allowed: frozenset[bytes]) -> tuple[dict[bytes, bytes], StrHeaders]:
    pseudo: dict[bytes, bytes] = {}
    headers: list[tuple[str, str]] = []
    for name, value in fields:
        if name[:1] == b":":
            if headers:
                raise MalformedHeadersError(f"pseudo-header {name!r} after a regular header")
            if name not in allowed:
                raise MalformedHeadersError(f"pseudo-header {name!r} is not allowed here")
            if name in pseudo:
                raise MalformedHeadersError(f"duplicate pseudo-header {name!r}")
            if _BAD_VALUE.search(value):
                raise MalformedHeadersError(f"invalid characters in the value of {name!r}")
            pseudo[name] = value
            continue
        _check_regular(name, value)
        headers.append((name.decode("ascii"), value.decode("latin-1")))
    return pseudo, tuple(headers)


def _check_regular(name: bytes, value: bytes) -> None:
    if not _TOKEN.match(name):
        raise MalformedHeadersError(f"header name {name!r} is not a lowercase token")
    if name in _CONNECTION_SPECIFIC:
        raise MalformedHeadersError(f"connection-specific header {name!r} is not allowed in HTTP/2")
    if name == b"te" and value != b"trailers":
        raise MalformedHeadersError("te header other than 'trailers'")
    if _BAD_VALUE.search(value):
        raise MalformedHeadersError(f"value of {name!r} has CR, LF, NUL or surrounding whitespace")
