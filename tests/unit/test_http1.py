"""mesh.http1: requests and responses parsed with llhttp, Envoy's limits, and smuggling refused."""

from __future__ import annotations

import pytest

from mesh.http1 import (
    LAST_CHUNK,
    BodyChunk,
    Event,
    Http1Error,
    Message,
    RequestParser,
    ResponseParser,
    body_length,
    encode_chunk,
    serialize_request,
    serialize_response,
    serialize_response_head,
)


def test_pipelined_keep_alive_and_chunked_requests_come_out_in_order() -> None:
    parser = RequestParser()
    raw = (
        b"GET /a?x=1 HTTP/1.1\r\nHost: server\r\nX-Tag: 1\r\nX-Tag: 2\r\n\r\n"
        b"POST /b HTTP/1.1\r\nHost: server\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        b"GET /c HTTP/1.0\r\n\r\n"
    )
    first = parser.feed(raw[:30])
    rest = parser.feed(raw[30:])
    a, b, c = first + rest
    assert (a.method, a.target, a.values("x-tag"), a.keep_alive) == ("GET", "/a?x=1", ("1", "2"), True)
    assert (b.method, b.body, b.header("transfer-encoding")) == ("POST", b"abcde", "chunked")
    assert (c.version, c.keep_alive) == ("1.0", False)
    assert ("transfer-encoding", "chunked") not in b.end_to_end_headers()


def test_chunk_extensions_and_trailers_split_into_small_reads() -> None:
    parser = RequestParser()
    raw = (
        b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-T: 1\r\n\r\n"
        b"GET /d HTTP/1.1\r\nConnection: close\r\n\r\n"
    )
    requests = [r for i in range(0, len(raw), 7) for r in parser.feed(raw[i : i + 7])]
    assert [(r.method, r.target, r.body, r.keep_alive) for r in requests] == [
        ("PUT", "/c", b"abcde", True),
        ("GET", "/d", b"", False),
    ]


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n",
            400,
        ),
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
        (b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (61 * 1024) + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nContent-Length: 20\r\n\r\n" + b"x" * 20, 413),
    ],
    ids=[
        "cl-and-te",
        "two-content-lengths",
        "space-in-name",
        "control-char",
        "101-headers",
        "61-KiB",
        "body-limit",
    ],
)
def test_malformed_or_oversized_requests_name_their_status(raw: bytes, status: int) -> None:
    with pytest.raises(Http1Error) as info:
        RequestParser(max_body=10).feed(raw)
    assert info.value.status == status


def test_responses_including_head_and_to_the_end_of_the_connection() -> None:
    parser = ResponseParser()
    (ok,) = parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    assert (ok.status, ok.reason, ok.body) == (200, "OK", b"hi")
    (head,) = ResponseParser(head_only=True).feed(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")
    assert head.status == 200 and head.body == b""
    eof = ResponseParser()
    assert eof.feed(b"HTTP/1.0 200 OK\r\n\r\nall of it") == []
    (until_close,) = eof.finish()
    assert until_close.body == b"all of it"


def test_serialized_messages_parse_back() -> None:
    raw = serialize_request("PUT", "/x", [("host", "s"), ("x-a", "1")], b"body")
    (request,) = RequestParser().feed(raw)
    assert (request.method, request.target, request.body, request.header("x-a")) == (
        "PUT",
        "/x",
        b"body",
        "1",
    )
    (response,) = ResponseParser().feed(serialize_response(503, "", [("x-b", "2")], b"no", keep_alive=False))
    assert (response.status, response.reason, response.body, response.keep_alive) == (
        503,
        "Service Unavailable",
        b"no",
        False,
    )
    assert b"content-length" not in serialize_response(204, "", [], b"ignored")


def _summary(events: list[Event]) -> list[object]:
    """Events as plain values: ("head", method or status), body bytes joined per piece, "end"."""
    out: list[object] = []
    for event in events:
        if isinstance(event, Message):
            out.append(("head", event.method or event.status))
        elif isinstance(event, BodyChunk):
            if out and isinstance(out[-1], bytes):
                out[-1] += event.data
            else:
                out.append(event.data)
        else:
            out.append("end")
    return out


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", [("head", "GET"), "end"]),
        (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", [("head", "POST"), b"hello", "end"]),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
            b"GET /next HTTP/1.1\r\n\r\n",
            [("head", "POST"), b"abcde", "end", ("head", "GET"), "end"],
        ),
    ],
    ids=["no-body", "content-length", "chunked-then-pipelined"],
)
@pytest.mark.parametrize("step", [1, 7, 4096])
def test_a_streaming_parser_gives_head_body_pieces_and_end(
    raw: bytes, expected: list[object], step: int
) -> None:
    parser = RequestParser(stream=True)
    events = [e for i in range(0, len(raw), step) for e in parser.events(raw[i : i + step])]
    assert _summary(events) == expected


def test_a_streaming_parser_has_no_body_limit_and_keeps_the_header_limits() -> None:
    parser = RequestParser(stream=True, max_body=10)
    events = parser.events(b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n" + b"x" * 100)
    assert _summary(events) == [("head", "POST"), b"x" * 100, "end"]
    with pytest.raises(Http1Error) as info:
        RequestParser(stream=True).events(
            b"GET / HTTP/1.1\r\n" + b"".join(b"x-%d: v\r\n" % i for i in range(101)) + b"\r\n"
        )
    assert info.value.status == 431


def test_a_streaming_response_parser_skips_nothing_and_ends_at_the_close() -> None:
    parser = ResponseParser(stream=True)
    events = parser.events(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\nto the")
    events += parser.events(b" close") + parser.finish_events()
    assert _summary(events) == [("head", 100), "end", ("head", 200), b"to the close", "end"]


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n", 12),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\n\r\n", 0),
    ],
)
def test_body_length_from_the_request_head(head: bytes, expected: int | None) -> None:
    (message, *_) = RequestParser(stream=True).events(head)
    assert isinstance(message, Message)
    assert body_length(message) == expected


@pytest.mark.parametrize(
    ("length", "close_delimited", "framing"),
    [(5, False, b"content-length: 5\r\n"), (None, False, b"transfer-encoding: chunked\r\n"),
     (None, True, b"connection: close\r\n")],
)  # fmt: skip
def test_response_heads_frame_the_body_as_asked(
    length: int | None, close_delimited: bool, framing: bytes
) -> None:
    head = serialize_response_head(200, "", [("x", "1")], length=length, close_delimited=close_delimited)
    assert head.startswith(b"HTTP/1.1 200 OK\r\nx: 1\r\n") and head.endswith(framing + b"\r\n")
    chunked = head + encode_chunk(b"abc") + LAST_CHUNK
    if length is None and not close_delimited:
        parser = ResponseParser()
        (response,) = parser.feed(chunked)
        assert response.body == b"abc"


def test_a_streaming_parser_is_not_fed_whole_messages() -> None:
    with pytest.raises(TypeError):
        RequestParser(stream=True).feed(b"GET / HTTP/1.1\r\n\r\n")
