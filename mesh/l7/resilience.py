"""A cluster's circuit breakers, retry budget and outlier detection, with Envoy's semantics (pure;
the caller passes the time).

Circuit breakers (``Cluster.circuit_breakers.thresholds``, from a DestinationRule's
``connectionPool``): requests in flight to the cluster are capped by ``max_connections`` (HTTP/1.1:
one request per connection) and ``max_requests`` (HTTP/2); a request over the cap waits while
fewer than ``max_pending_requests`` wait, else it is refused at once (503, flag ``UO``).
Retries: at most ``max_retries`` in flight, and a budget: retries in flight may not exceed
``budget_percent`` of the requests in flight (20 % by default, as Envoy's retry budget) or
``min_retry_concurrency`` (3), whichever is larger, so retries cannot multiply load in an outage.

Outlier detection (``Cluster.outlier_detection``): ``consecutive_5xx`` 5xx answers, or
``consecutive_gateway_failure`` 502/503/504 and connect failures, eject an endpoint for
``base_ejection_time`` times the number of times it was ejected (capped at ``max_ejection_time``,
300 s), at most ``max_ejection_percent`` % of the endpoints (10 % by default, but one endpoint
always may be); an ejected endpoint returns once its time is up (checked every ``interval``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from envoy.config.cluster.v3 import cluster_pb2

__all__ = ["Admission", "CircuitBreaker", "Limits", "OutlierDetector", "OutlierPolicy"]

_UNLIMITED = 2**32 - 1
_ENVOY_DEFAULT = 1024
"""Envoy's default for each threshold when the cluster sets none."""


@dataclass(frozen=True, slots=True)
class Limits:
    """A cluster's thresholds (Envoy's defaults: 1024 each, a 20 % retry budget)."""

    max_connections: int = _ENVOY_DEFAULT
    max_pending_requests: int = _ENVOY_DEFAULT
    max_requests: int = _ENVOY_DEFAULT
    max_retries: int = 3
    budget_percent: float = 20.0
    min_retry_concurrency: int = 3

    @classmethod
    def of(cls, cluster: cluster_pb2.Cluster) -> Limits:
        """The default-priority thresholds of ``cluster``."""
        found = [t for t in cluster.circuit_breakers.thresholds if t.priority == 0]
        if not found:
            return cls()
        t = found[0]

        def value(name: str, default: int) -> int:
            return getattr(t, name).value if t.HasField(name) else default

        budget, min_concurrency = 20.0, 3
        if t.HasField("retry_budget"):
            if t.retry_budget.HasField("budget_percent"):
                budget = t.retry_budget.budget_percent.value
            if t.retry_budget.HasField("min_retry_concurrency"):
                min_concurrency = t.retry_budget.min_retry_concurrency.value
        return cls(
            value("max_connections", _ENVOY_DEFAULT),
            value("max_pending_requests", _ENVOY_DEFAULT),
            value("max_requests", _ENVOY_DEFAULT),
            value("max_retries", 3),
            budget,
            min_concurrency,
        )


class Admission:
    """The answer to a request asking to go upstream: ``go``, ``wait`` (queued) or ``overflow``."""

    GO, WAIT, OVERFLOW = "go", "wait", "overflow"


@dataclass(slots=True)
class CircuitBreaker:
    """Counts a cluster's requests, waiters and retries in flight against its :class:`Limits`."""

    limits: Limits
    http2: bool = False
    active: int = 0
    pending: int = 0
    retries: int = 0

    @property
    def _cap(self) -> int:
        return (
            self.limits.max_requests
            if self.http2
            else min(self.limits.max_connections, self.limits.max_requests)
        )

    def admit(self) -> str:
        """Whether a new request may go now, must wait, or overflows (503 UO)."""
        if self.active < self._cap and self.pending == 0:
            self.active += 1
            return Admission.GO
        if self.pending < self.limits.max_pending_requests:
            self.pending += 1
            return Admission.WAIT
        return Admission.OVERFLOW

    def may_proceed(self) -> bool:
        """For a waiter woken up: takes a slot when one is free (then it is active, not pending)."""
        if self.active < self._cap:
            self.pending -= 1
            self.active += 1
            return True
        return False

    def abandon(self) -> None:
        """A waiter gave up (its request timed out while queued)."""
        self.pending -= 1

    def release(self) -> None:
        """A request finished."""
        self.active -= 1

    def retry_allowed(self) -> bool:
        """Whether one more retry may start now (max_retries and the budget); counts it if so."""
        budget = max(self.limits.min_retry_concurrency, int(self.limits.budget_percent / 100 * self.active))
        if self.retries >= min(self.limits.max_retries, budget):
            return False
        self.retries += 1
        return True

    def retry_done(self) -> None:
        """A retry finished."""
        self.retries -= 1


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    """A cluster's outlier detection (None of it: detection is off)."""

    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 0
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: float = 10.0

    @classmethod
    def of(cls, cluster: cluster_pb2.Cluster) -> OutlierPolicy | None:
        """The policy of ``cluster``, or None when it has no outlier detection."""
        if not cluster.HasField("outlier_detection"):
            return None
        o = cluster.outlier_detection

        def seconds(name: str, default: float) -> float:
            return getattr(o, name).ToTimedelta().total_seconds() if o.HasField(name) else default

        five_xx = o.consecutive_5xx.value if o.HasField("consecutive_5xx") else 5
        if o.HasField("enforcing_consecutive_5xx") and o.enforcing_consecutive_5xx.value == 0:
            five_xx = 0
        gateway = o.consecutive_gateway_failure.value if o.HasField("consecutive_gateway_failure") else 5
        if not (
            o.HasField("enforcing_consecutive_gateway_failure")
            and o.enforcing_consecutive_gateway_failure.value
        ):
            gateway = 0  # Envoy enforces gateway failures only when asked (default 0 %)
        return cls(
            five_xx,
            gateway,
            seconds("interval", 10.0),
            seconds("base_ejection_time", 30.0),
            seconds("max_ejection_time", 300.0),
            float(o.max_ejection_percent.value) if o.HasField("max_ejection_percent") else 10.0,
        )


@dataclass(slots=True)
class _Health:
    consecutive_5xx: int = 0
    consecutive_gateway: int = 0
    ejections: int = 0
    ejected_until: float | None = None


@dataclass(slots=True)
class OutlierDetector:
    """Ejects and returns one cluster's endpoints (keys are ``host:port``)."""

    policy: OutlierPolicy
    health: dict[str, _Health] = field(default_factory=dict)
    _next_sweep: float = 0.0

    def ejected(self, now: float) -> frozenset[str]:
        """The endpoints ejected at ``now`` (returning those whose time is up, at each interval)."""
        if now >= self._next_sweep:
            self._next_sweep = now + self.policy.interval
            for state in self.health.values():
                if state.ejected_until is not None and now >= state.ejected_until:
                    state.ejected_until = None
        return frozenset(k for k, s in self.health.items() if s.ejected_until is not None)

    def report(
        self,
        endpoint: str,
        *,
        status: int | None,
        connect_failure: bool,
        now: float,
        endpoints: Sequence[str],
    ) -> bool:
        """Counts one result from ``endpoint``; returns True when it got ejected by it."""
        state = self.health.setdefault(endpoint, _Health())
        gateway = connect_failure or status in (502, 503, 504)
        if status is not None and status < 500 and not connect_failure:
            state.consecutive_5xx = state.consecutive_gateway = 0
            return False
        state.consecutive_5xx += 1
        state.consecutive_gateway = state.consecutive_gateway + 1 if gateway else 0
        policy = self.policy
        tripped = (policy.consecutive_5xx and state.consecutive_5xx >= policy.consecutive_5xx) or (
            policy.consecutive_gateway_failure
            and state.consecutive_gateway >= policy.consecutive_gateway_failure
        )
        if not tripped or state.ejected_until is not None:
            return False
        ejected = len(self.ejected(now))
        allowed = max(1, int(policy.max_ejection_percent / 100 * len(endpoints)))
        if ejected >= allowed:
            return False
        state.ejections += 1
        state.consecutive_5xx = state.consecutive_gateway = 0
        state.ejected_until = now + min(
            policy.base_ejection_time * state.ejections,
            max(policy.max_ejection_time, policy.base_ejection_time),
        )
        return True
