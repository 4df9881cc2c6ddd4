"""Which Gateways are waypoints, and which Services and pods use which waypoint.

A waypoint is a ``gateway.networking.k8s.io`` Gateway of class ``istio-waypoint``. A Service or
pod uses one through the label ``istio.io/use-waypoint`` (a Gateway name) and optionally
``istio.io/use-waypoint-namespace``; the object's own label beats its namespace's, and the value
``none`` opts the object out of its namespace's waypoint. The Gateway's ``istio.io/waypoint-for``
(``service``, the default; ``workload``; ``all``; ``none``) says which kind of binding it takes.
"""

from __future__ import annotations

from collections.abc import Mapping

from istiod_lite.translate.services import ServicePort
from istiod_lite.view import ClusterView, KubeObject, ObjectKey

__all__ = [
    "GATEWAY_API_GROUP",
    "GATEWAY_NAME_LABEL",
    "USE_WAYPOINT",
    "USE_WAYPOINT_FIELD",
    "USE_WAYPOINT_NAMESPACE",
    "WAYPOINT_CLASS",
    "WAYPOINT_FOR",
    "PortProtocol",
    "api_group",
    "not_a_waypoint",
    "object_waypoint",
    "port_protocol",
    "waypoint_for",
]

WAYPOINT_CLASS = "istio-waypoint"
GATEWAY_API_GROUP = "gateway.networking.k8s.io"
USE_WAYPOINT = "istio.io/use-waypoint"
USE_WAYPOINT_NAMESPACE = "istio.io/use-waypoint-namespace"
USE_WAYPOINT_FIELD = "metadata.labels[istio.io/use-waypoint]"
"""The field problems about an object's waypoint label are reported on."""
WAYPOINT_FOR = "istio.io/waypoint-for"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
_WAYPOINT_FOR_VALUES = frozenset({"service", "workload", "all", "none"})
_OPT_OUT = "none"

PortProtocol = str
"""``http``, ``tcp`` or ``unknown`` (a waypoint sniffs unknown ports; both chains exist)."""

_HTTP_PROTOCOLS = frozenset(
    {"http", "http2", "grpc", "grpc-web", "h2c", "kubernetes.io/h2c", "kubernetes.io/ws"}
)
_TCP_PROTOCOLS = frozenset({"tcp", "tls", "https", "mongo", "mysql", "redis", "hbone", "kubernetes.io/wss"})


def api_group(obj: KubeObject) -> str:
    """The group of the object's ``apiVersion`` ("" for the core group)."""
    api_version = obj.body.get("apiVersion")
    group, _, _ = str(api_version or "").rpartition("/")
    return group


def not_a_waypoint(gateway: KubeObject) -> str | None:
    """Why ``gateway`` is not a waypoint (a message for a problem), or None when it is one."""
    if api_group(gateway) != GATEWAY_API_GROUP:
        return f"apiVersion {gateway.body.get('apiVersion')!r} is not {GATEWAY_API_GROUP}/v1; not a waypoint"
    cls = gateway.spec.get("gatewayClassName")
    if cls != WAYPOINT_CLASS:
        return f"gatewayClassName {cls!r} is not {WAYPOINT_CLASS!r}; the Gateway is not a waypoint"
    return None


def waypoint_for(gateway: KubeObject) -> str | None:
    """The Gateway's ``istio.io/waypoint-for`` (default ``service``), or None when the value is unknown."""
    value = gateway.labels.get(WAYPOINT_FOR, "service")
    return value if value in _WAYPOINT_FOR_VALUES else None


def _label_waypoint(labels: Mapping[str, str], namespace: str) -> ObjectKey | str | None:
    name = labels.get(USE_WAYPOINT)
    if name is None:
        return ""  # not set here: the namespace's label decides
    if name == _OPT_OUT:
        return None
    return (labels.get(USE_WAYPOINT_NAMESPACE) or namespace, name)


def object_waypoint(view: ClusterView, obj: KubeObject) -> ObjectKey | None:
    """The (namespace, name) of the waypoint a Service or pod uses, or None.

    The object's label wins over its namespace's; ``none`` on the object opts it out. A
    gateway's own Service and pods (label ``gateway.networking.k8s.io/gateway-name``) never use
    a waypoint: a waypoint's traffic must not loop back through a waypoint.
    """
    if GATEWAY_NAME_LABEL in obj.labels:
        return None
    own = _label_waypoint(obj.labels, obj.namespace)
    if own != "":
        return own if isinstance(own, tuple) else None
    namespace = view.namespaces.get(("", obj.namespace))
    if namespace is None:
        return None
    inherited = _label_waypoint(namespace.labels, obj.namespace)
    return inherited if isinstance(inherited, tuple) else None


def port_protocol(port: ServicePort) -> PortProtocol:
    """How a waypoint treats a Service port: from ``appProtocol``, else the name's prefix (Istio's rules)."""
    if port.protocol.upper() not in ("TCP", ""):
        return "udp"
    declared = port.app_protocol_name or port.name.split("-", 1)[0].lower()
    if declared in _HTTP_PROTOCOLS:
        return "http"
    if declared in _TCP_PROTOCOLS:
        return "tcp"
    return "unknown"
