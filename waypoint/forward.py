"""The router filter, last in the waypoint's chain: sends a routed request to an endpoint of its
cluster (circuit breakers, outlier ejection, retries with back-off, the route and per-try
timeouts, mirroring) and streams the upstream's response back to the client.

As Envoy's router: the retry decision is made on the response head; once a head went to the
client nothing is retried. The route timeout runs from the end of the request (the whole body
went upstream) until the upstream response is complete; when
it (or the per-try timeout) fires after the head was sent, the client's stream is reset (its
HTTP/1.1 connection closed) and the request is flagged UT; an upstream that closes or resets
midway is passed on the same way (UC, UR). A request body larger than the per-request buffer
limit is forwarded once (no retry) and not mirrored (counted in
``waypoint_mirror_skipped_total``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import structlog

from mesh.http1 import Message
from mesh.l7.balancing import Endpoint, EndpointPicker
from mesh.l7.retries import Outcome, backoff, should_retry
from mesh.l7.router import HeaderEdits, RouteDecision
from waypoint.body import DownstreamGoneError, RequestBody, UpstreamError
from waypoint.config import ClusterPolicy, WaypointConfig
from waypoint.downstream import Responder
from waypoint.resilience import Guards
from waypoint.telemetry import RequestMetrics
from waypoint.upstream import Outgoing, UpstreamResponse, Upstreams

__all__ = ["Answer", "Forwarder", "edit_headers", "join_flags"]

_DEFAULT_POLICY = ClusterPolicy()


@dataclass(slots=True)
class Answer:
    """The response to one request and how it was produced: made by the waypoint (``body``), or
    an upstream's (``response``, streamed to the client: then ``delivered``)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    flags: str = ""
    cluster: str = ""
    upstream: str = ""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    response: UpstreamResponse | None = None
    per_try: float | None = None
    """The per-try timeout of the try that produced ``response`` ..."""
    try_started: float = 0.0
    """... which started then (loop time)."""
    delivered: bool = False


class Forwarder:
    """Forwards routed requests with the current config's clusters and policies."""

    def __init__(
        self, config: Callable[[], WaypointConfig], *, upstreams: Upstreams, guards: Guards,
        metrics: RequestMetrics, rng: random.Random, log: structlog.typing.FilteringBoundLogger,
    ) -> None:  # fmt: skip
        self._config = config
        self.upstreams = upstreams
        self.guards = guards
        self._metrics = metrics
        self._rng = rng
        self._log = log
        self._tasks: set[asyncio.Task[None]] = set()

    async def forward(
        self, request: Message, body: RequestBody, decision: RouteDecision, responder: Responder
    ) -> Answer:
        """Answers ``request`` from its cluster; the returned answer is ``delivered`` when the
        upstream's response was streamed to ``responder``."""
        config = self._config()
        picker = config.clusters.get(decision.cluster)
        if picker is None:
            return Answer(503, [], b"no cluster match for URL\n", flags="NC", cluster=decision.cluster)
        cluster = config.policies.get(decision.cluster, _DEFAULT_POLICY)
        for mirror, fraction in decision.mirrors:
            if self._rng.random() < fraction:
                self._spawn(self._mirror(request, body, decision, mirror))
        outgoing = self._outgoing(request, decision)
        answer: Answer | None = None
        try:
            async with after_request(body, decision.timeout, since=asyncio.get_running_loop().time()):
                if not await self.guards.admit(decision.cluster, cluster):
                    reason = (
                        b"upstream connect error or disconnect/reset before headers. reset reason: overflow"
                    )
                    return Answer(503, [], reason, flags="UO", cluster=decision.cluster)
                try:
                    answer = await self._tries(outgoing, body, decision, picker, cluster)
                    if answer.response is not None:
                        await self._relay(answer, body, decision, responder)
                    return answer
                finally:
                    self.guards.release(decision.cluster)
        except TimeoutError:
            return _timed_out(answer, responder, decision.cluster)

    async def _tries(
        self, outgoing: Outgoing, body: RequestBody, decision: RouteDecision, picker: EndpointPicker,
        cluster: ClusterPolicy,
    ) -> Answer:  # fmt: skip
        policy = decision.retry
        loop = asyncio.get_running_loop()
        retries = 0
        tried: Endpoint | None = None
        while True:
            ejected = self.guards.ejected(decision.cluster, cluster)
            endpoint = picker.pick(self._rng, exclude=tried, ejected=ejected)
            if endpoint is None:
                return Answer(503, [], b"no healthy upstream", flags="UH", cluster=decision.cluster)
            tried = endpoint
            address = f"{endpoint.host}:{endpoint.port}"
            per_try = policy.per_try_timeout if policy else None
            started = loop.time()
            endpoint.active += 1
            response: UpstreamResponse | None = None
            try:
                async with after_request(body, per_try, since=started):
                    response = await self.upstreams.exchange(endpoint, outgoing, body, policy=cluster)
                outcome = Outcome(status=response.head.status)
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
                and body.replayable  # a body over the buffer limit is sent once (Envoy: no retry)
                and self.guards.retry_allowed(decision.cluster)
            ):
                if response is not None:
                    response.abort()
                await asyncio.sleep(backoff(policy, retries, self._rng))
                retries += 1
                continue
            exhausted = "URX" if policy is not None and retries and retries >= policy.num_retries else ""
            if response is not None and outcome.status == response.head.status:
                return Answer(response.head.status, response.head.headers, b"", flags=exhausted,
                              cluster=decision.cluster, upstream=address, response=response,
                              per_try=per_try, try_started=started)  # fmt: skip
            if outcome.status == 504:
                return Answer(504, [], b"upstream request timeout", flags=join_flags("UT", exhausted),
                              cluster=decision.cluster, upstream=address)  # fmt: skip
            flag = "UF" if outcome.connect_failure else "UC"
            reason = b"upstream connect error or disconnect/reset before headers"
            return Answer(
                503, [], reason, flags=join_flags(flag, exhausted), cluster=decision.cluster, upstream=address
            )

    async def _relay(
        self, answer: Answer, body: RequestBody, decision: RouteDecision, responder: Responder
    ) -> None:
        """Streams the upstream's response to the client: head, body pieces, trailers."""
        response = answer.response
        assert response is not None
        edit_headers(answer.headers, decision.response_headers)
        answer.delivered = True
        try:
            if response.empty:
                await response.read()  # the exchange is complete: the connection may be reused
                await responder.head(answer.status, answer.headers, length=response.length, end=True)
                return
            await responder.head(answer.status, answer.headers, length=response.length, end=False)
            async with after_request(body, answer.per_try, since=answer.try_started):
                while piece := await response.read():
                    await responder.data(piece)
            answer.trailers = response.trailers
            await responder.finish(response.trailers)
        except UpstreamError as exc:  # closed or reset midway: the client's stream is cut too
            responder.reset()
            answer.flags = join_flags(answer.flags, exc.flag)
        except DownstreamGoneError:
            response.abort()
            answer.flags = join_flags(answer.flags, "DC")
        except TimeoutError:  # the per-try timeout, after the head: as the route timeout
            response.abort()
            responder.reset()
            answer.flags = join_flags(answer.flags, "UT")

    def _outgoing(self, request: Message, decision: RouteDecision) -> Outgoing:
        """The request as it goes upstream: the route's edits, x-request-id, x-forwarded-proto."""
        headers = request.end_to_end_headers()
        edit_headers(headers, decision.request_headers)
        if decision.host_rewrite:
            headers = [(k, v) for k, v in headers if k != "host"] + [("host", decision.host_rewrite)]
        if not any(k == "x-request-id" for k, _ in headers):
            headers.append(("x-request-id", str(uuid.UUID(int=self._rng.getrandbits(128), version=4))))
        headers.append(("x-forwarded-proto", "http"))
        return _outgoing(request, decision, headers)

    async def _mirror(
        self, request: Message, body: RequestBody, decision: RouteDecision, cluster: str
    ) -> None:
        """Fire and forget, once the request body is in (only if within the buffer limit): the
        copy's answer is dropped; its Host carries ``-shadow`` as Envoy's does."""
        data = await body.whole()
        if data is None:
            self._metrics.mirror_skipped(cluster)
            self._log.info("mirror.skipped", **{"upstream.cluster": cluster, "reason": "request body over "
                                                "the per-request buffer limit, or not received"})  # fmt: skip
            return
        config = self._config()
        picker = config.clusters.get(cluster)
        endpoint = picker.pick(self._rng) if picker else None
        if endpoint is None:
            return
        headers = [(k, f"{v}-shadow" if k == "host" else v) for k, v in request.end_to_end_headers()]
        with contextlib.suppress(UpstreamError, TimeoutError, DownstreamGoneError):
            async with asyncio.timeout(decision.timeout):
                outgoing = _outgoing(request, decision, headers)
                copy = RequestBody.of(data)
                response = await self.upstreams.exchange(
                    endpoint, outgoing, copy, policy=config.policies.get(cluster)
                )
                while await response.read():
                    pass

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


_NO_TIMEOUT = contextlib.nullcontext()


def after_request(
    body: RequestBody, seconds: float | None, *, since: float
) -> AbstractAsyncContextManager[object]:
    """A timeout of ``seconds`` (None: none) that runs from the end of the request body, or from
    ``since`` if that is later: Envoy starts the route and per-try timeouts once the whole request
    went upstream, so a long upload or a client-streaming RPC is not cut by them."""
    return _NO_TIMEOUT if seconds is None else _AfterRequest(body, seconds, since)


class _AfterRequest:
    """The timer of :func:`after_request`: an asyncio timeout scheduled once the body ended."""

    def __init__(self, body: RequestBody, seconds: float, since: float) -> None:
        self._body, self._seconds, self._since = body, seconds, since
        self._timer = asyncio.timeout(None)

    async def __aenter__(self) -> None:
        await self._timer.__aenter__()
        self._body.when_ended(self._start)

    async def __aexit__(self, *exc_info: Any) -> None:
        self._body.forget(self._start)
        await self._timer.__aexit__(*exc_info)  # raises TimeoutError when it fired

    def _start(self) -> None:
        if not self._timer.expired():
            self._timer.reschedule(max(self._since, self._body.ended_at) + self._seconds)


def _timed_out(answer: Answer | None, responder: Responder, cluster: str) -> Answer:
    """The route timeout fired: a 504 if nothing went to the client yet, else a reset stream."""
    if answer is not None and answer.response is not None:
        answer.response.abort()
        if responder.head_sent:
            responder.reset()
            answer.flags = join_flags(answer.flags, "UT")
            return answer
    return Answer(504, [], b"upstream request timeout", flags="UT", cluster=cluster,
                  upstream=answer.upstream if answer else "")  # fmt: skip


def edit_headers(headers: list[tuple[str, str]], edits: HeaderEdits) -> None:
    """Applies a route's header edits in place: removals, then additions (append or replace)."""
    if edits.remove:
        headers[:] = [(k, v) for k, v in headers if k not in edits.remove]
    for name, value, append in edits.add:
        if not append:
            headers[:] = [(k, v) for k, v in headers if k != name]
        headers.append((name, value))


def _outgoing(request: Message, decision: RouteDecision, headers: list[tuple[str, str]]) -> Outgoing:
    content_type = request.header("content-type") or ""
    return Outgoing(
        request.method, decision.upstream_path or request.target, headers,
        downstream_http2=request.version == "2", grpc=content_type.startswith("application/grpc"),
    )  # fmt: skip


def join_flags(*flags: str) -> str:
    """Envoy's response flags, comma-joined, without empty ones."""
    return ",".join(f for f in flags if f)
