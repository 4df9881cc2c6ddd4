"""Metrics registries: each component (and each test) builds its own; nothing registers at import."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["build_registry", "render"]


class _BuildInfo(Collector):
    def __init__(self, component: str, tag: str) -> None:
        self._component = component
        self._tag = tag

    def collect(self) -> list[GaugeMetricFamily]:
        family = GaugeMetricFamily("istio_build", "Istio component build info", labels=["component", "tag"])
        family.add_metric([self._component, self._tag], 1.0)
        return [family]


def build_registry(*, component: str, tag: str = "0.1.0") -> CollectorRegistry:
    """A fresh registry carrying ``istio_build{component, tag}`` like Istio's components.

    Counters export no ``*_created`` series (Istio's components have none)."""
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_BuildInfo(component, tag))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text exposition format."""
    return generate_latest(registry)
