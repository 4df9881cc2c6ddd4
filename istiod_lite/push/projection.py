"""What each subscriber gets out of a snapshot.

A projection is a pure function ``(subscriber, snapshot) -> type URL -> resources``, like
istiod's generators that take (proxy, push context) and nothing else. ztunnel gets every
Address and Authorization (as Istio does: ztunnel needs the whole mesh to route and to look
up peers). A waypoint gets its own RouteConfiguration, Clusters and ClusterLoadAssignments
(kept in the snapshot under its scope, ``<namespace>/<gateway name>``) plus every Address;
``select_projection`` picks the projection from the node id's proxy type.

A waypoint connects with node id ``waypoint~<pod ip>~<pod>.<namespace>~<namespace>.svc.<domain>``
and names its Gateway in the node metadata ``WAYPOINT_NAME``; without it, the Gateway is the
caller's service account (a waypoint runs as the service account named after its Gateway).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from istiod_lite.push.errors import SubscriberRejectedError
from istiod_lite.push.snapshot import ResourceSet, Snapshot, scoped_type
from istiod_lite.translate.l7 import CLUSTER_TYPE_URL, ENDPOINT_TYPE_URL, ROUTE_TYPE_URL
from mesh.identity.errors import InvalidSpiffeId
from mesh.identity.spiffe import WorkloadIdentity
from mesh.rt.xds import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL

__all__ = [
    "ADDRESS_TYPE_URL",
    "AUTHORIZATION_TYPE_URL",
    "Projection",
    "Subscriber",
    "parse_node_id",
    "WAYPOINT_TYPES",
    "select_projection",
    "waypoint_projection",
    "ztunnel_projection",
]

_ZTUNNEL_TYPES = (ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL)
WAYPOINT_TYPES = (ROUTE_TYPE_URL, CLUSTER_TYPE_URL, ENDPOINT_TYPE_URL)
"""The Envoy types a waypoint's own config comes in (snapshot keys scoped per waypoint)."""
WAYPOINT_NAME = "WAYPOINT_NAME"


@dataclass(frozen=True, slots=True)
class Subscriber:
    """Who is on the other end of a stream: parsed node id plus node metadata."""

    node_id: str
    proxy_type: str
    ip: str
    pod: str
    namespace: str
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    identity: str = ""
    waypoint: str = ""
    """For a waypoint: the Gateway it serves, ``<namespace>/<name>``; "" for other proxies."""

    @property
    def node_name(self) -> str:
        """The Kubernetes node the proxy runs on (metadata ``NODE_NAME``), or ``""``."""
        return self.metadata.get("NODE_NAME", "")


def parse_node_id(node_id: str, *, metadata: Mapping[str, str], identity: str = "") -> Subscriber:
    """Parses ``<type>~<ip>~<pod>.<ns>~<ns>.svc.<domain>``, e.g. ``ztunnel~10.0.0.2~zt.istio-system~...``."""
    parts = node_id.split("~")
    if len(parts) != 4 or not all(parts[:3]):
        raise SubscriberRejectedError(
            f"node id {node_id!r} is not <type>~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>",
            hint="use e.g. ztunnel~10.244.1.2~ztunnel-abc.istio-system~istio-system.svc.cluster.local",
        )
    proxy_type, ip, pod_ns, _domain = parts
    pod, _, namespace = pod_ns.partition(".")
    waypoint = _waypoint_name(node_id, metadata, identity) if proxy_type == "waypoint" else ""
    return Subscriber(
        node_id=node_id,
        proxy_type=proxy_type,
        ip=ip,
        pod=pod,
        namespace=namespace,
        metadata=MappingProxyType(dict(metadata)),
        identity=identity,
        waypoint=f"{namespace}/{waypoint}" if waypoint else "",
    )


def _waypoint_name(node_id: str, metadata: Mapping[str, str], identity: str) -> str:
    name = metadata.get(WAYPOINT_NAME, "")
    if not name and identity:
        try:
            name = WorkloadIdentity.parse(identity).service_account
        except InvalidSpiffeId:
            name = ""
    if not name:
        raise SubscriberRejectedError(
            f"waypoint {node_id} does not say which Gateway it serves",
            hint=f"set the node metadata {WAYPOINT_NAME} to the Gateway's name",
        )
    return name


Projection = Callable[[Subscriber, Snapshot], Mapping[str, ResourceSet]]


def ztunnel_projection(subscriber: Subscriber, snapshot: Snapshot) -> Mapping[str, ResourceSet]:
    """Every Address and every Authorization, as istiod sends to each ztunnel."""
    del subscriber  # every ztunnel gets the same view today; the parameter keeps the shape
    return {type_url: snapshot.of_type(type_url) for type_url in _ZTUNNEL_TYPES}


def waypoint_projection(subscriber: Subscriber, snapshot: Snapshot) -> Mapping[str, ResourceSet]:
    """The waypoint's own routes, clusters and endpoints, and every Address."""
    own = {
        type_url: snapshot.of_type(scoped_type(type_url, subscriber.waypoint)) for type_url in WAYPOINT_TYPES
    }
    return {**own, ADDRESS_TYPE_URL: snapshot.of_type(ADDRESS_TYPE_URL)}


_PROJECTIONS: Mapping[str, Projection] = MappingProxyType(
    {"ztunnel": ztunnel_projection, "waypoint": waypoint_projection}
)


def select_projection(subscriber: Subscriber) -> Projection:
    """The projection for the subscriber's proxy type."""
    projection = _PROJECTIONS.get(subscriber.proxy_type)
    if projection is None:
        raise SubscriberRejectedError(
            f"no config is generated for proxy type {subscriber.proxy_type!r} (node {subscriber.node_id})",
            hint=f"connect as one of: {', '.join(sorted(_PROJECTIONS))}",
        )
    return projection
