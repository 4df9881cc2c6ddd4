"""The Kubernetes API as a source of istiod_lite's caches: every resource it translates, listed and
watched cluster-wide by the shared informer loop (``mesh.rt.kube.watch``: list then watch, 410
re-list, bookmarks, backoff, CRDs not served). The sink is marked synced once every kind was listed.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import structlog
from kubernetes import client as k8s

from istiod_lite.sources import CacheSink
from istiod_lite.sources.objects import parse_object
from mesh.rt.kube.rbac import ApiCall
from mesh.rt.kube.watch import Resource, WatchSettings, make_api_client, watch_resources

__all__ = ["API_CALLS", "RESOURCES", "KubeSource", "make_api_client"]


RESOURCES: tuple[Resource, ...] = (
    Resource("Namespace", "", "v1", "namespaces"),
    Resource("Pod", "", "v1", "pods"),
    Resource("Service", "", "v1", "services"),
    Resource("EndpointSlice", "discovery.k8s.io", "v1", "endpointslices"),
    Resource("ServiceAccount", "", "v1", "serviceaccounts"),
    Resource("ReplicaSet", "apps", "v1", "replicasets"),
    Resource("PeerAuthentication", "security.istio.io", "v1", "peerauthentications"),
    Resource("AuthorizationPolicy", "security.istio.io", "v1", "authorizationpolicies"),
    Resource("RequestAuthentication", "security.istio.io", "v1", "requestauthentications"),
    Resource("VirtualService", "networking.istio.io", "v1", "virtualservices", ("v1beta1", "v1alpha3")),
    Resource("DestinationRule", "networking.istio.io", "v1", "destinationrules", ("v1beta1", "v1alpha3")),
    Resource("Gateway", "gateway.networking.k8s.io", "v1", "gateways", ("v1beta1",)),
    Resource("HTTPRoute", "gateway.networking.k8s.io", "v1", "httproutes", ("v1beta1",)),
    Resource("Telemetry", "telemetry.istio.io", "v1", "telemetries", ("v1alpha1",)),
    Resource("LocalRateLimit", "policy.mesh.dev", "v1alpha1", "localratelimits"),
)


API_CALLS = tuple(ApiCall(r.group, r.plural, ("list", "watch")) for r in RESOURCES)
"""What the informers call (RBAC: see mesh.rt.kube.rbac)."""


class KubeSource:
    """Feeds a ``CacheSink`` from the Kubernetes API until cancelled."""

    def __init__(
        self,
        api: k8s.ApiClient,
        sink: CacheSink,
        *,
        resources: Iterable[Resource] = RESOURCES,
        settings: WatchSettings | None = None,
        rng: random.Random | None = None,
        logger: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        self._api = api
        self._sink = sink
        self._resources = tuple(resources)
        self._settings = settings or WatchSettings()
        self._rng = rng or random.Random()
        self._log = logger or structlog.get_logger().bind(component="istiod_lite.sources.kube")
        self._listed: set[str] = set()

    async def run(self) -> None:
        """Lists and watches every resource (a thread each) until cancelled."""
        await watch_resources(
            self._api,
            self._resources,
            parse=lambda kind, raw: parse_object(raw, kind=kind),
            deliver=self._apply,
            settings=self._settings,
            rng=self._rng,
            log=self._log,
        )

    def _apply(self, op: str, *args: Any) -> None:
        if op == "upsert":
            self._sink.upsert(*args)
        elif op == "delete":
            self._sink.delete(*args)
        else:
            kind, objects = args
            self._sink.replace(kind, objects)
            if kind not in self._listed:
                self._listed.add(kind)
                if len(self._listed) == len(self._resources):
                    self._sink.mark_synced()
