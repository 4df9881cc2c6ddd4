"""The mesh's well-known ports and socket mark, defined once (Istio's numbers).

Ports 15001, 15006 and 15008 are never proxied to (no loops), and every socket the mesh opens
carries ``MESH_MARK`` so the pod's capture rules let it through.
"""

from __future__ import annotations

__all__ = [
    "ADMIN_PORT",
    "INBOUND_HBONE_PORT",
    "INBOUND_PLAINTEXT_PORT",
    "ISTIOD_DEBUG_PORT",
    "ISTIOD_PORT",
    "MESH_MARK",
    "MESH_MARK_MASK",
    "METRICS_PORT",
    "OUTBOUND_PORT",
    "READINESS_PORT",
]

OUTBOUND_PORT = 15001
"""ztunnel's outbound capture listener in each pod's netns."""
INBOUND_PLAINTEXT_PORT = 15006
"""ztunnel's inbound listener for plaintext (unmeshed) clients in each pod's netns."""
INBOUND_HBONE_PORT = 15008
"""HBONE (HTTP/2 CONNECT over mutual TLS): ztunnel in each pod's netns, and every waypoint."""
ADMIN_PORT = 15000
"""A proxy's admin endpoint (config dump, log level), on localhost only."""
METRICS_PORT = 15020
"""A proxy's Prometheus metrics."""
READINESS_PORT = 15021
"""Readiness (``/healthz/ready``) of every component."""
ISTIOD_PORT = 15012
"""istiod's gRPC over TLS: xDS and the CA."""
ISTIOD_DEBUG_PORT = 15014
"""istiod's metrics and debug endpoints."""

MESH_MARK = 0x539
"""SO_MARK on every socket the mesh opens (Istio's 1337), so the capture rules skip it."""
MESH_MARK_MASK = 0xFFF
"""The bits of the packet mark the capture rules compare with ``MESH_MARK``."""
