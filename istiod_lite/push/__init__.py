"""istiod_lite.push: debounce, versioned snapshots, per-subscriber projection and coalescing, Delta ADS.

Entry points: ``PushPlane`` (assembled; ``debug_routes()`` for the 15014 HttpServer), ``ztunnel_projection``.
"""

from __future__ import annotations

from istiod_lite.push.debounce import DebounceSettings
from istiod_lite.push.debug import debug_routes
from istiod_lite.push.hub import BuildFn, ConfigPusher, Hub
from istiod_lite.push.plane import PushPlane
from istiod_lite.push.projection import Projection, Subscriber, select_projection, ztunnel_projection
from istiod_lite.push.server import DeltaAdsServer
from istiod_lite.push.snapshot import Snapshot

__all__ = [
    "BuildFn",
    "ConfigPusher",
    "DebounceSettings",
    "DeltaAdsServer",
    "Hub",
    "Projection",
    "PushPlane",
    "Snapshot",
    "Subscriber",
    "debug_routes",
    "select_projection",
    "ztunnel_projection",
]
