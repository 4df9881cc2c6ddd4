"""Envoy's route retry policy: which outcomes are retried, how often, and the backoff between tries.

``retry_on`` conditions: ``5xx`` (a 5xx answer, a reset or a connect failure), ``gateway-error``
(502, 503, 504), ``connect-failure``, ``reset``, ``retriable-4xx`` (409), ``retriable-status-codes``
(the policy's codes), ``refused-stream``. A request is never retried once any of its response
reached the client; the proxy enforces that, this module only decides.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from envoy.config.route.v3 import route_components_pb2 as rc

__all__ = ["Outcome", "RetryConfig", "backoff", "compile_retry", "should_retry"]

_BASE_INTERVAL = 0.025
_KNOWN = frozenset(
    {"5xx", "gateway-error", "connect-failure", "reset", "retriable-4xx", "retriable-status-codes",
     "refused-stream", "envoy-ratelimited", "retriable-headers", "reset-before-request"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """A compiled retry policy."""

    retry_on: frozenset[str]
    num_retries: int = 1
    per_try_timeout: float | None = None
    retriable_status_codes: frozenset[int] = frozenset()
    base_interval: float = _BASE_INTERVAL
    max_interval: float = 10 * _BASE_INTERVAL


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one try ended: an upstream status, or a connect failure, or a reset (no status)."""

    status: int | None = None
    connect_failure: bool = False
    reset: bool = False
    refused_stream: bool = False


def compile_retry(policy: rc.RetryPolicy) -> RetryConfig:
    """The policy's conditions (unknown ones are ignored, as Envoy does), retries (Envoy's default 1)
    and timeouts."""
    conditions = frozenset(c.strip() for c in policy.retry_on.split(",") if c.strip() in _KNOWN)
    base = _BASE_INTERVAL
    maximum = 10 * base
    if policy.HasField("retry_back_off"):
        base = policy.retry_back_off.base_interval.ToTimedelta().total_seconds() or base
        maximum = (
            policy.retry_back_off.max_interval.ToTimedelta().total_seconds()
            if policy.retry_back_off.HasField("max_interval")
            else 10 * base
        )
    return RetryConfig(
        retry_on=conditions,
        num_retries=policy.num_retries.value if policy.HasField("num_retries") else 1,
        per_try_timeout=policy.per_try_timeout.ToTimedelta().total_seconds() or None,
        retriable_status_codes=frozenset(policy.retriable_status_codes),
        base_interval=base,
        max_interval=maximum,
    )


def should_retry(config: RetryConfig, outcome: Outcome, retries_done: int) -> bool:
    """Whether the try that ended with ``outcome`` is retried (``retries_done`` retries so far)."""
    if retries_done >= config.num_retries:
        return False
    on = config.retry_on
    status = outcome.status
    if outcome.connect_failure:
        return bool(on & {"5xx", "gateway-error", "connect-failure", "reset-before-request"})
    if outcome.refused_stream:
        return bool(on & {"5xx", "refused-stream", "reset"})
    if outcome.reset or status is None:
        return bool(on & {"5xx", "reset"})
    if status >= 500 and "5xx" in on:
        return True
    if status in (502, 503, 504) and "gateway-error" in on:
        return True
    if status == 409 and "retriable-4xx" in on:
        return True
    return "retriable-status-codes" in on and status in config.retriable_status_codes


def backoff(config: RetryConfig, retries_done: int, rng: random.Random) -> float:
    """Seconds to wait before the next try: Envoy's fully jittered exponential backoff, a random
    time in ``[0, min(base * 2**retries_done, max))``."""
    ceiling = min(config.base_interval * (2**retries_done), config.max_interval)
    return rng.uniform(0, ceiling)
