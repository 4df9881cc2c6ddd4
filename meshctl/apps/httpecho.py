"""An HTTP echo server, like Istio's helloworld and httpbin: it answers with JSON naming the pod,
its version label, the request's method, path and headers, and the peer addresses.

    python -m meshctl.apps.httpecho --port 8080   # identity from POD_NAME/HOSTNAME, POD_NAMESPACE, VERSION

Paths: ``/status/<code>`` answers that status, ``/delay/<seconds>`` waits (at most 10 s) first,
``/fail-first/<n>/<key>`` answers 503 to the first ``n`` requests for ``key`` (then it echoes, with
``attempt``: how many requests for ``key`` this pod saw), ``/healthz`` answers ``ok``; anything else
is echoed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

from mesh.http1 import Http1Error, Message, RequestParser, serialize_response
from mesh.rt.loop import run as run_loop

__all__ = ["Identity", "Reply", "handle", "main", "serve", "start_server"]

_MAX_DELAY = 10.0
_MAX_KEYS = 10_000
"""How many /fail-first keys a server remembers (then it starts over)."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who answers: the pod, its namespace, version and node."""

    pod: str
    namespace: str
    version: str
    node: str


@dataclass(frozen=True, slots=True)
class Reply:
    """A response to send, after ``delay`` seconds."""

    status: int
    body: bytes
    content_type: str = "application/json"
    delay: float = 0.0


def handle(
    request: Message, *, identity: Identity, client: str, server: str, seen: dict[str, int] | None = None
) -> Reply:
    """The reply to one request (pure but for ``seen``, the per-key request counts of ``/fail-first``)."""
    url = urlsplit(request.target)
    path = url.path or "/"
    if path == "/healthz":
        return Reply(200, b"ok\n", content_type="text/plain")
    status, delay = 200, 0.0
    head, _, arg = path.strip("/").partition("/")
    if head == "status" and arg.isdigit() and 100 <= int(arg) <= 599:
        status = int(arg)
    elif head == "fail-first":
        count, _, key = arg.partition("/")
        if not count.isdigit() or not key:
            return Reply(400, b'{"error": "use /fail-first/<failures>/<key>, e.g. /fail-first/2/abc"}\n')
        seen = {} if seen is None else seen
        if len(seen) > _MAX_KEYS:
            seen.clear()
        seen[key] = attempt = seen.get(key, 0) + 1
        if attempt <= int(count):
            return Reply(503, json.dumps({"attempt": attempt, "failing": True}).encode() + b"\n")
    elif head == "delay":
        try:
            delay = min(max(float(arg), 0.0), _MAX_DELAY)
        except ValueError:
            return Reply(400, b'{"error": "delay takes seconds, e.g. /delay/0.5"}\n')
    headers: dict[str, str] = {}
    for name, value in request.headers:
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    doc: dict[str, Any] = {
        "pod": identity.pod,
        "namespace": identity.namespace,
        "version": identity.version,
        "node": identity.node,
        "method": request.method,
        "path": path,
        "query": url.query,
        "headers": headers,
        "client": client,
        "server": server,
        "body_bytes": len(request.body),
    }
    if head == "fail-first" and seen is not None:
        doc["attempt"] = seen[arg.partition("/")[2]]
    return Reply(status, (json.dumps(doc, indent=2) + "\n").encode(), delay=delay)


def _addr(sockname: Any) -> str:
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        host = f"[{sockname[0]}]" if ":" in str(sockname[0]) else str(sockname[0])
        return f"{host}:{sockname[1]}"
    return str(sockname)


class _EchoProtocol(asyncio.Protocol):
    """One connection: parse, answer in order (delays keep the order), keep alive."""

    def __init__(self, identity: Identity, seen: dict[str, int]) -> None:
        self._identity = identity
        self._seen = seen
        self._parser = RequestParser()
        self._queue: deque[Message] = deque()
        self._busy = False
        self._transport: asyncio.Transport | None = None
        self._client = self._server = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._client = _addr(transport.get_extra_info("peername"))
        self._server = _addr(transport.get_extra_info("sockname"))

    def data_received(self, data: bytes) -> None:
        try:
            self._queue.extend(self._parser.feed(data))
        except Http1Error as exc:
            body = f"{exc.message}\n".encode()
            self._write(
                serialize_response(exc.status, "", [("content-type", "text/plain")], body, keep_alive=False)
            )
            self._close()
            return
        self._drain()

    def _drain(self) -> None:
        while self._queue and not self._busy and self._transport is not None:
            request = self._queue.popleft()
            reply = handle(
                request, identity=self._identity, client=self._client, server=self._server, seen=self._seen
            )
            if reply.delay > 0:
                self._busy = True
                asyncio.get_running_loop().call_later(reply.delay, self._finish, request, reply)
                return
            self._send(request, reply)

    def _finish(self, request: Message, reply: Reply) -> None:
        self._busy = False
        self._send(request, reply)
        self._drain()

    def _send(self, request: Message, reply: Reply) -> None:
        headers = [
            ("content-type", reply.content_type),
            ("server", "httpecho"),
            ("x-pod", self._identity.pod),
        ]
        body = b"" if request.method == "HEAD" else reply.body
        self._write(serialize_response(reply.status, "", headers, body, keep_alive=request.keep_alive))
        if not request.keep_alive:
            self._close()

    def _write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


def identity_from_env(*, name: str | None, version: str | None) -> Identity:
    """The identity from flags, else POD_NAME/HOSTNAME, POD_NAMESPACE, VERSION, NODE_NAME."""
    env = os.environ
    return Identity(
        pod=name or env.get("POD_NAME") or env.get("HOSTNAME") or socket.gethostname(),
        namespace=env.get("POD_NAMESPACE", ""),
        version=version or env.get("VERSION") or env.get("SERVICE_VERSION") or "",
        node=env.get("NODE_NAME", ""),
    )


async def start_server(host: str, port: int, identity: Identity) -> asyncio.Server:
    """Listens on ``host:port`` (0: any free port) and serves in the background."""
    loop = asyncio.get_running_loop()
    seen: dict[str, int] = {}  # /fail-first's request counts, shared by the connections
    return await loop.create_server(
        lambda: _EchoProtocol(identity, seen), host, port, reuse_address=True, backlog=1024
    )


async def serve(host: str, port: int, identity: Identity) -> None:
    """Serves until the process is stopped."""
    server = await start_server(host, port, identity)
    print(
        f"httpecho: listening on {host}:{port} as pod {identity.pod!r} version {identity.version!r}",
        flush=True,
    )
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m meshctl.apps.httpecho [--host H] [--port P] [--name N] [--version V]``."""
    parser = argparse.ArgumentParser(
        prog="httpecho", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default all)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument("--name", default=None, help="pod name to report (default $POD_NAME or $HOSTNAME)")
    parser.add_argument("--version", default=None, help="version to report (default $VERSION)")
    args = parser.parse_args(argv)
    run_loop(serve(args.host, args.port, identity_from_env(name=args.name, version=args.version)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
