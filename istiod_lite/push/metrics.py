"""Push metrics with istiod's names, registered on a registry the caller passes in."""

from __future__ import annotations

from collections.abc import Callable

from mesh.rt.metrics import Counter, Gauge, Histogram, Registry

__all__ = ["PushMetrics", "short_type"]

_PUSH_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def short_type(type_url: str) -> str:
    """``type.googleapis.com/istio.workload.Address`` -> ``Address`` (the metric label)."""
    return type_url.rpartition(".")[2] or type_url


class PushMetrics:
    """Counters and histograms of the push side."""

    def __init__(self, registry: Registry, *, connected: Callable[[], int]) -> None:
        self.pushes = Counter(
            "pilot_xds_pushes", "Delta xDS responses sent, by type.", ["type"], registry=registry
        )
        self.rejects = Counter(
            "pilot_xds_rejects", "Responses NACKed by subscribers, by type.", ["type"], registry=registry
        )
        self.push_time = Histogram(
            "pilot_xds_push_time_seconds",
            "Time to write one push to one subscriber, from taking it off the queue.",
            ["type"],
            buckets=_PUSH_BUCKETS,
            registry=registry,
        )
        self.convergence = Histogram(
            "pilot_proxy_convergence_time_seconds",
            "Time from the first change of a debounced burst until a subscriber's push was written.",
            buckets=_PUSH_BUCKETS,
            registry=registry,
        )
        self.builds = Counter(
            "istiod_lite_snapshot_builds", "Snapshots built, by outcome.", ["outcome"], registry=registry
        )
        self.build_time = Histogram(
            "istiod_lite_snapshot_build_seconds",
            "Time to translate and version one snapshot.",
            buckets=_PUSH_BUCKETS,
            registry=registry,
        )
        self.skipped = Counter(
            "istiod_lite_pushes_coalesced",
            "Snapshots a subscriber skipped because a newer one replaced them in its queue.",
            registry=registry,
        )
        self.refused = Counter(
            "istiod_lite_xds_refused",
            "xDS streams refused before any config was sent, by gRPC status code.",
            ["code"],
            registry=registry,
        )
        gauge = Gauge("pilot_xds", "Connected xDS subscribers.", registry=registry)
        gauge.set_function(lambda: float(connected()))
