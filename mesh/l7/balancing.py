"""Choosing an endpoint of a cluster: Envoy's ROUND_ROBIN, RANDOM and LEAST_REQUEST (two random
choices, the one with fewer active requests), from ``Cluster.lb_policy``."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from envoy.config.cluster.v3 import cluster_pb2

__all__ = ["Endpoint", "EndpointPicker"]


@dataclass(slots=True)
class Endpoint:
    """One upstream address, whether it is reached over HBONE (an enrolled pod: through its
    ztunnel), and the requests in flight to it (for LEAST_REQUEST)."""

    host: str
    port: int
    hbone: bool = False
    active: int = 0


@dataclass(slots=True)
class EndpointPicker:
    """Picks endpoints of one cluster by its policy; ``endpoints`` may be replaced at any time."""

    policy: int = cluster_pb2.Cluster.ROUND_ROBIN
    endpoints: Sequence[Endpoint] = ()
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    def pick(
        self, rng: random.Random, exclude: Endpoint | None = None, ejected: frozenset[str] = frozenset()
    ) -> Endpoint | None:
        """An endpoint (another than ``exclude`` when there is one, for a retry; none of the
        ``ejected`` ``host:port`` ones unless all are: Envoy's panic mode), or None if empty."""
        healthy = [e for e in self.endpoints if f"{e.host}:{e.port}" not in ejected] or list(self.endpoints)
        choices = [e for e in healthy if e is not exclude] or healthy
        if not choices:
            return None
        if self.policy == cluster_pb2.Cluster.RANDOM:
            return rng.choice(choices)
        if self.policy == cluster_pb2.Cluster.LEAST_REQUEST and len(choices) > 1:
            a, b = rng.sample(choices, 2)
            return a if a.active <= b.active else b
        return choices[next(self._turn) % len(choices)]
