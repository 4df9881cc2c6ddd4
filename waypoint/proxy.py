"""The waypoint's HTTP/1.1 data path: accept requests, route them with Envoy's semantics
(``mesh.l7``), judge them by L7 policy, apply faults, hand them to the router filter
(``waypoint.forward``) and report each request; h2c connections go to ``waypoint.h2``.

Bodies stream: a request is routed on its head and its body goes upstream as the client sends it
(the reader stops reading while the upstream side lags, ``waypoint.body``); the response goes
back as the upstream sends it. Pipelined requests are answered in order. Response flags follow
Envoy: NR (no route), NC (no such cluster), UH (no endpoint), UF (connect failure), UC/UR
(upstream closed/reset), UT (timeout), URX (retries exhausted), FI (fault abort), DI (fault
delay), DC (the client left).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Callable

import structlog

from mesh.http1 import (
    Message,
    serialize_request,
    serialize_response,
)
from mesh.l7.faults import FaultDecision, decide_fault
from mesh.l7.normalize import NormalizationError, check_headers, normalize_method, normalize_target
from mesh.l7.router import Request, RouteDecision, Router
from mesh.rt.hbone.errors import StreamResetError
from waypoint.authz import authorize
from waypoint.body import (
    PER_REQUEST_BUFFER_LIMIT,
    DownstreamGoneError,
    RequestBody,
    UpstreamError,
)
from waypoint.config import WaypointConfig
from waypoint.downstream import Responder, send_whole
from waypoint.forward import Answer, Forwarder, edit_headers, join_flags
from waypoint.h1 import HEADERS_TIMEOUT, IDLE_TIMEOUT, READ, H1Connection
from waypoint.h2 import H2_PREFACE, H2Front
from waypoint.resilience import Guards
from waypoint.tcp import SNIFF_TIMEOUT, TcpPassthrough, looks_like_http, pipe
from waypoint.telemetry import RequestMetrics, RequestRecord
from waypoint.tracing import Tracer
from waypoint.upstream import Upstreams

__all__ = ["WaypointProxy"]


class WaypointProxy:
    """Serves HTTP/1.1 and h2c clients with the routes of the current config (swapped in whole by
    ``config``)."""

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
        buffer_limit: int = PER_REQUEST_BUFFER_LIMIT,
    ) -> None:
        """``path_normalization`` is Istio's ``meshConfig.pathNormalization`` (see mesh.l7.normalize);
        ``buffer_limit`` how much of a request body is kept to retry or mirror it."""
        self._config = config
        self._metrics = metrics
        self._route_config = route_config
        self._rng = rng or random.Random()
        self._log = log or structlog.get_logger().bind(component="waypoint")
        self.forwarder = Forwarder(config, upstreams=Upstreams(), guards=Guards(), metrics=metrics,
                                   rng=self._rng, log=self._log)  # fmt: skip
        self.tracer = tracer
        self.path_normalization = path_normalization
        self.buffer_limit = buffer_limit
        self.tcp: TcpPassthrough | None = None
        """Set in the mesh: passes tunnelled non-HTTP connections through (see waypoint.tcp)."""

    @property
    def upstreams(self) -> Upstreams:
        """The upstream connections (their HBONE ``tunnel`` is set by the mesh)."""
        return self.forwarder.upstreams

    @upstreams.setter
    def upstreams(self, upstreams: Upstreams) -> None:
        self.forwarder.upstreams = upstreams

    @property
    def guards(self) -> Guards:
        """Circuit breakers, retry budgets, outlier detection and rate limits."""
        return self.forwarder.guards

    async def serve(self, host: str, port: int) -> asyncio.Server:
        """Listens for plain HTTP/1.1 and h2c clients (``--http-listen``)."""
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
        handle = functools.partial(
            self.handle, tunnel_authority=tunnel_authority, source_principal=source_principal,
            source_addr=source_addr,
        )  # fmt: skip
        upgrade = functools.partial(
            self.upgrade, tunnel_authority=tunnel_authority, source_principal=source_principal,
            source_addr=source_addr,
        )  # fmt: skip
        connection = H1Connection(
            reader, writer, handle=handle, upgrade=upgrade, buffer_limit=self.buffer_limit
        )
        try:
            await connection.serve(first)
        except (ConnectionError, OSError, StreamResetError):
            pass  # the client went away (a TCP reset, or its HBONE stream was reset)
        finally:
            connection.close()

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
                    async with asyncio.timeout(SNIFF_TIMEOUT):
                        first = await reader.read(READ)
            if route.kind == "tcp" or (route.kind == "sniff" and not looks_like_http(first)):
                await self.tcp.relay(
                    route, reader, writer, first, source_principal=source_principal, source_addr=source_addr
                )
                return None
        if not first:
            with contextlib.suppress(TimeoutError, ConnectionError, OSError, StreamResetError):
                async with asyncio.timeout(IDLE_TIMEOUT):
                    first = await reader.read(READ)
        while first and len(first) < len(H2_PREFACE) and H2_PREFACE.startswith(first):
            more = b""  # a short first read that may be the h2 preface's start: read until it is clear
            with contextlib.suppress(TimeoutError, ConnectionError, OSError, StreamResetError):
                async with asyncio.timeout(HEADERS_TIMEOUT):
                    more = await reader.read(READ)
            if not more:
                break
            first += more
        if not first:
            writer.close()
            return None
        if not first.startswith(H2_PREFACE):
            return first

        handle = functools.partial(
            self.handle, tunnel_authority=tunnel_authority, source_principal=source_principal,
            source_addr=source_addr,
        )  # fmt: skip
        await H2Front(handle).serve(reader, writer, first)
        return None

    async def handle(
        self,
        request: Message,
        body: RequestBody,
        responder: Responder,
        *,
        tunnel_authority: str = "",
        source_principal: str = "",
        source_addr: str = "",
    ) -> None:
        """Routes, judges, faults and forwards one request (its head in; its body arriving through
        ``body``), answers it through ``responder``, and reports it once it ended."""
        started = time.monotonic()
        authority = request.header("host") or ""
        decision: RouteDecision | None = None
        span = None
        answer = Answer(0, [], b"", flags="DC")  # until something better is known
        try:
            refused = self._admit(request, tunnel_authority or authority, source_principal, source_addr)
            if refused is not None:
                answer = refused
            else:
                decision = self._route(request, tunnel_authority or authority)
                span = self.tracer.begin(request.headers, decision) if self.tracer else None
                answer = Answer(404, [], b"", flags="NR")
                if decision is not None:
                    answer = await self._decided(request, body, decision, responder)
            if not answer.delivered:
                if decision is not None:
                    edit_headers(answer.headers, decision.response_headers)
                await send_whole(responder, answer.status, answer.headers, answer.body, answer.trailers)
        except DownstreamGoneError:
            _client_left(answer, responder)
        except asyncio.CancelledError:  # the client reset its HTTP/2 stream
            _client_left(answer, responder)
            raise
        finally:
            body.close()
            record = _record(
                request,
                authority,
                decision,
                answer,
                started,
                request_bytes=body.received,
                response_bytes=responder.sent,
                source_principal=source_principal,
                source_addr=source_addr,
            )
            self._metrics.done(record)
            if span is not None and self.tracer is not None:
                self.tracer.end(span, record, request.headers, decision)

    async def upgrade(
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
                edit_headers(headers, decision.request_headers)
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
                request_bytes=0,
                response_bytes=len(answer.body),
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

    async def _decided(
        self, request: Message, body: RequestBody, decision: RouteDecision, responder: Responder
    ) -> Answer:
        """The filters after authz, in Envoy's order: fault (delay, abort), local rate limit, then a
        redirect or direct response, else the router."""
        fault = decide_fault(decision.fault, self._rng) if decision.fault else FaultDecision()
        flags = "DI" if fault.delay else ""
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.abort_http is not None:
            return Answer(fault.abort_http, [("content-type", "text/plain")], b"fault filter abort",
                          flags=join_flags(flags, "FI"), cluster=decision.cluster)  # fmt: skip
        if fault.abort_grpc is not None:
            grpc = [("content-type", "application/grpc"), ("grpc-status", str(fault.abort_grpc))]
            return Answer(200, grpc, b"", flags=join_flags(flags, "FI"), cluster=decision.cluster)
        if decision.rate_limit is not None:
            allowed, limit_headers = self.guards.rate_limit(decision.route_name, decision.rate_limit)
            if not allowed:
                return Answer(decision.rate_limit.status, limit_headers, b"local_rate_limited",
                              flags=join_flags(flags, "RL"), cluster=decision.cluster)  # fmt: skip
        if decision.redirect:
            location = decision.redirect
            if location.startswith("//"):
                location = f"http:{location}"
            elif location.startswith("/"):  # Envoy answers an absolute URL on the request's own host
                location = f"http://{request.header('host') or ''}{location}"
            return Answer(decision.redirect_status, [("location", location)], b"", flags=flags)
        if decision.direct_status:
            return Answer(decision.direct_status, [], decision.direct_body, flags=flags)
        answer = await self.forwarder.forward(request, body, decision, responder)
        answer.flags = join_flags(flags, answer.flags)
        return answer


def _client_left(answer: Answer, responder: Responder) -> None:
    """The client went away: flag DC; status 0 when nothing reached it (as Envoy logs it)."""
    if "DC" not in answer.flags.split(","):
        answer.flags = join_flags(answer.flags, "DC")
    if not responder.head_sent:
        answer.status = 0


def _record(
    request: Message, authority: str, decision: RouteDecision | None, answer: Answer, started: float,
    *, request_bytes: int, response_bytes: int, source_principal: str, source_addr: str,
) -> RequestRecord:  # fmt: skip
    """What telemetry and tracing get for one finished request."""
    grpc = (request.header("content-type") or "").startswith("application/grpc")
    grpc_status = next((v for k, v in (*answer.trailers, *answer.headers) if k == "grpc-status"), "")
    return RequestRecord(
        method=request.method, path=request.target, authority=authority,
        protocol="grpc" if grpc else "http", grpc_status=grpc_status,
        status=answer.status, flags=answer.flags, route=decision.route_name if decision else "",
        cluster=answer.cluster, upstream=answer.upstream,
        duration_ms=(time.monotonic() - started) * 1000, request_bytes=request_bytes,
        response_bytes=response_bytes, source_principal=source_principal,
        mtls=bool(source_principal), source_addr=source_addr,
    )  # fmt: skip
