"""A small sans-I/O HTTP/1.1 request parser and response writer (for the sample apps).

Bytes in, :class:`Request` values out; handles keep-alive, pipelining, Content-Length and chunked
bodies, with size limits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus

from mesh.errors import MeshError

__all__ = ["HttpParseError", "Request", "RequestParser", "render_response"]

_MAX_HEADER = 64 * 1024
_MAX_BODY = 16 * 1024 * 1024


class HttpParseError(MeshError):
    """The peer sent something that is not valid HTTP/1.1; answer 400 and close."""


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed request."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The header's values joined by ", " (case-insensitive name), or None."""
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None

    @property
    def keep_alive(self) -> bool:
        """Whether the connection stays open after the response."""
        connection = (self.header("connection") or "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection


class RequestParser:
    """Feed bytes, get complete requests."""

    def __init__(self, *, max_header: int = _MAX_HEADER, max_body: int = _MAX_BODY) -> None:
        self._buffer = bytearray()
        self._max_header = max_header
        self._max_body = max_body
        self._head: tuple[str, str, str, tuple[tuple[str, str], ...]] | None = None

    def feed(self, data: bytes) -> list[Request]:
        """Adds ``data``; returns the requests it completed (raises :class:`HttpParseError`)."""
        self._buffer += data
        requests: list[Request] = []
        while True:
            request = self._next()
            if request is None:
                return requests
            requests.append(request)

    def _next(self) -> Request | None:
        if self._head is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > self._max_header:
                    raise HttpParseError("request header too large", hint="send at most 64 KiB of headers")
                return None
            self._head = _parse_head(bytes(self._buffer[:end]))
            del self._buffer[: end + 4]
        method, target, version, headers = self._head
        body = self._body(headers)
        if body is None:
            return None
        self._head = None
        return Request(method, target, version, headers, body)

    def _body(self, headers: tuple[tuple[str, str], ...]) -> bytes | None:
        fields = {k.lower(): v for k, v in headers}
        if "chunked" in fields.get("transfer-encoding", "").lower():
            return self._chunked()
        try:
            length = int(fields.get("content-length", "0"))
        except ValueError:
            raise HttpParseError("bad Content-Length", hint="send a decimal length") from None
        if length < 0 or length > self._max_body:
            raise HttpParseError(f"body of {length} bytes is not allowed", hint="send at most 16 MiB")
        if len(self._buffer) < length:
            return None
        body = bytes(self._buffer[:length])
        del self._buffer[:length]
        return body

    def _chunked(self) -> bytes | None:
        body = bytearray()
        pos = 0
        while True:
            line_end = self._buffer.find(b"\r\n", pos)
            if line_end < 0:
                return None
            try:
                size = int(bytes(self._buffer[pos:line_end]).split(b";")[0], 16)
            except ValueError:
                raise HttpParseError("bad chunk size", hint="use hexadecimal chunk sizes") from None
            if size == 0:
                rest = line_end + 2
                if self._buffer[rest : rest + 2] == b"\r\n":
                    end = rest + 2
                else:
                    trailers = self._buffer.find(b"\r\n\r\n", rest)
                    if trailers < 0:
                        return None
                    end = trailers + 4
                del self._buffer[:end]
                return bytes(body)
            start = line_end + 2
            if len(self._buffer) < start + size + 2:
                return None
            body += self._buffer[start : start + size]
            if len(body) > self._max_body:
                raise HttpParseError("chunked body too large", hint="send at most 16 MiB")
            pos = start + size + 2


def _parse_head(head: bytes) -> tuple[str, str, str, tuple[tuple[str, str], ...]]:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise HttpParseError("undecodable header") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpParseError(f"bad request line {lines[0][:80]!r}", hint="send 'METHOD /path HTTP/1.1'")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpParseError(f"bad header line {line[:80]!r}", hint="send 'Name: value'")
        headers.append((name, value.strip()))
    return parts[0], parts[1], parts[2], tuple(headers)


def render_response(
    status: int, headers: Iterable[tuple[str, str]], body: bytes, *, keep_alive: bool
) -> bytes:
    """An HTTP/1.1 response with Content-Length (and ``Connection: close`` when not keeping alive)."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [
        f"HTTP/1.1 {status} {reason}",
        *(f"{k}: {v}" for k, v in headers),
        f"content-length: {len(body)}",
    ]
    if not keep_alive:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
