"""A small HTTP/1.1 server for the debug and metrics port (15014); GET only, one request per connection.

Routes map a path to a function returning ``(content type, body)``; it is called on the event
loop, so it reads live state without locks. Requests are bounded (8 KiB of head, 5 s to send it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from istiod_lite.push.hub import Hub
from istiod_lite.push.status import syncz
from mesh.rt.metrics import render

__all__ = ["DebugServer", "Route", "debug_routes"]

Route = Callable[[], tuple[str, bytes]]

_MAX_HEAD = 8 * 1024
_READ_TIMEOUT = 5.0
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request", 500: "Internal Error"}


def debug_routes(hub: Hub, registry: CollectorRegistry) -> dict[str, Route]:
    """``/debug/syncz`` (JSON) and ``/metrics`` (Prometheus text)."""
    return {
        "/debug/syncz": lambda: ("application/json", json.dumps(syncz(hub), indent=1).encode()),
        "/metrics": lambda: (CONTENT_TYPE_LATEST, render(registry)),
    }


class DebugServer:
    """Serves ``routes`` over HTTP/1.1 on one TCP port."""

    def __init__(self, routes: Mapping[str, Route]) -> None:
        self._routes = dict(routes)
        self._server: asyncio.Server | None = None

    async def start(self, *, host: str = "0.0.0.0", port: int = 15014) -> int:
        """Starts listening; returns the bound port (useful with ``port=0``)."""
        self._server = await asyncio.start_server(self._handle, host, port, limit=_MAX_HEAD)
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def close(self) -> None:
        """Stops listening and waits for the server to close."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, content_type, body = await asyncio.wait_for(self._answer(reader), _READ_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            status, content_type, body = 400, "text/plain", b"bad request\n"
        head = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):
            writer.write(head.encode() + body)
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
        path = rest.partition(" ")[0].partition("?")[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET\n"
        route = self._routes.get(path)
        if route is None:
            known = "\n".join(sorted(self._routes))
            return 404, "text/plain", f"no such page; try one of:\n{known}\n".encode()
        content_type, body = route()
        return 200, content_type, b"" if method == "HEAD" else body
