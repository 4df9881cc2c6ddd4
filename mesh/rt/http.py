"""A small HTTP/1.1 server for admin, metrics and readiness ports; one request per connection.

Routes map a path to a handler called on the event loop with the method and the query, so it
reads live state without locks. Requests are bounded (8 KiB of head, 5 s to send it); anything
malformed gets 400 and the server carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import threading
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mesh.http1 import Http1Error, Message, RequestParser

__all__ = [
    "AsyncHandler",
    "Handler",
    "HttpReply",
    "HttpServer",
    "ThreadedHttpServer",
    "json_reply",
    "text_reply",
]

_MAX_HEAD = 8 * 1024
_READ_TIMEOUT = 5.0
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class HttpReply:
    """A status, a content type and a body."""

    status: int
    content_type: str
    body: bytes


Handler = Callable[[str, Mapping[str, str]], HttpReply]
"""(method, query parameters) -> reply."""
AsyncHandler = Callable[[str, Mapping[str, str]], Awaitable[HttpReply]]
"""A page that must wait for its answer (e.g. asks other processes); it has the request's 5 s."""


def text_reply(text: str, *, status: int = 200) -> HttpReply:
    """A plain-text reply."""
    return HttpReply(status, "text/plain; charset=utf-8", text.encode())


def json_reply(value: Any, *, status: int = 200) -> HttpReply:
    """A JSON reply (indented, for people reading it with curl)."""
    return HttpReply(status, "application/json", json.dumps(value, indent=1, default=str).encode() + b"\n")


class HttpServer:
    """Serves ``routes`` on one TCP port."""

    def __init__(self, routes: Mapping[str, Handler | AsyncHandler]) -> None:
        self._routes = dict(routes)
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Starts listening; returns the bound port (useful with ``port=0``)."""
        self._server = await asyncio.start_server(
            self._handle, host, port, limit=_MAX_HEAD, reuse_address=True
        )
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def close(self) -> None:
        """Stops listening."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT):
                reply, head_only = await self._answer(reader)
        except (TimeoutError, Http1Error):
            reply, head_only = text_reply("bad request\n", status=400), False
        head = (
            f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Unknown')}\r\n"
            f"Content-Type: {reply.content_type}\r\nContent-Length: {len(reply.body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):
            writer.write(head.encode() + (b"" if head_only else reply.body))
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[HttpReply, bool]:
        request = await _read_request(reader)
        path, _, query = request.target.partition("?")
        handler = self._routes.get(path)
        if handler is None:
            known = "\n".join(sorted(self._routes))
            return text_reply(f"no such page; try one of:\n{known}\n", status=404), False
        params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
        try:
            answer = handler("GET" if request.method == "HEAD" else request.method, params)
            reply = await answer if inspect.isawaitable(answer) else answer
        except Exception as exc:  # a broken page must not take the port down
            reply = text_reply(f"internal error: {exc}\n", status=500)
        return reply, request.method == "HEAD"


async def _read_request(reader: asyncio.StreamReader) -> Message:
    """The first request on the connection, at most ``_MAX_HEAD`` bytes; raises Http1Error."""
    parser = RequestParser(max_body=_MAX_HEAD)
    received = 0
    while True:
        data = await reader.read(_MAX_HEAD)
        received += len(data)
        if not data or received > _MAX_HEAD:
            raise Http1Error(400, "request incomplete or over the admin port's 8 KiB")
        requests = parser.feed(data)
        if requests:
            return requests[0]


class ThreadedHttpServer:
    """An :class:`HttpServer` on its own thread and event loop, so it answers while the main loop is
    busy: a readiness probe must not time out because the data path is saturated (reliability
    catalogue 33). Its handlers run on that thread, so they may only read state that is safe to read
    from another thread (plain attributes and copies of containers, no asyncio calls)."""

    def __init__(self, routes: Mapping[str, Handler], *, name: str = "http") -> None:
        self._server = HttpServer(routes)
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def start(self, host: str, port: int) -> int:
        """Starts the thread and listens; returns the bound port."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        started = asyncio.run_coroutine_threadsafe(self._server.start(host, port), loop)
        try:
            return await asyncio.wrap_future(started)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stops listening and ends the thread (idempotent)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        closed = asyncio.run_coroutine_threadsafe(self._server.close(), loop)
        with contextlib.suppress(Exception):
            await asyncio.wrap_future(closed)
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, 2.0)
        if not thread.is_alive():
            loop.close()
