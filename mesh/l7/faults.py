"""Envoy's HTTP fault filter (``envoy.extensions.filters.http.fault.v3.HTTPFault``), per route:
a fixed delay and an abort (HTTP status or gRPC status), each applied to a percentage of requests.
Istio's VirtualService ``fault`` translates to it."""

from __future__ import annotations

import random
from dataclasses import dataclass

from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.type.v3 import percent_pb2

__all__ = ["FAULT_FILTER", "FaultConfig", "FaultDecision", "compile_fault", "decide_fault"]

FAULT_FILTER = "envoy.filters.http.fault"
"""The key of the fault filter's per-route config in ``typed_per_filter_config``."""

_DENOMINATORS = {
    percent_pb2.FractionalPercent.HUNDRED: 100,
    percent_pb2.FractionalPercent.TEN_THOUSAND: 10_000,
    percent_pb2.FractionalPercent.MILLION: 1_000_000,
}


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """A compiled HTTPFault: each fault with its chance as (numerator, denominator)."""

    delay: float | None = None
    delay_chance: tuple[int, int] = (0, 100)
    abort_http: int | None = None
    abort_grpc: int | None = None
    abort_chance: tuple[int, int] = (0, 100)


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """What happens to one request: wait ``delay`` seconds, then maybe answer with the abort."""

    delay: float = 0.0
    abort_http: int | None = None
    abort_grpc: int | None = None

    @property
    def aborted(self) -> bool:
        """True when the request is answered by the fault instead of the upstream."""
        return self.abort_http is not None or self.abort_grpc is not None


def _chance(percent: percent_pb2.FractionalPercent) -> tuple[int, int]:
    return percent.numerator, _DENOMINATORS[percent.denominator]


def compile_fault(config: fault_pb2.HTTPFault) -> FaultConfig:
    """The faults of one route. A fault without a percentage applies to every request (Envoy's default)."""
    delay = delay_chance = None
    if config.HasField("delay") and config.delay.HasField("fixed_delay"):
        delay = config.delay.fixed_delay.ToTimedelta().total_seconds()
        delay_chance = _chance(config.delay.percentage) if config.delay.HasField("percentage") else (100, 100)
    abort_http = abort_grpc = None
    abort_chance = (0, 100)
    if config.HasField("abort"):
        kind = config.abort.WhichOneof("error_type")
        if kind == "http_status":
            abort_http = config.abort.http_status
        elif kind == "grpc_status":
            abort_grpc = config.abort.grpc_status
        abort_chance = _chance(config.abort.percentage) if config.abort.HasField("percentage") else (100, 100)
    return FaultConfig(delay, delay_chance or (0, 100), abort_http, abort_grpc, abort_chance)


def _hit(chance: tuple[int, int], rng: random.Random) -> bool:
    numerator, denominator = chance
    return numerator > 0 and rng.randrange(denominator) < numerator


def decide_fault(config: FaultConfig, rng: random.Random) -> FaultDecision:
    """Draws the delay and the abort independently, as Envoy does."""
    delay = config.delay if config.delay and _hit(config.delay_chance, rng) else 0.0
    if _hit(config.abort_chance, rng):
        return FaultDecision(delay, config.abort_http, config.abort_grpc)
    return FaultDecision(delay)
