"""The ``waypoint`` of Services and Workloads in the workload API: where ztunnel sends their traffic.

A Service (or pod) that uses a waypoint (labels ``istio.io/use-waypoint``, see
``istiod_lite.translate.l7.binding``) gets ``waypoint = {hostname: <gw>.<ns>.svc.<domain>,
hbone_mtls_port: 15008}`` once the waypoint is usable: its Gateway is of class
``istio-waypoint``, takes that kind of binding (``istio.io/waypoint-for``: ``service`` or
``all`` for Services, ``workload`` or ``all`` for pods), and is programmed -- its Service has a
ready pod, or the Gateway's status has an address (as istiod, which ignores a waypoint until
then, so traffic does not go to a waypoint that is not there yet). A label that names a missing
Gateway or one that is not a waypoint is a warning on the object using it; its traffic then
goes straight to the pods.
"""

from __future__ import annotations

from collections.abc import Iterable

from istiod_lite.translate._fields import FieldError, mapping, sequence
from istiod_lite.translate.l7.binding import (
    USE_WAYPOINT,
    USE_WAYPOINT_FIELD,
    not_a_waypoint,
    object_waypoint,
    waypoint_for,
)
from istiod_lite.translate.model import TranslateOptions, Warnings
from istiod_lite.view import ClusterView, KubeObject, ObjectKey
from mesh.api.istio.workload import workload_pb2 as pb
from mesh.ports import INBOUND_HBONE_PORT

__all__ = ["WaypointIndex"]
_TAKES = {"service": ("service", "all"), "workload": ("workload", "all")}


class WaypointIndex:
    """Resolves the waypoint of Services and pods in one view."""

    def __init__(
        self, view: ClusterView, options: TranslateOptions, ready_services: Iterable[ObjectKey]
    ) -> None:
        self._view = view
        self._domain = options.cluster_domain
        self._ready = frozenset(ready_services)

    def for_service(self, service: KubeObject, warnings: Warnings) -> pb.GatewayAddress | None:
        """The waypoint of a Service, or None."""
        return self._resolve(service, "service", warnings)

    def for_pod(self, pod: KubeObject, warnings: Warnings) -> pb.GatewayAddress | None:
        """The waypoint of a pod (a workload waypoint), or None."""
        return self._resolve(pod, "workload", warnings)

    def _resolve(self, obj: KubeObject, binding: str, warnings: Warnings) -> pb.GatewayAddress | None:
        key = object_waypoint(self._view, obj)
        if key is None:
            return None
        namespace, name = key
        gateway = self._view.gateways.get(key)
        field = USE_WAYPOINT_FIELD
        # pods inherit their namespace's label too; only a Service, or a pod's own label, is warned about
        warn = binding == "service" or USE_WAYPOINT in obj.labels
        if gateway is None:
            if warn:
                missing = f"waypoint {namespace}/{name} does not exist; traffic goes straight to the pods"
                warnings.add(obj, field, f"{missing} until a Gateway of class istio-waypoint has that name")
            return None
        problem = not_a_waypoint(gateway)
        if problem is not None:
            if warn:
                warnings.add(
                    obj, field, f"Gateway {namespace}/{name} is not a waypoint ({problem}); not used"
                )
            return None
        if waypoint_for(gateway) not in _TAKES[binding]:
            return None  # e.g. a service waypoint named by a namespace label, seen from a pod
        if not self._programmed(gateway):
            return None
        hostname = f"{name}.{namespace}.svc.{self._domain}"
        return pb.GatewayAddress(
            hostname=pb.NamespacedHostname(namespace=namespace, hostname=hostname),
            hbone_mtls_port=INBOUND_HBONE_PORT,
        )

    def _programmed(self, gateway: KubeObject) -> bool:
        if gateway.key in self._ready:
            return True
        try:
            addresses = sequence(gateway.status.get("addresses"), "status.addresses")
            return any(mapping(a, "status.addresses[]").get("value") for a in addresses)
        except FieldError:
            return False
