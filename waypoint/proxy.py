"""The waypoint's HTTP/1.1 data path: accept requests, route them with Envoy's semantics
(``mesh.l7``), apply faults, forward to an endpoint of the chosen cluster over pooled keep-alive
connections with the route's timeout and retries, and report each request.

Bodies are buffered (a retry needs the request again; Envoy buffers for retries too), up to the
codec's limit. Response flags follow Envoy: NR (no route), NC (no such cluster), UH (no endpoint),
UF (connect failure), UC (upstream closed early), UT (timeout), URX (retries exhausted), FI (fault
abort), DI (fault delay).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field

import structlog

from mesh.h2 import H2ProtocolError
from mesh.http1 import (
    CONTINUE,
    Http1Error,
    Message,
    RequestParser,
    ResponseParser,
    serialize_request,
    serialize_response,
)
from mesh.l7.balancing import Endpoint, EndpointPicker
from mesh.l7.faults import FaultDecision, decide_fault
from mesh.l7.normalize import NormalizationError, check_headers, normalize_method, normalize_target
from mesh.l7.retries import Outcome, backoff, should_retry
from mesh.l7.router import HeaderEdits, Request, RouteDecision, Router
from mesh.rt.hbone.errors import StreamResetError
from waypoint.authz import authorize
from waypoint.config import ClusterPolicy, WaypointConfig
from waypoint.h2 import H2_PREFACE, H2Answer, H2Front, H2Upstream
from waypoint.resilience import Guards
from waypoint.tcp import SNIFF_TIMEOUT, TcpPassthrough, looks_like_http, pipe
from waypoint.telemetry import RequestMetrics, RequestRecord
from waypoint.tracing import Tracer

__all__ = ["Answer", "Upstreams", "WaypointProxy"]

_READ = 65536
_DEFAULT_POLICY = ClusterPolicy()
_IDLE_TIMEOUT = 3600.0
"""Envoy's default HTTP connection idle timeout."""
_HEADERS_TIMEOUT = 60.0
"""How long a client may take to send a request once it started (slowloris)."""


class UpstreamError(Exception):
    """One try failed without a response: ``connect`` (never connected) or a reset/early close."""

    def __init__(self, *, connect: bool, detail: str) -> None:
        super().__init__(detail)
        self.connect = connect


@dataclass(slots=True)
class Answer:
    """The response the waypoint sends for one request, and how it was produced."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    flags: str = ""
    cluster: str = ""
    upstream: str = ""
    trailers: list[tuple[str, str]] = field(default_factory=list)


Connector = Callable[[str, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
"""Opens a connection to ``host:port`` (a TCP connection, or an HBONE stream through a ztunnel)."""


async def _tcp(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.open_connection(host, port)
    except OSError as exc:
        raise UpstreamError(connect=True, detail=f"connect to {host}:{port}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Outgoing:
    """The request the waypoint sends upstream (after the route's edits)."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    downstream_http2: bool = False
    grpc: bool = False


@dataclass(slots=True)
class _Pooled:
    """An upstream connection with the requests it carried and when it became idle."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    uses: int = 0
    idle_since: float = 0.0


class Upstreams:
    """Keep-alive HTTP/1.1 connections to endpoints, each used by one request at a time: plain TCP,
    or HBONE streams (``tunnel``) for endpoints that are reached through their ztunnel. A cluster's
    ``max_requests_per_connection`` and ``idle_timeout`` retire pooled connections."""

    def __init__(self, *, tunnel: Connector | None = None, max_idle: int = 32) -> None:
        self._idle: dict[tuple[str, int], list[_Pooled]] = {}
        self._h2: dict[tuple[str, int], H2Upstream] = {}
        self._max_idle = max_idle
        self.tunnel = tunnel

    async def exchange(
        self, endpoint: Endpoint, outgoing: Outgoing, *, policy: ClusterPolicy | None = None
    ) -> Message:
        """Sends ``outgoing`` to ``endpoint`` and reads the whole response; raises UpstreamError.
        HTTP/2 when the cluster says so (or says "as downstream" and the client spoke it)."""
        key = (endpoint.host, endpoint.port)
        policy = policy or _DEFAULT_POLICY
        if policy.http2 or (policy.http2_if_downstream and outgoing.downstream_http2):
            return await self._exchange_h2(endpoint, outgoing)
        raw = serialize_request(outgoing.method, outgoing.target, outgoing.headers, outgoing.body)
        head = outgoing.method == "HEAD"
        idle = self._idle.get(key)
        while idle:
            pooled = idle.pop()
            if time.monotonic() - pooled.idle_since > policy.idle_timeout:
                pooled.writer.close()
                continue
            try:  # a pooled connection the server closed meanwhile: once more on a fresh one
                return await self._over(key, pooled, raw, head=head, policy=policy)
            except UpstreamError:
                break
        reader, writer = await self.open(endpoint)
        return await self._over(key, _Pooled(reader, writer), raw, head=head, policy=policy)

    async def open(self, endpoint: Endpoint) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A new connection to ``endpoint``: TCP, or an HBONE stream through its ztunnel."""
        if endpoint.hbone and self.tunnel is None:
            raise UpstreamError(
                connect=True, detail=f"{endpoint.host} is reached over HBONE, which is off here"
            )
        connect = self.tunnel if endpoint.hbone and self.tunnel is not None else _tcp
        return await connect(endpoint.host, endpoint.port)

    async def _over(
        self, key: tuple[str, int], pooled: _Pooled, raw: bytes, *, head: bool, policy: ClusterPolicy
    ) -> Message:
        parser = ResponseParser(head_only=head)
        reader, writer = pooled.reader, pooled.writer
        try:
            writer.write(raw)
            await writer.drain()
            while True:
                data = await reader.read(_READ)
                responses = parser.feed(data) if data else parser.finish()
                if responses:
                    response = responses[0]
                    break
                if not data:
                    raise UpstreamError(connect=False, detail="upstream closed before a whole response")
        except (OSError, Http1Error) as exc:
            writer.close()
            raise UpstreamError(connect=False, detail=str(exc)) from None
        except BaseException:
            writer.close()  # cancelled (a timeout): the connection is mid-exchange, never reused
            raise
        pooled.uses += 1
        spent = bool(policy.max_requests_per_connection) and pooled.uses >= policy.max_requests_per_connection
        if response.keep_alive and data and not spent and len(self._idle.get(key, ())) < self._max_idle:
            pooled.idle_since = time.monotonic()
            self._idle.setdefault(key, []).append(pooled)
        else:
            writer.close()
        return response

    async def _exchange_h2(self, endpoint: Endpoint, outgoing: Outgoing) -> Message:
        key = (endpoint.host, endpoint.port)
        connection = self._h2.get(key)
        if connection is None or not connection.usable:
            reader, writer = await self.open(endpoint)
            connection = self._h2[key] = H2Upstream(reader, writer)
        host = next((v for k, v in outgoing.headers if k == "host"), f"{endpoint.host}:{endpoint.port}")
        headers = [(k, v) for k, v in outgoing.headers if k != "host"]
        if outgoing.grpc:
            headers.append(("te", "trailers"))  # gRPC servers require it; it is hop-by-hop in HTTP/1.1
        try:
            return await connection.request(outgoing.method, host, outgoing.target, headers, outgoing.body)
        except (ConnectionError, OSError, StreamResetError, H2ProtocolError) as exc:
            raise UpstreamError(connect=False, detail=f"HTTP/2 to {key[0]}:{key[1]}: {exc}") from None

    def close(self) -> None:
        """Closes every idle connection."""
        for connections in self._idle.values():
            for pooled in connections:
                pooled.writer.close()
        self._idle.clear()
        for connection in self._h2.values():
            connection.close()
        self._h2.clear()


class WaypointProxy:
    """Serves HTTP/1.1 clients with the routes of the current config (swapped in whole by ``config``)."""

    def __init__(
        self,
        config: Callable[[], WaypointConfig],
        metrics: RequestMetrics,
        *,
        route_config: str = "",
        rng: random.Random | None = None,
        log: structlog.typing.FilteringBoundLogger | None = None,
        tracer: Tracer | None = None,
        path_normalization: str = "BASE",
    ) -> None:
        """``path_normalization`` is Istio's ``meshConfig.pathNormalization`` (see mesh.l7.normalize)."""
        self._config = config
        self._metrics = metrics
        self._route_config = route_config
        self._rng = rng or random.Random()
        self._log = log or structlog.get_logger().bind(component="waypoint")
        self.upstreams = Upstreams()
        self.guards = Guards()
        self.tracer = tracer
        self.path_normalization = path_normalization
        self.tcp: TcpPassthrough | None = None
        """Set in the mesh: passes tunnelled non-HTTP connections through (see waypoint.tcp)."""
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self, host: str, port: int) -> asyncio.Server:
        """Listens for plain HTTP/1.1 clients (``--http-listen``)."""
        return await asyncio.start_server(self.serve_connection, host, port)

    async def serve_connection(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        tunnel_authority: str = "",
        source_principal: str = "",
        source_addr: str = "",
    ) -> None:
        """Serves one client connection's requests in order. Through HBONE, ``tunnel_authority`` (the
        CONNECT authority, ``VIP:port``) chooses the virtual host, ``source_principal`` is the
        client's verified identity and ``source_addr`` its IP (else the TCP peer's)."""
        peer = writer.get_extra_info("peername")
        source_addr = source_addr or (str(peer[0]) if isinstance(peer, tuple) else "")
        first = await self._other_protocols(
            reader, writer, tunnel_authority=tunnel_authority, source_principal=source_principal,
            source_addr=source_addr,
        )  # fmt: skip
        if first is None:
            return
        parser = RequestParser()
        pending: list[Message] = []
        try:
            while True:
                timeout = _HEADERS_TIMEOUT if pending or parser_busy(parser) else _IDLE_TIMEOUT
                try:
                    data = first or await asyncio.wait_for(reader.read(_READ), timeout)
                    first = b""
                except TimeoutError:
                    break
                if not data:
                    break
                try:
                    pending += parser.feed(data)
                    if parser.continue_wanted:  # the route's answer needs the body: ask for it
                        parser.continue_wanted = False
                        writer.write(CONTINUE)
                except Http1Error as exc:
                    body = f"{exc.message}\n".encode()
                    writer.write(serialize_response(exc.status, "", [("content-type", "text/plain")], body,
                                                    keep_alive=False))  # fmt: skip
                    break
                while pending:
                    request = pending.pop(0)
                    if request.upgrade:  # WebSocket and the like: bytes both ways after the 101
                        await self._upgrade(
                            request, reader, writer, tunnel_authority=tunnel_authority,
                            source_principal=source_principal, source_addr=source_addr,
                        )  # fmt: skip
                        return
                    answer = await self.handle(
                        request, tunnel_authority=tunnel_authority, source_principal=source_principal,
                        source_addr=source_addr,
                    )  # fmt: skip
                    keep = request.keep_alive and not request.upgrade
                    writer.write(
                        serialize_response(answer.status, "", answer.headers, answer.body, keep_alive=keep)
                    )
                    await writer.drain()
                    if not keep:
                        return
        except (ConnectionError, OSError, StreamResetError):
            pass  # the client went away (a TCP reset, or its HBONE stream was reset)
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _other_protocols(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, tunnel_authority: str,
        source_principal: str, source_addr: str,
    ) -> bytes | None:  # fmt: skip
        """Serves the connection when it is not HTTP/1.1 (TCP passthrough, h2c) and returns None;
        else returns the first bytes read, for the HTTP/1.1 parser."""
        first = b""
        if tunnel_authority and self.tcp is not None:
            route = self.tcp.route(tunnel_authority)
            if route.kind == "sniff":
                with contextlib.suppress(TimeoutError):
                    first = await asyncio.wait_for(reader.read(_READ), SNIFF_TIMEOUT)
            if route.kind == "tcp" or (route.kind == "sniff" and not looks_like_http(first)):
                await self.tcp.relay(
                    route, reader, writer, first, source_principal=source_principal, source_addr=source_addr
                )
                return None
        if not first:
            with contextlib.suppress(TimeoutError, ConnectionError, OSError, StreamResetError):
                first = await asyncio.wait_for(reader.read(_READ), _IDLE_TIMEOUT)
        while first and len(first) < len(H2_PREFACE) and H2_PREFACE.startswith(first):
            more = b""  # a short first read that may be the h2 preface's start: read until it is clear
            with contextlib.suppress(TimeoutError, ConnectionError, OSError, StreamResetError):
                more = await asyncio.wait_for(reader.read(_READ), _HEADERS_TIMEOUT)
            if not more:
                break
            first += more
        if not first:
            writer.close()
            return None
        if not first.startswith(H2_PREFACE):
            return first

        async def answer_h2(request: Message) -> H2Answer:
            answer = await self.handle(
                request, tunnel_authority=tunnel_authority, source_principal=source_principal,
                source_addr=source_addr,
            )  # fmt: skip
            return H2Answer(answer.status, answer.headers, answer.body, answer.trailers)

        await H2Front(answer_h2).serve(reader, writer, first)
        return None

    async def handle(
        self,
        request: Message,
        *,
        tunnel_authority: str = "",
        source_principal: str = "",
        source_addr: str = "",
    ) -> Answer:
        """Routes, faults and forwards one request; reports it; returns the answer."""
        started = time.monotonic()
        authority = request.header("host") or ""
        refused = self._admit(request, tunnel_authority or authority, source_principal, source_addr)
        if refused is not None:
            answer = refused
            record = _record(request, authority, None, answer, started, source_principal=source_principal,
                             source_addr=source_addr)  # fmt: skip
            self._metrics.done(record)
            return answer
        decision = self._route(request, tunnel_authority or authority)
        span = self.tracer.begin(request.headers, decision) if self.tracer else None
        if decision is None:
            answer = Answer(404, [], b"", flags="NR")
        else:
            answer = await self._decided(request, decision)
            _edit(answer.headers, decision.response_headers)
        record = _record(
            request,
            authority,
            decision,
            answer,
            started,
            source_principal=source_principal,
            source_addr=source_addr,
        )
        self._metrics.done(record)
        if span is not None and self.tracer is not None:
            self.tracer.end(span, record, request.headers, decision)
        return answer

    async def _upgrade(
        self, request: Message, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
        tunnel_authority: str, source_principal: str, source_addr: str,
    ) -> None:  # fmt: skip
        """An HTTP/1.1 Upgrade (WebSocket), routed like any request; the upstream's answer goes back
        as it is and, after a 101, the connection carries the new protocol both ways as bytes."""
        started = time.monotonic()
        authority = request.header("host") or ""
        refused = self._admit(request, tunnel_authority or authority, source_principal, source_addr)
        decision = self._route(request, tunnel_authority or authority) if refused is None else None
        picker = self._config().clusters.get(decision.cluster) if decision is not None else None
        endpoint = picker.pick(self._rng) if picker else None
        answer = Answer(404 if decision is None else 503, [], b"", flags="NR" if decision is None else "UH")
        if refused is not None:
            answer = refused
        if decision is not None and endpoint is not None:
            answer = Answer(
                503,
                [],
                b"",
                flags="UF",
                cluster=decision.cluster,
                upstream=f"{endpoint.host}:{endpoint.port}",
            )
            try:
                up_reader, up_writer = await self.upstreams.open(endpoint)
                headers = [(k, v) for k, v in request.headers if k != "content-length"]
                _edit(headers, decision.request_headers)
                up_writer.write(
                    serialize_request(request.method, decision.upstream_path or request.target, headers, b"")
                )
                async with asyncio.timeout(decision.timeout):
                    head = await up_reader.readuntil(b"\r\n\r\n")
                answer.status, answer.flags = int(head.split(b" ", 2)[1]), ""
                writer.write(head)
                await pipe(reader, writer, up_reader, up_writer)  # the upstream's answer, then the bytes
            except (
                UpstreamError,
                OSError,
                TimeoutError,
                ValueError,
                IndexError,
                asyncio.IncompleteReadError,
            ):
                answer.status, answer.flags = 503, "UF"
        if answer.flags or refused is not None:  # no upstream answer: ours, and the connection ends
            writer.write(serialize_response(answer.status, "", answer.headers, answer.body, keep_alive=False))
            writer.close()
        self._metrics.done(
            _record(
                request,
                authority,
                decision,
                answer,
                started,
                source_principal=source_principal,
                source_addr=source_addr,
            )
        )

    def _admit(
        self, request: Message, vhost_authority: str, source_principal: str, source_addr: str
    ) -> Answer | None:
        """Normalizes ``request`` in place (routing, policy and the backend all see the normalized
        path: CVE-2021-31920) and judges it by L7 policy; the answer when it is refused (400, 403)."""
        try:
            request.method = normalize_method(request.method)
            request.target = normalize_target(request.target, self.path_normalization)
            check_headers(request.headers)
        except NormalizationError as exc:
            return Answer(exc.status, [("content-type", "text/plain")], f"{exc.message}\n".encode())
        refusal = authorize(self._router(), request, vhost_authority=vhost_authority, now=time.time(),
                            source_principal=source_principal, source_addr=source_addr)  # fmt: skip
        if refusal is not None:
            return Answer(refusal.status, [("content-type", "text/plain")], refusal.body, flags=refusal.flags)
        return None

    def _router(self) -> Router | None:
        config = self._config()
        return config.routers.get(self._route_config) or next(iter(config.routers.values()), None)

    def _route(self, request: Message, authority: str) -> RouteDecision | None:
        router = self._router()
        if router is None:
            return None
        headers: dict[str, tuple[str, ...]] = {}
        for name, value in request.headers:
            headers[name] = (*headers.get(name, ()), value)
        return router.route(Request(request.method, request.target, authority, headers), self._rng)

    async def _decided(self, request: Message, decision: RouteDecision) -> Answer:
        fault = decide_fault(decision.fault, self._rng) if decision.fault else FaultDecision()
        flags = "DI" if fault.delay else ""
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.abort_http is not None:
            return Answer(fault.abort_http, [("content-type", "text/plain")], b"fault filter abort",
                          flags=_join(flags, "FI"), cluster=decision.cluster)  # fmt: skip
        if fault.abort_grpc is not None:
            grpc = [("content-type", "application/grpc"), ("grpc-status", str(fault.abort_grpc))]
            return Answer(200, grpc, b"", flags=_join(flags, "FI"), cluster=decision.cluster)
        if decision.rate_limit is not None:
            allowed, limit_headers = self.guards.rate_limit(decision.route_name, decision.rate_limit)
            if not allowed:
                return Answer(decision.rate_limit.status, limit_headers, b"local_rate_limited",
                              flags=_join(flags, "RL"), cluster=decision.cluster)  # fmt: skip
        if decision.redirect:
            location = decision.redirect
            if location.startswith("//"):
                location = f"http:{location}"
            elif location.startswith("/"):  # Envoy answers an absolute URL on the request's own host
                location = f"http://{request.header('host') or ''}{location}"
            return Answer(decision.redirect_status, [("location", location)], b"", flags=flags)
        if decision.direct_status:
            return Answer(decision.direct_status, [], decision.direct_body, flags=flags)
        answer = await self._forward(request, decision)
        answer.flags = _join(flags, answer.flags)
        return answer

    async def _forward(self, request: Message, decision: RouteDecision) -> Answer:
        config = self._config()
        picker = config.clusters.get(decision.cluster)
        if picker is None:
            return Answer(503, [], b"no cluster match for URL\n", flags="NC", cluster=decision.cluster)
        cluster = config.policies.get(decision.cluster, _DEFAULT_POLICY)
        for mirror, fraction in decision.mirrors:
            if self._rng.random() < fraction:
                self._spawn(self._mirror(request, decision, mirror))
        outgoing = self._upstream_request(request, decision)
        try:
            async with asyncio.timeout(decision.timeout):
                if not await self.guards.admit(decision.cluster, cluster):
                    body = (
                        b"upstream connect error or disconnect/reset before headers. reset reason: overflow"
                    )
                    return Answer(503, [], body, flags="UO", cluster=decision.cluster)
                try:
                    return await self._tries(outgoing, decision, picker, cluster)
                finally:
                    self.guards.release(decision.cluster)
        except TimeoutError:
            return Answer(504, [], b"upstream request timeout", flags="UT", cluster=decision.cluster)

    async def _tries(
        self, outgoing: Outgoing, decision: RouteDecision, picker: EndpointPicker, cluster: ClusterPolicy,
    ) -> Answer:  # fmt: skip
        policy = decision.retry
        retries = 0
        tried: Endpoint | None = None
        while True:
            ejected = self.guards.ejected(decision.cluster, cluster)
            endpoint = picker.pick(self._rng, exclude=tried, ejected=ejected)
            if endpoint is None:
                return Answer(503, [], b"no healthy upstream", flags="UH", cluster=decision.cluster)
            tried = endpoint
            address = f"{endpoint.host}:{endpoint.port}"
            endpoint.active += 1
            response: Message | None = None
            try:
                async with asyncio.timeout(policy.per_try_timeout if policy else None):
                    response = await self.upstreams.exchange(endpoint, outgoing, policy=cluster)
                outcome = Outcome(status=response.status)
            except UpstreamError as exc:
                outcome = Outcome(connect_failure=exc.connect, reset=not exc.connect)
            except TimeoutError:  # the per-try timeout: what Envoy counts as a 504 from this try
                outcome = Outcome(status=504)
            finally:
                endpoint.active -= 1
                if retries:
                    self.guards.retry_done(decision.cluster)
            addresses = [f"{e.host}:{e.port}" for e in picker.endpoints]
            self.guards.report(decision.cluster, cluster, address, outcome, addresses)
            if (
                policy is not None
                and should_retry(policy, outcome, retries)
                and self.guards.retry_allowed(decision.cluster)
            ):
                await asyncio.sleep(backoff(policy, retries, self._rng))
                retries += 1
                continue
            exhausted = "URX" if policy is not None and retries and retries >= policy.num_retries else ""
            if response is not None and outcome.status == response.status:
                headers = response.end_to_end_headers()
                return Answer(response.status, headers, response.body, flags=exhausted,
                              cluster=decision.cluster, upstream=address,
                              trailers=response.trailers)  # fmt: skip
            if outcome.status == 504:
                return Answer(504, [], b"upstream request timeout", flags=_join("UT", exhausted),
                              cluster=decision.cluster, upstream=address)  # fmt: skip
            flag = "UF" if outcome.connect_failure else "UC"
            body = b"upstream connect error or disconnect/reset before headers"
            return Answer(
                503, [], body, flags=_join(flag, exhausted), cluster=decision.cluster, upstream=address
            )

    def _upstream_request(self, request: Message, decision: RouteDecision) -> Outgoing:
        headers = request.end_to_end_headers()
        _edit(headers, decision.request_headers)
        if decision.host_rewrite:
            headers = [(k, v) for k, v in headers if k != "host"] + [("host", decision.host_rewrite)]
        if not any(k == "x-request-id" for k, _ in headers):
            headers.append(("x-request-id", str(uuid.UUID(int=self._rng.getrandbits(128), version=4))))
        headers.append(("x-forwarded-proto", "http"))
        return _outgoing(request, decision, headers)

    async def _mirror(self, request: Message, decision: RouteDecision, cluster: str) -> None:
        """Fire and forget: the copy's answer is dropped; its Host carries ``-shadow`` as Envoy's does."""
        config = self._config()
        picker = config.clusters.get(cluster)
        endpoint = picker.pick(self._rng) if picker else None
        if endpoint is None:
            return
        headers = [(k, f"{v}-shadow" if k == "host" else v) for k, v in request.end_to_end_headers()]
        with contextlib.suppress(UpstreamError, TimeoutError):
            async with asyncio.timeout(decision.timeout):
                outgoing = _outgoing(request, decision, headers)
                await self.upstreams.exchange(endpoint, outgoing, policy=config.policies.get(cluster))

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def parser_busy(parser: RequestParser) -> bool:
    """True while a request has started but not ended (its headers must arrive in time)."""
    return parser.in_message


def _edit(headers: list[tuple[str, str]], edits: HeaderEdits) -> None:
    """Applies a route's header edits in place: removals, then additions (append or replace)."""
    if edits.remove:
        headers[:] = [(k, v) for k, v in headers if k not in edits.remove]
    for name, value, append in edits.add:
        if not append:
            headers[:] = [(k, v) for k, v in headers if k != name]
        headers.append((name, value))


def _record(
    request: Message, authority: str, decision: RouteDecision | None, answer: Answer, started: float,
    *, source_principal: str, source_addr: str,
) -> RequestRecord:  # fmt: skip
    """What telemetry and tracing get for one finished request."""
    grpc = (request.header("content-type") or "").startswith("application/grpc")
    grpc_status = next((v for k, v in (*answer.trailers, *answer.headers) if k == "grpc-status"), "")
    return RequestRecord(
        method=request.method, path=request.target, authority=authority,
        protocol="grpc" if grpc else "http", grpc_status=grpc_status,
        status=answer.status, flags=answer.flags, route=decision.route_name if decision else "",
        cluster=answer.cluster, upstream=answer.upstream,
        duration_ms=(time.monotonic() - started) * 1000, request_bytes=len(request.body),
        response_bytes=len(answer.body), source_principal=source_principal,
        mtls=bool(source_principal), source_addr=source_addr,
    )  # fmt: skip


def _outgoing(request: Message, decision: RouteDecision, headers: list[tuple[str, str]]) -> Outgoing:
    content_type = request.header("content-type") or ""
    return Outgoing(
        request.method, decision.upstream_path or request.target, headers, request.body,
        downstream_http2=request.version == "2", grpc=content_type.startswith("application/grpc"),
    )  # fmt: skip


def _join(*flags: str) -> str:
    return ",".join(f for f in flags if f)
