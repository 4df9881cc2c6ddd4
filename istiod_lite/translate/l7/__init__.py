"""Translation for waypoints: a ``ClusterView`` and one waypoint Gateway in, Envoy v3 resources out.

``translate_waypoint(view, gateway)`` gives a ``WaypointConfig``: one RouteConfiguration for the
waypoint (a virtual host per HTTP port of each Service that uses it, routes from HTTPRoutes or
VirtualServices), the Clusters those routes and Services need (policies from DestinationRules)
and their ClusterLoadAssignments (ready pods), plus the problems found, each naming its object
and field. Pure, like the ztunnel translation: the same view always gives the same resources.
"""

from __future__ import annotations

from istiod_lite.translate.l7.binding import (
    USE_WAYPOINT,
    USE_WAYPOINT_NAMESPACE,
    WAYPOINT_CLASS,
    WAYPOINT_FOR,
    not_a_waypoint,
    object_waypoint,
    waypoint_for,
)
from istiod_lite.translate.l7.waypoint import (
    CLUSTER_TYPE_URL,
    ENDPOINT_TYPE_URL,
    ROUTE_TYPE_URL,
    WaypointConfig,
    translate_waypoint,
)

__all__ = [
    "CLUSTER_TYPE_URL",
    "ENDPOINT_TYPE_URL",
    "ROUTE_TYPE_URL",
    "USE_WAYPOINT",
    "USE_WAYPOINT_NAMESPACE",
    "WAYPOINT_CLASS",
    "WAYPOINT_FOR",
    "WaypointConfig",
    "not_a_waypoint",
    "object_waypoint",
    "translate_waypoint",
    "waypoint_for",
]
