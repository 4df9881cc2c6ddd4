"""Message bodies in transit through the waypoint, and how their transfer fails.

A body is never held whole: :class:`BodyStream` passes it from the side that receives it to the
side that sends it on, piece by piece, with backpressure. An HTTP/1.1 reader waits in ``put`` while
more than ``high_water`` bytes wait to be taken (it stops reading its socket); an HTTP/2 reader,
whose peer is bounded by the stream's flow-control window, ``feed``\\ s without waiting and gives the
window back (``on_taken``) only as the consumer takes the bytes.

A request body is also :class:`RequestBody`: like Envoy's router, it keeps a copy of what it
forwarded for a retry (or a mirror), up to ``per_request_buffer_limit``. A body larger than that
simply stops being replayable: the request is forwarded once, never retried, and not mirrored.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

__all__ = [
    "PER_REQUEST_BUFFER_LIMIT",
    "BodyCursor",
    "BodyStream",
    "DownstreamGoneError",
    "NotReplayableError",
    "RequestBody",
    "UpstreamError",
]

PER_REQUEST_BUFFER_LIMIT = 1024 * 1024
"""Envoy's default ``per_request_buffer_limit_bytes`` (the connection buffer limit, 1 MiB): how
much of a request body is kept to retry or mirror the request."""
HIGH_WATER = 256 * 1024
"""Bytes a body stream holds before an HTTP/1.1 producer waits for its consumer."""


class UpstreamError(Exception):
    """One try failed: ``connect`` (never connected), else the upstream closed the connection
    (``reset`` False, Envoy's UC) or reset the HTTP/2 stream (``reset`` True, UR)."""

    def __init__(self, *, connect: bool, detail: str, reset: bool = False) -> None:
        super().__init__(detail)
        self.connect = connect
        self.reset = reset

    @property
    def flag(self) -> str:
        """Envoy's response flag for this failure."""
        return "UF" if self.connect else "UR" if self.reset else "UC"


class DownstreamGoneError(Exception):
    """The client closed its connection or reset its stream before the exchange ended (DC)."""


class NotReplayableError(Exception):
    """The request body outgrew the per-request buffer limit: it cannot be sent a second time."""


class BodyStream:
    """One body on its way from a producer to one consumer; ``read`` returns ``b""`` at the end."""

    def __init__(
        self, *, high_water: int = HIGH_WATER, on_taken: Callable[[int], None] | None = None
    ) -> None:
        """``on_taken(n)`` is told when the consumer took (or dropped) ``n`` bytes that were fed."""
        self._pieces: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._high_water = high_water
        self._on_taken = on_taken
        self._ended = False
        self._abandoned = False
        self._error: BaseException | None = None
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self.trailers: list[tuple[str, str]] = []
        self.received = 0
        """Bytes the producer delivered so far."""

    @property
    def ended(self) -> bool:
        """The producer delivered the whole body (it may not all have been read yet)."""
        return self._ended

    def feed(self, data: bytes) -> None:
        """Adds a piece without waiting (the producer is bounded by a flow-control window)."""
        if not data or self._ended or self._error is not None:
            return
        self.received += len(data)
        if self._abandoned:
            self._taken(len(data))
            return
        self._pieces.append(data)
        self._size += len(data)
        self._readable.set()
        if self._size > self._high_water:
            self._writable.clear()

    async def put(self, data: bytes) -> None:
        """Adds a piece, first waiting while the consumer is ``high_water`` bytes behind."""
        await self._writable.wait()
        self.feed(data)

    def end(self, trailers: list[tuple[str, str]] | None = None) -> None:
        """The body is complete (with its trailers, if any)."""
        self.trailers = trailers or []
        self._ended = True
        self._readable.set()

    def fail(self, error: BaseException) -> None:
        """The body will not complete: ``read`` raises ``error`` once the pieces before it are read."""
        if not self._ended and self._error is None:
            self._error = error
            self._readable.set()
            self._writable.set()

    def abandon(self) -> None:
        """The consumer is gone: what waits and what still comes is dropped (and given back)."""
        self._abandoned = True
        dropped, self._size = self._size, 0
        self._pieces.clear()
        self._taken(dropped)
        self._writable.set()
        self._readable.set()

    async def read(self) -> bytes:
        """The next piece; ``b""`` once the body is complete; raises what ``fail`` was given."""
        while not self._pieces:
            if self._abandoned:
                raise DownstreamGoneError("the rest of this body was given up")
            if self._ended:
                return b""
            if self._error is not None:
                raise self._error
            self._readable.clear()
            await self._readable.wait()
        piece = self._pieces.popleft()
        self._size -= len(piece)
        if self._size <= self._high_water:
            self._writable.set()
        self._taken(len(piece))
        return piece

    def _taken(self, n: int) -> None:
        if n and self._on_taken is not None:
            self._on_taken(n)


class RequestBody:
    """A request's body as it arrives, with a copy of its start kept for a second try."""

    def __init__(
        self, source: BodyStream | None, *, length: int | None, limit: int = PER_REQUEST_BUFFER_LIMIT
    ) -> None:
        """``source`` None: no body. ``length``: what the request announced (None: unknown)."""
        self._source = source
        self.length = length
        self._limit = limit
        self._kept: list[bytes] = []
        self._kept_size = 0
        self._taken = 0
        self.overflow = False
        """More than the limit was forwarded: no retry, no mirror."""
        self.ended = source is None
        self.ended_at = asyncio.get_running_loop().time() if self.ended else 0.0
        """When the whole body had gone upstream (loop time): Envoy's timeouts start there."""
        self._on_end: list[Callable[[], None]] = []
        self._settled = asyncio.Event()
        if self.ended:
            self._settled.set()

    @classmethod
    def of(cls, data: bytes) -> RequestBody:
        """A body known whole in advance (a mirrored copy)."""
        if not data:
            return cls(None, length=0)
        stream = BodyStream()
        stream.feed(data)
        stream.end()
        return cls(stream, length=len(data))

    @property
    def received(self) -> int:
        """Bytes of the body received from the client so far."""
        return self._source.received if self._source is not None else 0

    @property
    def replayable(self) -> bool:
        """Whether another try can send the body from its start."""
        return not self.overflow

    @property
    def trailers(self) -> list[tuple[str, str]]:
        """The request's trailers, once it ended (HTTP/2)."""
        return self._source.trailers if self._source is not None else []

    def replay(self) -> BodyCursor:
        """A reader from the body's start; raises NotReplayableError when part of it is gone."""
        if self.overflow:
            raise NotReplayableError(f"the request body outgrew the {self._limit}-byte buffer limit")
        return BodyCursor(self)

    async def whole(self) -> bytes | None:
        """The complete body once the request has sent it, or None when it was over the limit
        (or the exchange ended first)."""
        await self._settled.wait()
        return b"".join(self._kept) if self.ended and not self.overflow else None

    def when_ended(self, callback: Callable[[], None]) -> None:
        """Calls ``callback`` once the whole body went upstream (now, if it did already)."""
        if self.ended:
            callback()
        else:
            self._on_end.append(callback)

    def forget(self, callback: Callable[[], None]) -> None:
        """Withdraws a :meth:`when_ended` callback that has not been called."""
        if callback in self._on_end:
            self._on_end.remove(callback)

    def close(self) -> None:
        """The exchange is over: the rest of the body is not wanted, and no one waits for it."""
        if self._source is not None and not self.ended:
            self._source.abandon()
        self._settled.set()

    def piece(self, index: int) -> bytes | None:
        """Kept piece ``index``; None when the body must be read further first."""
        if index < len(self._kept):
            return self._kept[index]
        if index < self._taken:
            raise NotReplayableError(f"the request body outgrew the {self._limit}-byte buffer limit")
        return None

    async def pull(self) -> bytes:
        """Reads the next piece from the client (keeping a copy while within the limit)."""
        if self._source is None or self.ended:
            return b""
        data = await self._source.read()
        if not data:
            self.ended = True
            self.ended_at = asyncio.get_running_loop().time()
            self._settled.set()
            for callback in self._on_end:
                callback()
            self._on_end.clear()
            return b""
        self._taken += 1
        if not self.overflow:
            self._kept_size += len(data)
            if self._kept_size > self._limit:
                self.overflow = True
                self._kept.clear()
                self._settled.set()
            else:
                self._kept.append(data)
        return data


class BodyCursor:
    """One try's reader of a :class:`RequestBody`: the kept pieces first, then the client's."""

    def __init__(self, body: RequestBody) -> None:
        self.body = body
        self._index = 0

    async def read(self) -> bytes:
        """The next piece, ``b""`` at the end; raises DownstreamGoneError when the client left."""
        piece = self.body.piece(self._index)
        if piece is None:
            piece = await self.body.pull()
        if piece:
            self._index += 1
        return piece
