"""Envoy's local rate limit (``envoy.filters.http.local_ratelimit``) on a route, pure: a token
bucket per route (``max_tokens``, ``tokens_per_fill`` every ``fill_interval``), 429 when empty,
with the ``x-ratelimit-*`` headers of ``enable_x_ratelimit_headers: DRAFT_VERSION_03``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2

__all__ = ["RATE_LIMIT_FILTER", "RateLimitConfig", "TokenBucket", "compile_rate_limit"]

RATE_LIMIT_FILTER = "envoy.filters.http.local_ratelimit"


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """One route's bucket: its size, the refill and whether to add the x-ratelimit headers."""

    max_tokens: int
    tokens_per_fill: int
    fill_interval: float
    headers: bool = True
    status: int = 429


def compile_rate_limit(config: local_rate_limit_pb2.LocalRateLimit, where: str) -> RateLimitConfig | None:
    """The route's bucket, or None when the filter is not enabled for it; raises ValueError (with
    ``where``) for a bucket Envoy would refuse."""
    if not config.HasField("token_bucket"):
        return None
    enabled = config.filter_enabled.default_value
    enforced = config.filter_enforced.default_value
    if (
        not config.HasField("filter_enabled")
        or enabled.numerator == 0
        or not config.HasField("filter_enforced")
    ):
        return None
    if enforced.numerator == 0:
        return None
    bucket = config.token_bucket
    interval = bucket.fill_interval.ToTimedelta().total_seconds()
    if bucket.max_tokens <= 0 or interval <= 0:
        raise ValueError(f"{where}: token_bucket needs max_tokens > 0 and a fill_interval > 0")
    per_fill = bucket.tokens_per_fill.value if bucket.HasField("tokens_per_fill") else 1
    status = config.status.code if config.HasField("status") and config.status.code else 429
    headers = config.enable_x_ratelimit_headers == ratelimit_pb2.DRAFT_VERSION_03
    return RateLimitConfig(bucket.max_tokens, per_fill, interval, headers, status)


@dataclass(slots=True)
class TokenBucket:
    """A bucket that starts full and refills ``tokens_per_fill`` at each whole ``fill_interval``."""

    config: RateLimitConfig
    tokens: int = -1
    _filled_at: float = field(default=math.nan)

    def take(self, now: float) -> bool:
        """Takes one token; False when the bucket is empty (the request is limited)."""
        if math.isnan(self._filled_at):
            self.tokens, self._filled_at = self.config.max_tokens, now
        fills = int((now - self._filled_at) // self.config.fill_interval)
        if fills:
            self.tokens = min(self.config.max_tokens, self.tokens + fills * self.config.tokens_per_fill)
            self._filled_at += fills * self.config.fill_interval
        if self.tokens <= 0:
            return False
        self.tokens -= 1
        return True

    def headers(self, now: float) -> list[tuple[str, str]]:
        """The x-ratelimit-* headers (limit, remaining, seconds to the next fill)."""
        if not self.config.headers:
            return []
        reset = max(0, math.ceil(self._filled_at + self.config.fill_interval - now))
        return [
            ("x-ratelimit-limit", str(self.config.max_tokens)),
            ("x-ratelimit-remaining", str(max(self.tokens, 0))),
            ("x-ratelimit-reset", str(reset)),
        ]
