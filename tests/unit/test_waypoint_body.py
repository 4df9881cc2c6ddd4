"""waypoint.body: a body in transit holds a bounded amount (a producer waits, or its window comes
back only as bytes are taken), and a request body can be sent again only while it stayed within
the per-request buffer limit."""

from __future__ import annotations

import asyncio

import pytest

from waypoint.body import BodyStream, DownstreamGoneError, NotReplayableError, RequestBody

pytestmark = pytest.mark.timeout(10)


async def test_a_producer_waits_while_the_consumer_is_high_water_behind() -> None:
    stream = BodyStream(high_water=10)
    await stream.put(b"x" * 8)
    await stream.put(b"y" * 8)  # 16 > 10 held now: the next put waits
    waiting = asyncio.ensure_future(stream.put(b"z"))
    await asyncio.sleep(0)
    assert not waiting.done()
    assert await stream.read() == b"x" * 8  # 8 held: under the mark again
    await asyncio.wait_for(waiting, 1)
    stream.end()
    assert [await stream.read(), await stream.read(), await stream.read()] == [b"y" * 8, b"z", b""]


async def test_fed_bytes_are_given_back_as_they_are_taken_or_dropped() -> None:
    taken: list[int] = []
    stream = BodyStream(on_taken=taken.append)
    stream.feed(b"abc")
    stream.feed(b"defg")
    assert taken == []  # nothing taken: no window goes back
    assert await stream.read() == b"abc"
    assert taken == [3]
    stream.abandon()
    stream.feed(b"hi")
    assert taken == [3, 4, 2] and stream.received == 9
    with pytest.raises(DownstreamGoneError):
        await stream.read()


async def test_a_failed_body_is_read_to_the_failure() -> None:
    stream = BodyStream()
    stream.feed(b"part")
    stream.fail(DownstreamGoneError("reset"))
    assert await stream.read() == b"part"
    with pytest.raises(DownstreamGoneError):
        await stream.read()


async def read_all(body: RequestBody) -> bytes:
    cursor = body.replay()
    out = b""
    while piece := await cursor.read():
        out += piece
    return out


@pytest.mark.parametrize(
    ("pieces", "limit", "replayable"),
    [([b"a" * 10, b"b" * 10], 20, True), ([b"a" * 10, b"b" * 11], 20, False), ([], 20, True)],
    ids=["at-the-limit", "over-the-limit", "empty"],
)
async def test_a_request_body_is_replayed_only_within_its_limit(
    pieces: list[bytes], limit: int, replayable: bool
) -> None:
    stream = BodyStream()
    for piece in pieces:
        stream.feed(piece)
    stream.end()
    body = RequestBody(stream, length=None, limit=limit)
    mirror = asyncio.ensure_future(body.whole())
    assert await read_all(body) == b"".join(pieces)  # the first try always gets it whole
    assert body.replayable is replayable
    if replayable:
        assert await read_all(body) == b"".join(pieces)
        assert await mirror == b"".join(pieces)
    else:
        with pytest.raises(NotReplayableError):
            body.replay()
        assert await mirror is None


async def test_a_second_try_replays_the_kept_start_and_reads_on_from_the_client() -> None:
    stream = BodyStream()
    stream.feed(b"one")
    body = RequestBody(stream, length=None)
    first = body.replay()
    assert await first.read() == b"one"  # the first try failed here
    second = body.replay()
    assert await second.read() == b"one"
    stream.feed(b"two")
    stream.end()
    assert [await second.read(), await second.read()] == [b"two", b""]


async def test_closing_an_exchange_releases_a_waiting_mirror_and_the_client_body() -> None:
    taken: list[int] = []
    stream = BodyStream(on_taken=taken.append)
    stream.feed(b"unread")
    body = RequestBody(stream, length=100)
    mirror = asyncio.ensure_future(body.whole())
    body.close()
    assert await mirror is None and taken == [6]
