"""The waypoint's config from istiod_lite over Delta ADS (docs/waypoints.md, "How a waypoint gets its
config"): one stream subscribing to its RouteConfiguration, Clusters, ClusterLoadAssignments and the
workload API's Addresses.

Each resource is checked as it arrives (a RouteConfiguration is compiled, endpoints must have an
address), so a bad one is NACKed by name and keeps its last good value, as ztunnel does. After each
response the good resources are compiled into a new :class:`WaypointConfig`, swapped in whole: a
request sees the old config or the new one, never a mix.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import structlog
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf.message import Message

from mesh.api.istio.workload import workload_pb2
from mesh.convert import address_from_proto
from mesh.errors import ConfigError
from mesh.l7.router import compile_routes
from mesh.model import Service, Workload
from mesh.rt.xds import ADDRESS_TYPE_URL, XdsClient, XdsNode, XdsState, unpacking
from waypoint.config import CLUSTER_TYPE, ENDPOINTS_TYPE, ROUTES_TYPE, WaypointConfig, endpoints_of

__all__ = ["WaypointPod", "WaypointXds"]

_ENV = {"name": "POD_NAME", "namespace": "POD_NAMESPACE", "ip": "INSTANCE_IP", "waypoint": "WAYPOINT_NAME"}
_ENVOY_TYPES = (ROUTES_TYPE, CLUSTER_TYPE, ENDPOINTS_TYPE)


@dataclass(frozen=True, slots=True)
class WaypointPod:
    """The waypoint's pod, as the lab (and Kubernetes' downward API) tells it through the environment."""

    name: str
    namespace: str
    ip: str
    waypoint: str
    """The Gateway this pod serves (``WAYPOINT_NAME``)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WaypointPod:
        """Reads POD_NAME, POD_NAMESPACE, INSTANCE_IP and WAYPOINT_NAME; raises ConfigError naming
        the missing ones."""
        missing = [var for var in _ENV.values() if not env.get(var)]
        if missing:
            raise ConfigError(
                f"the waypoint needs {', '.join(missing)} in its environment to ask istiod_lite for config",
                hint="set them as the lab does (docs/waypoints.md, 'The waypoint workload')",
            )
        return cls(**{field: env[var] for field, var in _ENV.items()})

    def node(self) -> XdsNode:
        """The node it announces: ``waypoint~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`` and WAYPOINT_NAME."""
        ns = self.namespace
        return XdsNode(
            id=f"waypoint~{self.ip}~{self.name}.{ns}~{ns}.svc.cluster.local",
            metadata={"WAYPOINT_NAME": self.waypoint, "NAME": self.name, "NAMESPACE": ns},
        )


def _checked_routes(name: str, message: route_pb2.RouteConfiguration) -> route_pb2.RouteConfiguration:
    compile_routes(message)  # raises RouteConfigError (a MeshError): the client NACKs this resource
    return message


def _checked_cluster(name: str, message: cluster_pb2.Cluster) -> cluster_pb2.Cluster:
    endpoints_of(message.load_assignment, name)
    return message


def _checked_assignment(
    name: str, message: endpoint_pb2.ClusterLoadAssignment
) -> endpoint_pb2.ClusterLoadAssignment:
    endpoints_of(message, name)
    return message


class WaypointXds:
    """Keeps the waypoint's :class:`WaypointConfig` up to date from istiod_lite.

    ``config()`` is the current config (empty until the first state; hand it to WaypointProxy);
    ``synced`` says every type arrived and a config was built from it (readiness waits for it);
    ``addresses`` holds the workload API's workloads and services by name; ``run()`` keeps the
    stream open until cancelled. ``tls`` None means plaintext (tests).
    """

    def __init__(
        self,
        target: str,
        *,
        node: XdsNode,
        rng: random.Random,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
        call_metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self._config = WaypointConfig()
        self._built = False
        self.addresses: Mapping[str, Workload | Service] = MappingProxyType({})
        self._log = structlog.get_logger().bind(component="waypoint.xds")
        self.client = XdsClient(
            target,
            node=node,
            converters={
                ROUTES_TYPE: unpacking(route_pb2.RouteConfiguration, _checked_routes),
                CLUSTER_TYPE: unpacking(cluster_pb2.Cluster, _checked_cluster),
                ENDPOINTS_TYPE: unpacking(endpoint_pb2.ClusterLoadAssignment, _checked_assignment),
                ADDRESS_TYPE_URL: unpacking(workload_pb2.Address, address_from_proto),
            },
            on_state=self._apply,
            rng=rng,
            tls=tls,
            server_name=server_name,
            call_metadata=call_metadata,
        )

    def config(self) -> WaypointConfig:
        """The config now (replaced whole on each change)."""
        return self._config

    @property
    def synced(self) -> bool:
        """True once every type arrived and a config was built from it."""
        return self.client.synced and self._built

    async def wait_synced(self) -> None:
        """Waits until every type arrived (the config is built before the client reports it)."""
        await self.client.wait_synced()

    async def run(self) -> None:
        """Connects and reconnects until cancelled."""
        await self.client.run()

    def _apply(self, state: XdsState) -> None:
        self.addresses = MappingProxyType(
            {
                name: value
                for name, value in state.of_type(ADDRESS_TYPE_URL).items()
                if isinstance(value, Workload | Service)
            }
        )
        resources = [
            value
            for type_url in _ENVOY_TYPES
            for value in state.of_type(type_url).values()
            if isinstance(value, Message)
        ]
        try:
            config = WaypointConfig.build(resources)
        except ConfigError as exc:  # each resource was checked alone; keep serving the last good whole
            self._log.error("waypoint.config_rejected", error=exc.message, hint=exc.hint)
            return
        self._config = config
        self._built = True
        self._log.info(
            "waypoint.config_applied", routes=sorted(config.routers), clusters=len(config.clusters)
        )
