"""The waypoint's per-cluster and per-route guards, kept across config updates: circuit breakers
with a FIFO of waiting requests, the retry budget, outlier detection (``mesh.l7.resilience``) and
local rate limits (``mesh.l7.ratelimit``). A config update changes the limits, not the counts."""

from __future__ import annotations

import asyncio
import collections
import time

from mesh.l7.ratelimit import RateLimitConfig, TokenBucket
from mesh.l7.resilience import Admission, CircuitBreaker, OutlierDetector
from mesh.l7.retries import Outcome
from waypoint.config import ClusterPolicy

__all__ = ["Guards"]


class Guards:
    """Admission, retries, ejections and rate limits of every cluster and route."""

    def __init__(self) -> None:
        self._breakers: dict[str, CircuitBreaker] = {}
        self._waiting: dict[str, collections.deque[asyncio.Future[None]]] = {}
        self._outliers: dict[str, OutlierDetector] = {}
        self._buckets: dict[tuple[str, RateLimitConfig], TokenBucket] = {}

    def _breaker(self, cluster: str, policy: ClusterPolicy) -> CircuitBreaker:
        breaker = self._breakers.get(cluster)
        if breaker is None:
            breaker = self._breakers[cluster] = CircuitBreaker(policy.limits, policy.http2)
        breaker.limits, breaker.http2 = policy.limits, policy.http2
        return breaker

    async def admit(self, cluster: str, policy: ClusterPolicy) -> bool:
        """Waits for a slot under the cluster's limits; False at once when the queue is full too
        (the request is answered 503 UO). A cancelled wait (a timeout) leaves the queue."""
        breaker = self._breaker(cluster, policy)
        decision = breaker.admit()
        if decision == Admission.GO:
            return True
        if decision == Admission.OVERFLOW:
            return False
        queue = self._waiting.setdefault(cluster, collections.deque())
        while True:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            queue.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in queue:
                    queue.remove(waiter)
                breaker.abandon()
                self._wake(cluster)  # it may have been woken just before: pass the turn on
                raise
            if breaker.may_proceed():
                return True

    def release(self, cluster: str) -> None:
        """A request admitted by :meth:`admit` finished: the next waiter may go."""
        breaker = self._breakers.get(cluster)
        if breaker is not None:
            breaker.release()
            self._wake(cluster)

    def _wake(self, cluster: str) -> None:
        queue = self._waiting.get(cluster)
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def retry_allowed(self, cluster: str) -> bool:
        """Whether one more retry may start (max_retries and the retry budget); counted if so."""
        breaker = self._breakers.get(cluster)
        return breaker is None or breaker.retry_allowed()

    def retry_done(self, cluster: str) -> None:
        """A retry allowed by :meth:`retry_allowed` finished."""
        breaker = self._breakers.get(cluster)
        if breaker is not None:
            breaker.retry_done()

    def ejected(self, cluster: str, policy: ClusterPolicy) -> frozenset[str]:
        """The cluster's ejected endpoints (``host:port``) now."""
        detector = self._detector(cluster, policy)
        return detector.ejected(time.monotonic()) if detector else frozenset()

    def report(
        self, cluster: str, policy: ClusterPolicy, endpoint: str, outcome: Outcome, endpoints: list[str]
    ) -> bool:
        """Counts one try's result against its endpoint; True when that ejected it."""
        detector = self._detector(cluster, policy)
        if detector is None:
            return False
        return detector.report(
            endpoint, status=outcome.status, connect_failure=outcome.connect_failure or outcome.reset,
            now=time.monotonic(), endpoints=endpoints,
        )  # fmt: skip

    def _detector(self, cluster: str, policy: ClusterPolicy) -> OutlierDetector | None:
        if policy.outlier is None:
            self._outliers.pop(cluster, None)
            return None
        detector = self._outliers.get(cluster)
        if detector is None:
            detector = self._outliers[cluster] = OutlierDetector(policy.outlier)
        detector.policy = policy.outlier
        return detector

    def rate_limit(self, route: str, config: RateLimitConfig) -> tuple[bool, list[tuple[str, str]]]:
        """(allowed, x-ratelimit headers) for one request on ``route``."""
        bucket = self._buckets.get((route, config))
        if bucket is None:
            bucket = self._buckets[(route, config)] = TokenBucket(config)
        now = time.monotonic()
        allowed = bucket.take(now)
        return allowed, bucket.headers(now)
