"""A lean gRPC client on our own HTTP/2 engine: unary calls and bidirectional streams.

The data plane talks gRPC to istiod for two things only, Delta ADS and the CA, and grpcio costs the
process about 12 MB of mapped library plus its threads; importing this client costs about 50 KB.
One :class:`RpcChannel` keeps one HTTP/2 connection (TLS verified against the given roots and server
name, ALPN ``h2``; plaintext only when no TLS context is given, for tests) and opens a new one when
the old one died. The connection sends an HTTP/2 PING every 30 s (10 s to answer) and has TCP
keepalive, so a vanished server is noticed. gRPC servers refuse PINGs that come too often (istiod
allows one per 15 s; grpc's default is one per 5 minutes without data) with GOAWAY ENHANCE_YOUR_CALM.

    channel = RpcChannel("istiod:15012", tls=client_tls(roots_pem), server_name="istiod.istio-system.svc")
    answer = await channel.unary("/pkg.Service/Method", request_bytes, metadata=..., timeout=10.0)
    call = await channel.stream("/pkg.Service/Stream", metadata=...)
    await call.write(message); reply = await call.read()  # None: the server ended the call with OK

The target may list replicas (``10.0.0.2:15012,10.0.0.3:15012``): the channel stays with the one it
reached, and when it cannot connect there tries the next ones in turn (each process starts at a
random one, so clients spread over the replicas). On Kubernetes one Service name does this instead.
"""

from __future__ import annotations

import asyncio
import random
import ssl

from mesh.h2.config import H2Config
from mesh.rpc import RpcError, StatusCode, timeout_value
from mesh.rt.net.timers import LoopScheduler, Scheduler
from mesh.rt.rpc._call import RpcCall
from mesh.rt.rpc._connection import RpcConnection

__all__ = [
    "PING_INTERVAL",
    "RpcCall",
    "RpcChannel",
    "RpcError",
    "StatusCode",
    "client_tls",
    "parse_target",
    "parse_targets",
]

DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024
PING_INTERVAL = 30.0
PING_TIMEOUT = 10.0
_USER_AGENT = "ambient-mesh-rpc/0.1"


def client_tls(roots_pem: bytes) -> ssl.SSLContext:
    """A client context that trusts only ``roots_pem`` and checks the server's name; ALPN ``h2``."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=roots_pem.decode("ascii"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])
    return ctx


def parse_targets(target: str) -> list[tuple[str, int]]:
    """A comma-separated list of ``host:port`` targets (replicas); ValueError names what is wrong."""
    return [parse_target(part.strip()) for part in target.split(",")]


def parse_target(target: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` as (host, port); ValueError names what is wrong."""
    host, sep, port = target.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"gRPC target {target!r} is not host:port (e.g. istiod.istio-system.svc:15012)")
    return host, int(port)


class RpcChannel:
    """Calls to one server (of the replicas ``target`` lists) over one HTTP/2 connection, re-opened
    on demand after it ends."""

    def __init__(
        self,
        target: str,
        *,
        tls: ssl.SSLContext | None,
        server_name: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE,
        connect_timeout: float = 10.0,
        ping_interval: float = PING_INTERVAL,
        ping_timeout: float = PING_TIMEOUT,
        config: H2Config | None = None,
        scheduler: Scheduler | None = None,
    ) -> None:
        self.target = target
        self._targets = parse_targets(target)
        self._current = random.randrange(len(self._targets))
        self._tls = tls
        self._server_name = server_name or self._targets[0][0]
        self._max_message = max_message_bytes
        self._connect_timeout = connect_timeout
        self._ping = (ping_interval, ping_timeout)
        self._config = config or H2Config()
        self._scheduler = scheduler or LoopScheduler()
        self._conn: RpcConnection | None = None
        self._draining: set[RpcConnection] = set()
        self._lock = asyncio.Lock()

    async def stream(self, method: str, *, metadata: tuple[tuple[str, str], ...] = ()) -> RpcCall:
        """Starts a streaming call of ``method`` (``/package.Service/Method``)."""
        conn = await self._connection()
        return conn.open(method, self._headers(metadata, None), max_message_bytes=self._max_message)

    async def unary(
        self,
        method: str,
        request: bytes,
        *,
        metadata: tuple[tuple[str, str], ...] = (),
        timeout: float | None = None,  # noqa: ASYNC109 - also sent to the server, as grpc-timeout
    ) -> bytearray:
        """One request, one response; DEADLINE_EXCEEDED after ``timeout`` seconds (connecting included)."""
        call: RpcCall | None = None
        try:
            async with asyncio.timeout(timeout):
                conn = await self._connection()
                call = conn.open(
                    method, self._headers(metadata, timeout), max_message_bytes=self._max_message
                )
                await call.write(request)
                await call.done_writing()
                response = await call.read()
                if response is None:
                    raise RpcError(StatusCode.INTERNAL, "the server ended a unary call without a response")
                while await call.read() is not None:  # the status follows; an error after the answer counts
                    pass
                return response
        except TimeoutError as err:
            raise RpcError(
                StatusCode.DEADLINE_EXCEEDED, f"no answer from {self.target} within {timeout} s"
            ) from err
        finally:
            if call is not None:
                call.cancel()  # a no-op once the call ended; else (deadline, task cancelled) resets it

    async def close(self) -> None:
        """Closes the connection (idempotent); calls still open fail with UNAVAILABLE."""
        for conn in (self._conn, *self._draining):
            if conn is not None:
                conn.close()
        self._conn = None
        self._draining.clear()

    async def _connection(self) -> RpcConnection:
        async with self._lock:
            conn = self._conn
            if conn is not None and conn.usable:
                return conn
            if conn is not None and not conn.closed:
                self._draining.add(conn)
            self._draining = {old for old in self._draining if not old.closed}
            self._conn = await self._connect()
            return self._conn

    @property
    def connected_to(self) -> str:
        """The replica the channel uses now (or tries first next time)."""
        host, port = self._targets[self._current]
        return f"{host}:{port}"

    async def _connect(self) -> RpcConnection:
        """Connects to the current replica, else to the next ones in turn (and stays there)."""
        errors: list[RpcError] = []
        for step in range(len(self._targets)):
            index = (self._current + step) % len(self._targets)
            try:
                conn = await self._connect_to(*self._targets[index])
            except RpcError as err:
                errors.append(err)
                continue
            self._current = index
            return conn
        if len(errors) == 1:
            raise errors[0]
        raise RpcError(
            StatusCode.UNAVAILABLE,
            f"cannot connect to any of {self.target}: " + "; ".join(e.details for e in errors),
            hint=errors[-1].hint,
        )

    async def _connect_to(self, host: str, port: int) -> RpcConnection:
        loop = asyncio.get_running_loop()
        target = f"{host}:{port}"
        authority = self._server_name if self._tls is not None else target
        scheme = "https" if self._tls is not None else "http"

        def factory() -> RpcConnection:
            return RpcConnection(
                authority=authority,
                scheme=scheme,
                config=self._config,
                scheduler=self._scheduler,
                ping=self._ping,
            )

        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    factory,
                    host,
                    port,
                    ssl=self._tls,
                    server_hostname=self._server_name if self._tls is not None else None,
                )
        except (OSError, ssl.SSLError, TimeoutError) as err:
            raise RpcError(
                StatusCode.UNAVAILABLE,
                f"cannot connect to {target}: {err or type(err).__name__}",
                hint="check that the server runs, is reachable, and that its certificate matches "
                f"the roots and the name {self._server_name!r}",
            ) from err
        if self._tls is not None:
            ssl_object = conn.transport.get_extra_info("ssl_object") if conn.transport else None
            if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                conn.close()
                raise RpcError(StatusCode.UNAVAILABLE, f"{target} did not agree to HTTP/2 (ALPN h2)")
        return conn

    def _headers(self, metadata: tuple[tuple[str, str], ...], timeout: float | None) -> list[tuple[str, str]]:
        headers = [("content-type", "application/grpc"), ("te", "trailers"), ("user-agent", _USER_AGENT)]
        if timeout is not None:
            headers.append(("grpc-timeout", timeout_value(timeout)))
        headers.extend(metadata)
        return headers
