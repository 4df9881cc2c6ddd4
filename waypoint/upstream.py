"""The waypoint's side towards endpoints: pooled HTTP/1.1 keep-alive connections (TCP, or HBONE
streams through the endpoint's ztunnel) and multiplexed HTTP/2 ones (``waypoint.h2_upstream``).

An exchange streams both ways: the request body goes up as the client sends it (a task pumps it,
waiting for the connection to drain), and :meth:`Upstreams.exchange` returns as soon as the
response head arrived, the body following piece by piece through :class:`UpstreamResponse`. A
connection is pooled again only when both bodies went through whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from mesh.h2 import H2ProtocolError
from mesh.http1 import (
    LAST_CHUNK,
    BodyChunk,
    Event,
    Http1Error,
    Message,
    MessageEnd,
    ResponseParser,
    encode_chunk,
    serialize_request_head,
)
from mesh.l7.balancing import Endpoint
from mesh.rt.hbone.errors import ConnectionClosedError, StreamResetError
from waypoint.body import BodyCursor, DownstreamGoneError, NotReplayableError, RequestBody, UpstreamError
from waypoint.config import ClusterPolicy
from waypoint.h2_upstream import H2Upstream

__all__ = ["Connector", "Outgoing", "UpstreamResponse", "Upstreams"]

_READ = 65536
_DEFAULT_POLICY = ClusterPolicy()

Connector = Callable[[str, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
"""Opens a connection to ``host:port`` (a TCP connection, or an HBONE stream through a ztunnel)."""


async def _tcp(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.open_connection(host, port)
    except OSError as exc:
        raise UpstreamError(connect=True, detail=f"connect to {host}:{port}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Outgoing:
    """The request the waypoint sends upstream (after the route's edits); its body comes apart."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    downstream_http2: bool = False
    grpc: bool = False


class UpstreamResponse(Protocol):
    """A response whose head arrived; its body is read piece by piece."""

    head: Message
    """Status and end-to-end headers (no Content-Length: see ``length``)."""
    length: int | None
    """The body's announced length, None when unknown (chunked, HTTP/2 without content-length)."""

    @property
    def trailers(self) -> list[tuple[str, str]]:
        """The trailer block, once the body ended (HTTP/2: gRPC's status)."""
        ...

    @property
    def empty(self) -> bool:
        """Known at the head already: no body and no trailers follow."""
        ...

    async def read(self) -> bytes:
        """The next body piece, ``b""`` at the end; raises UpstreamError (connection closed or
        stream reset midway) or DownstreamGoneError (the request body's client left)."""
        ...

    def abort(self) -> None:
        """Gives the response up before its end (retry, timeout, client gone): never reused."""
        ...


def announced_length(message: Message) -> int | None:
    """A response's Content-Length, or None."""
    value = message.header("content-length")
    return int(value) if value is not None and value.strip().isdigit() else None


@dataclass(slots=True)
class _Pooled:
    """An upstream connection with the requests it carried and when it became idle."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    uses: int = 0
    idle_since: float = 0.0


class Upstreams:
    """Keep-alive HTTP/1.1 connections to endpoints, each used by one request at a time, and one
    HTTP/2 connection per endpoint for clusters that speak it. A cluster's
    ``max_requests_per_connection`` and ``idle_timeout`` retire pooled connections."""

    def __init__(self, *, tunnel: Connector | None = None, max_idle: int = 32) -> None:
        self._idle: dict[tuple[str, int], list[_Pooled]] = {}
        self._h2: dict[tuple[str, int], H2Upstream] = {}
        self._max_idle = max_idle
        self.tunnel = tunnel

    async def exchange(
        self,
        endpoint: Endpoint,
        outgoing: Outgoing,
        body: RequestBody,
        *,
        policy: ClusterPolicy | None = None,
    ) -> UpstreamResponse:
        """Sends ``outgoing`` with ``body`` to ``endpoint``; returns once the response head arrived.
        Raises UpstreamError (or DownstreamGoneError). HTTP/2 when the cluster says so (or says "as
        downstream" and the client spoke it)."""
        policy = policy or _DEFAULT_POLICY
        if policy.http2 or (policy.http2_if_downstream and outgoing.downstream_http2):
            return await self._exchange_h2(endpoint, outgoing, body)
        key = (endpoint.host, endpoint.port)
        idle = self._idle.get(key)
        while idle:
            pooled = idle.pop()
            if time.monotonic() - pooled.idle_since > policy.idle_timeout:
                pooled.writer.close()
                continue
            try:  # a pooled connection the server closed meanwhile: once more on a fresh one
                return await _H1Response.start(
                    self, key, pooled, outgoing=outgoing, cursor=body.replay(), policy=policy
                )
            except UpstreamError:
                if not body.replayable:
                    raise
                break
        reader, writer = await self.open(endpoint)
        return await _H1Response.start(
            self, key, _Pooled(reader, writer), outgoing=outgoing, cursor=body.replay(), policy=policy
        )

    async def open(self, endpoint: Endpoint) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A new connection to ``endpoint``: TCP, or an HBONE stream through its ztunnel."""
        if endpoint.hbone and self.tunnel is None:
            raise UpstreamError(
                connect=True, detail=f"{endpoint.host} is reached over HBONE, which is off here"
            )
        connect = self.tunnel if endpoint.hbone and self.tunnel is not None else _tcp
        return await connect(endpoint.host, endpoint.port)

    def pool(self, key: tuple[str, int], pooled: _Pooled) -> bool:
        """Keeps an idle connection for the next request; False when the pool is full."""
        idle = self._idle.setdefault(key, [])
        if len(idle) >= self._max_idle:
            return False
        pooled.idle_since = time.monotonic()
        idle.append(pooled)
        return True

    async def _exchange_h2(
        self, endpoint: Endpoint, outgoing: Outgoing, body: RequestBody
    ) -> UpstreamResponse:
        key = (endpoint.host, endpoint.port)
        connection = self._h2.get(key)
        if connection is None or not connection.usable:
            reader, writer = await self.open(endpoint)
            connection = self._h2[key] = H2Upstream(reader, writer)
        host = next((v for k, v in outgoing.headers if k == "host"), f"{endpoint.host}:{endpoint.port}")
        headers = [(k, v) for k, v in outgoing.headers if k != "host"]
        if body.length:
            headers.append(("content-length", str(body.length)))
        if outgoing.grpc:
            headers.append(("te", "trailers"))  # gRPC servers require it; it is hop-by-hop in HTTP/1.1
        try:
            return await connection.request(outgoing.method, host, outgoing.target, headers, body.replay())
        except (ConnectionError, OSError, StreamResetError, H2ProtocolError) as exc:
            raise UpstreamError(
                connect=False, detail=f"HTTP/2 to {key[0]}:{key[1]}: {exc}",
                reset=isinstance(exc, StreamResetError),
            ) from None  # fmt: skip

    def close(self) -> None:
        """Closes every idle connection."""
        for connections in self._idle.values():
            for pooled in connections:
                pooled.writer.close()
        self._idle.clear()
        for connection in self._h2.values():
            connection.close()
        self._h2.clear()


class _H1Response:
    """One HTTP/1.1 exchange on a connection of its own: the request body pumped up by a task,
    the response read as the consumer asks for it."""

    def __init__(
        self, owner: Upstreams, key: tuple[str, int], pooled: _Pooled, policy: ClusterPolicy
    ) -> None:
        self._owner, self._key, self._pooled, self._policy = owner, key, pooled, policy
        self._events: list[Event] = []
        self._parser = ResponseParser(stream=True)
        self._pump: asyncio.Task[None] | None = None
        self._done = False
        self.head = Message()
        self.length: int | None = None
        self.trailers: list[tuple[str, str]] = []

    @classmethod
    async def start(
        cls, owner: Upstreams, key: tuple[str, int], pooled: _Pooled, *, outgoing: Outgoing,
        cursor: BodyCursor, policy: ClusterPolicy,
    ) -> _H1Response:  # fmt: skip
        """Sends the head, starts the body and waits for the response head."""
        self = cls(owner, key, pooled, policy)
        if outgoing.method == "HEAD":
            self._parser = ResponseParser(stream=True, head_only=True)
        length = cursor.body.length
        pooled.writer.write(
            serialize_request_head(outgoing.method, outgoing.target, outgoing.headers, length=length)
        )
        if length != 0:
            self._pump = asyncio.ensure_future(self._send_body(cursor, chunked=length is None))
        try:
            while True:
                event = await self._next()
                if isinstance(event, Message) and (event.status >= 200 or event.status == 101):
                    self.head, self.length = event, announced_length(event)
                    self.head.headers = event.end_to_end_headers()
                    return self
        except BaseException:
            self.abort()
            raise

    async def _send_body(self, cursor: BodyCursor, *, chunked: bool) -> None:
        writer = self._pooled.writer
        try:
            while piece := await cursor.read():
                writer.write(encode_chunk(piece) if chunked else piece)
                await writer.drain()
            if chunked:
                writer.write(LAST_CHUNK)
                await writer.drain()
        except (OSError, StreamResetError, ConnectionClosedError):
            pass  # the upstream went away: the response side reports it
        except (DownstreamGoneError, NotReplayableError):
            writer.close()  # the exchange cannot complete: the response side sees the close
            raise

    async def _next(self) -> Event:
        """The next parser event, reading the connection as needed."""
        reader = self._pooled.reader
        while not self._events:
            try:
                data = await reader.read(_READ)
                self._events = self._parser.events(data) if data else self._parser.finish_events()
            except (OSError, Http1Error, StreamResetError, ConnectionClosedError) as exc:
                raise self._failure(str(exc)) from None
            if not data and not self._events:
                raise self._failure("upstream closed before the whole response")
        return self._events.pop(0)

    def _failure(self, detail: str) -> Exception:
        pump = self._pump
        if pump is not None and pump.done() and not pump.cancelled() and pump.exception() is not None:
            return DownstreamGoneError(str(pump.exception()))
        return UpstreamError(connect=False, detail=detail)

    @property
    def empty(self) -> bool:
        """The head is all (HEAD, 204, 304, Content-Length: 0)."""
        return bool(self._events) and isinstance(self._events[0], MessageEnd)

    async def read(self) -> bytes:
        """The next body piece, ``b""`` at the end."""
        while not self._done:
            try:
                event = await self._next()
            except BaseException:
                self.abort()
                raise
            if isinstance(event, BodyChunk):
                return event.data
            if isinstance(event, MessageEnd):
                await self._finish()
        return b""

    async def _finish(self) -> None:
        """The response is whole: the connection goes back to the pool if the request went too."""
        self._done = True
        pump, pooled = self._pump, self._pooled
        if pump is not None and not pump.done():
            await asyncio.sleep(0)  # its last drain may just have returned: let it end
        sent = pump is None or (pump.done() and not pump.cancelled() and pump.exception() is None)
        pooled.uses += 1
        limit = self._policy.max_requests_per_connection
        reusable = sent and self.head.keep_alive and not self._events and not (limit and pooled.uses >= limit)
        if not (reusable and self._owner.pool(self._key, pooled)):
            self._close()

    def abort(self) -> None:
        """Gives the exchange up: the connection is closed, never reused."""
        self._done = True
        self._close()

    def _close(self) -> None:
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()
        with contextlib.suppress(Exception):
            self._pooled.writer.close()
