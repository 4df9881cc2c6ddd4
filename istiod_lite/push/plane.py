"""The push side assembled: one object for app.py to register, run, and expose on 15014."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from istiod_lite.ca.auth import Authenticator
from istiod_lite.push.debounce import DebounceSettings, Sleep
from istiod_lite.push.debug import debug_routes
from istiod_lite.push.hub import BuildFn, ConfigPusher, Hub
from istiod_lite.push.metrics import PushMetrics
from istiod_lite.push.server import DeltaAdsServer
from mesh.clock import Clock
from mesh.rt.http import Handler
from mesh.rt.metrics import Registry

__all__ = ["PushPlane"]


class PushPlane:
    """Hub, pusher and Delta ADS servicer sharing one clock and one metrics registry.

    Typical wiring (``app.py``)::

        plane = PushPlane(translated_build(informers, cluster_id=..., trust_domain=...),
                          clock=clock, registry=registry, authenticator=auth)
        build_server(..., extra_handlers=[plane.rpc_handler()])   # 15012, with the CA
        informers.on_change(plane.mark_dirty)
        await informers.wait_synced()
        drain.track(asyncio.create_task(plane.run()))
        await HttpServer(plane.debug_routes()).start("0.0.0.0", 15014)

    The gRPC server must allow large messages for xDS: a full state is ~0.3 KB per workload in
    one response (send limit: unlimited or 200 MiB like ztunnel), and a reconnecting agent's
    ``initial_resource_versions`` is ~65 bytes per resource (receive limit: several MiB).
    """

    def __init__(
        self,
        build: BuildFn,
        *,
        clock: Clock,
        registry: Registry,
        authenticator: Authenticator | None = None,
        settings: DebounceSettings | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.registry = registry
        self.hub = Hub(clock=clock)
        self.metrics = PushMetrics(registry, connected=lambda: len(self.hub.connections()))
        self.pusher = ConfigPusher(
            build, self.hub, clock=clock, metrics=self.metrics, settings=settings, sleep=sleep
        )
        self.ads = DeltaAdsServer(self.hub, clock=clock, metrics=self.metrics, authenticator=authenticator)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Registers DeltaAggregatedResources on ``server``."""
        self.ads.add_to_server(server)

    def rpc_handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        """The DeltaAggregatedResources handler, e.g. for ``build_server(extra_handlers=...)``."""
        return self.ads.rpc_handler()

    def mark_dirty(self) -> None:
        """The informers' change callback: schedules a debounced rebuild."""
        self.pusher.mark_dirty()

    async def run(self, *, build_first: bool = True) -> None:
        """Builds the first snapshot, then rebuilds on changes until cancelled."""
        await self.pusher.run(build_first=build_first)

    def debug_routes(self) -> dict[str, Handler]:
        """``/debug/syncz`` and ``/metrics`` for the 15014 ``mesh.rt.http.HttpServer``."""
        return debug_routes(self.hub, self.registry)
