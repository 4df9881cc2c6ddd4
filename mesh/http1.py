"""HTTP/1.1 messages, sans I/O: parsing with httptools (llhttp, the C parser uvicorn uses) and
serializing, with Envoy's limits.

A parser is fed bytes and returns complete messages (head and whole body, up to ``max_body``), or,
with ``stream=True`` (the waypoint, which never holds a whole body), events as they arrive: the
head (a :class:`Message` without body), :class:`BodyChunk` pieces and :class:`MessageEnd`.
Malformed input raises :class:`Http1Error` with the status to answer: 400 for bad syntax and
request smuggling (Content-Length together with Transfer-Encoding, two different Content-Lengths:
llhttp refuses both), 431 for a header section over 60 KiB or over 100 headers, 413 for a buffered
body over the limit. Pipelined requests come out in order. The serializers write a head with
Content-Length, chunked or no framing (:func:`serialize_response_head`, :func:`encode_chunk`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httptools

from mesh.errors import MeshError

__all__ = [
    "CONTINUE",
    "LAST_CHUNK",
    "BodyChunk",
    "MessageEnd",
    "Event",
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "Http1Error",
    "Message",
    "RequestParser",
    "ResponseParser",
    "body_length",
    "encode_chunk",
    "serialize_request",
    "serialize_request_head",
    "serialize_response",
    "serialize_response_head",
]

MAX_HEADERS = 100
"""Envoy's default ``max_headers_count``."""
MAX_HEADER_BYTES = 60 * 1024
"""Envoy's default ``max_request_headers_kb``."""
DEFAULT_MAX_BODY = 16 * 1024 * 1024
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"
"""The end of a chunked body (no trailers)."""
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
)


class Http1Error(MeshError):
    """A message that cannot be accepted; ``status`` is the answer (400, 413, 431)."""

    def __init__(self, status: int, problem: str) -> None:
        super().__init__(problem, hint="the client sent a malformed or oversized HTTP/1.1 message")
        self.status = status


@dataclass(slots=True)
class Message:
    """One request (``method`` and ``target`` set) or response (``status`` set), with its whole body.
    Header names are lower-case, in order, repeated names kept."""

    method: str = ""
    target: str = ""
    status: int = 0
    reason: str = ""
    version: str = "1.1"
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    keep_alive: bool = True
    upgrade: bool = False
    trailers: list[tuple[str, str]] = field(default_factory=list)
    """An HTTP/2 message's trailer block (gRPC's status); HTTP/1.1 trailers are not kept."""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower-case), or None."""
        return next((value for key, value in self.headers if key == name), None)

    def values(self, name: str) -> tuple[str, ...]:
        """Every value of header ``name`` (lower-case), in order."""
        return tuple(value for key, value in self.headers if key == name)

    def end_to_end_headers(self) -> list[tuple[str, str]]:
        """The headers without hop-by-hop ones (RFC 9110 section 7.6.1), for forwarding."""
        named = {v.strip().lower() for v in ",".join(self.values("connection")).split(",") if v.strip()}
        return [
            (k, v)
            for k, v in self.headers
            if k not in _HOP_BY_HOP and k not in named and k != "content-length"
        ]


@dataclass(frozen=True, slots=True)
class BodyChunk:
    """Streaming parsers: the next piece of the current message's body (chunked framing removed)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class MessageEnd:
    """Streaming parsers: the current message is complete."""


Event = Message | BodyChunk | MessageEnd
"""What a streaming parser returns: a head (a Message without body), body pieces, the end."""


def body_length(message: Message) -> int | None:
    """The body length a request head announces: its Content-Length, None for a chunked body
    (unknown until it ends), else 0 (RFC 9112 section 6.3: a request without either has none)."""
    if "chunked" in (message.header("transfer-encoding") or "").lower():
        return None
    length = message.header("content-length")
    return int(length) if length is not None and length.strip().isdigit() else 0


class _Parser:
    def __init__(self, parser_type: type, *, max_body: int, stream: bool) -> None:
        self._parser = parser_type(self)
        self._max_body = max_body
        self._stream = stream
        self._done: list[Any] = []
        self._current = Message()
        self._body: list[bytes] = []
        self._body_size = 0
        self._header_bytes = 0
        self._failure: Http1Error | None = None
        self._stopped = False
        self._in_body = False
        self._in_message = False

    def feed(self, data: bytes) -> list[Message]:
        """Parses ``data``; returns the messages it completed (possibly none), in order."""
        if self._stream:
            raise TypeError("a streaming parser is fed with events(), not feed()")
        messages: list[Message] = self._parse(data)
        return messages

    def events(self, data: bytes) -> list[Event]:
        """Streaming parsers: parses ``data``; returns the events it produced, in order."""
        if not self._stream:
            raise TypeError("a buffering parser is fed with feed(), not events()")
        events: list[Event] = self._parse(data)
        return events

    def _parse(self, data: bytes) -> list[Any]:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # the head is complete; what follows the upgrade is not HTTP/1.1 (the caller relays it)
        except httptools.HttpParserError as exc:
            if self._failure is not None:  # httptools wraps what a callback raised
                raise self._failure from None
            if not self._stopped:
                raise Http1Error(400, f"malformed HTTP/1.1: {exc}") from None
        done, self._done = self._done, []
        return done

    def _fail(self, status: int, problem: str) -> None:
        self._failure = Http1Error(status, problem)
        raise self._failure

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._in_message = True
        self._current = Message()
        self._body, self._body_size, self._header_bytes = [], 0, 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        self._current.target += url.decode("latin-1")

    def on_status(self, status: bytes) -> None:
        self._current.reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        headers = self._current.headers
        if len(headers) >= MAX_HEADERS:
            self._fail(431, f"more than {MAX_HEADERS} headers")
        headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        message = self._current
        message.version = self._parser.get_http_version()
        message.keep_alive = self._parser.should_keep_alive()
        message.upgrade = self._parser.should_upgrade()
        self._in_body = True
        if self._stream:
            self._done.append(message)
        self._complete_head(message)

    def on_body(self, body: bytes) -> None:
        if self._stream:
            self._done.append(BodyChunk(body))
            return
        self._body_size += len(body)
        if self._body_size > self._max_body:
            self._fail(413, f"body over {self._max_body} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = self._in_body = False
        if self._stream:
            self._done.append(MessageEnd())
            return
        self._current.body = b"".join(self._body)
        self._done.append(self._current)

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            self._fail(431, f"header section over {MAX_HEADER_BYTES // 1024} KiB")

    def _complete_head(self, message: Message) -> None:
        raise NotImplementedError


class RequestParser(_Parser):
    """Parses requests, including pipelined ones."""

    def __init__(self, *, max_body: int = DEFAULT_MAX_BODY, stream: bool = False) -> None:
        super().__init__(httptools.HttpRequestParser, max_body=max_body, stream=stream)
        self.continue_wanted = False
        """A request head asked ``Expect: 100-continue`` and its body has not come yet: answer
        ``100 Continue`` (see :data:`CONTINUE`) and clear this, or the client waits (curl: 1 s)."""

    @property
    def in_message(self) -> bool:
        """True between the first byte of a request and its end (a slow client is timed here)."""
        return self._in_message

    def _complete_head(self, message: Message) -> None:
        message.method = self._parser.get_method().decode("ascii")
        if (message.header("expect") or "").lower() == "100-continue":
            self.continue_wanted = True

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.continue_wanted = False  # the body came anyway: no 100 is owed


class ResponseParser(_Parser):
    """Parses responses. A response to HEAD has a head only: pass ``head_only=True`` (one parser
    per response then, as the bytes that follow belong to the next response)."""

    def __init__(
        self, *, max_body: int = DEFAULT_MAX_BODY, head_only: bool = False, stream: bool = False
    ) -> None:
        super().__init__(httptools.HttpResponseParser, max_body=max_body, stream=stream)
        self._head_only = head_only

    def _complete_head(self, message: Message) -> None:
        message.status = self._parser.get_status_code()
        if self._head_only and message.status >= 200:  # stop: the bytes after it are not this response's
            self._done.append(MessageEnd() if self._stream else message)
            self._stopped = True
            raise StopIteration

    def finish(self) -> list[Message]:
        """The upstream closed: completes a response without a length, whose body runs to the end of
        the connection (HTTP/1.0 style); a response cut short by the close is not returned."""
        messages: list[Message] = self._finish()
        return messages

    def finish_events(self) -> list[Event]:
        """Streaming parsers: the upstream closed; the end of a body that runs to the close, if so."""
        events: list[Event] = self._finish()
        return events

    def _finish(self) -> list[Any]:
        message = self._current
        unframed = message.header("content-length") is None and "chunked" not in (
            message.header("transfer-encoding") or ""
        )
        if self._in_body and message.status and unframed:
            self.on_message_complete()
        done, self._done = self._done, []
        return done


_UNFRAMED = -1
"""A head without Content-Length or chunked framing (no body, or one that runs to the close)."""


def _head_lines(
    first: str, headers: Sequence[tuple[str, str]], *, length: int | None, keep_alive: bool
) -> bytes:
    lines = [first]
    lines += [f"{name}: {value}" for name, value in headers]
    if length is None:
        lines.append("transfer-encoding: chunked")
    elif length != _UNFRAMED:
        lines.append(f"content-length: {length}")
    if not keep_alive:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def serialize_request_head(
    method: str, target: str, headers: Sequence[tuple[str, str]], *, length: int | None
) -> bytes:
    """A request head (``headers`` without hop-by-hop ones) for a body of ``length`` bytes, or a
    chunked one (None: send it with :func:`encode_chunk` and :data:`LAST_CHUNK`)."""
    return _head_lines(f"{method} {target} HTTP/1.1", headers, length=length, keep_alive=True)


def serialize_request(
    method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes, *, keep_alive: bool = True
) -> bytes:
    """A request with a Content-Length body (``headers`` without hop-by-hop ones)."""
    first = f"{method} {target} HTTP/1.1"
    return _head_lines(first, headers, length=len(body), keep_alive=keep_alive) + body


def serialize_response_head(
    status: int, reason: str, headers: Sequence[tuple[str, str]], *, length: int | None,
    keep_alive: bool = True, close_delimited: bool = False,
) -> bytes:  # fmt: skip
    """A response head (``headers`` without hop-by-hop ones) for a body of ``length`` bytes, a
    chunked one (None), or with ``close_delimited`` one that ends when the connection closes (an
    HTTP/1.0 client). 1xx, 204 and 304 carry no framing (RFC 9110 section 8.6)."""
    first = f"HTTP/1.1 {status} {reason or _REASONS.get(status, '')}".rstrip()
    no_body = status < 200 or status in (204, 304)
    framing = _UNFRAMED if no_body or close_delimited else length
    return _head_lines(first, headers, length=framing, keep_alive=keep_alive and not close_delimited)


def serialize_response(
    status: int, reason: str, headers: Sequence[tuple[str, str]], body: bytes, *, keep_alive: bool = True
) -> bytes:
    """A response with a Content-Length body (``headers`` without hop-by-hop ones); 1xx, 204 and
    304 carry no Content-Length (RFC 9110 section 8.6)."""
    head = serialize_response_head(status, reason, headers, length=len(body), keep_alive=keep_alive)
    no_body = status < 200 or status in (204, 304)
    return head if no_body else head + body


def encode_chunk(data: bytes) -> bytes:
    """One piece of a chunked body (never empty: an empty chunk would end the body)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


_REASONS = {
    200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently", 302: "Found",
    303: "See Other", 304: "Not Modified", 307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 408: "Request Timeout",
    409: "Conflict", 413: "Payload Too Large", 418: "I'm a teapot", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout",
}  # fmt: skip
