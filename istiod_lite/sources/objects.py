"""Kubernetes-shaped objects as immutable values: typed metadata plus the deep-frozen body.

Every source turns what it reads (an API list item, a watch event, a YAML file) into a
``KubeObject`` with ``parse_object``; malformed envelopes raise ``ObjectError``, which the
source reports and skips.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeAlias

from mesh.errors import ConfigError

__all__ = [
    "AUTHORIZATION_POLICY",
    "DESTINATION_RULE",
    "ENDPOINT_SLICE",
    "GATEWAY",
    "HTTP_ROUTE",
    "LOCAL_RATE_LIMIT",
    "REQUEST_AUTHENTICATION",
    "KINDS",
    "NAMESPACE",
    "PEER_AUTHENTICATION",
    "POD",
    "REPLICA_SET",
    "SERVICE",
    "SERVICE_ACCOUNT",
    "VIRTUAL_SERVICE",
    "Json",
    "JsonMap",
    "KubeObject",
    "ObjectError",
    "ObjectKey",
    "OwnerReference",
    "freeze",
    "parse_object",
    "thaw",
]

NAMESPACE = "Namespace"
POD = "Pod"
SERVICE = "Service"
ENDPOINT_SLICE = "EndpointSlice"
SERVICE_ACCOUNT = "ServiceAccount"
REPLICA_SET = "ReplicaSet"
PEER_AUTHENTICATION = "PeerAuthentication"
AUTHORIZATION_POLICY = "AuthorizationPolicy"
VIRTUAL_SERVICE = "VirtualService"
DESTINATION_RULE = "DestinationRule"
GATEWAY = "Gateway"
"""gateway.networking.k8s.io Gateways (Istio's networking.istio.io Gateway has the same kind name;
translation tells them apart by ``apiVersion``)."""
HTTP_ROUTE = "HTTPRoute"
TELEMETRY = "Telemetry"
LOCAL_RATE_LIMIT = "LocalRateLimit"
"""policy.mesh.dev LocalRateLimits (the mesh's own resource)."""
REQUEST_AUTHENTICATION = "RequestAuthentication"
KINDS: tuple[str, ...] = (
    NAMESPACE,
    POD,
    SERVICE,
    ENDPOINT_SLICE,
    SERVICE_ACCOUNT,
    REPLICA_SET,
    PEER_AUTHENTICATION,
    AUTHORIZATION_POLICY,
    VIRTUAL_SERVICE,
    DESTINATION_RULE,
    GATEWAY,
    HTTP_ROUTE,
    TELEMETRY,
    LOCAL_RATE_LIMIT,
    REQUEST_AUTHENTICATION,
)
_CLUSTER_SCOPED = frozenset({NAMESPACE, "Node"})

Json: TypeAlias = bool | int | float | str | tuple["Json", ...] | Mapping[str, "Json"] | None
JsonMap: TypeAlias = Mapping[str, Json]
ObjectKey: TypeAlias = tuple[str, str]
"""(namespace, name); the namespace is "" for cluster-scoped objects."""

_EMPTY: JsonMap = MappingProxyType({})


class ObjectError(ConfigError):
    """An object's envelope (kind, metadata) is malformed; the object cannot be cached."""


def freeze(value: object) -> Json:
    """Deep-freezes JSON-like data: dicts become read-only mappings, lists become tuples."""
    if value is None or isinstance(value, (str, int, float)):
        return value
    if isinstance(value, dict):
        return MappingProxyType({str(k): freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple([freeze(v) for v in value])
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): freeze(v) for k, v in value.items()})
    return str(value)  # e.g. a datetime that a YAML loader produced


def thaw(value: Json) -> object:
    """The inverse of ``freeze``: plain dicts and lists (for dumping or sending)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class OwnerReference:
    """One ``metadata.ownerReferences`` entry."""

    kind: str
    name: str
    uid: str = ""
    controller: bool = False


@dataclass(frozen=True, slots=True)
class KubeObject:
    """A Kubernetes-shaped object: typed metadata plus the whole body, deep-frozen."""

    kind: str
    namespace: str
    name: str
    uid: str
    resource_version: str
    creation_timestamp: str
    deletion_timestamp: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    owner_references: tuple[OwnerReference, ...]
    body: JsonMap
    key: ObjectKey = field(init=False, compare=False, repr=False)
    """(namespace, name), computed once: translation looks it up for every object on every build."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.namespace, self.name))

    @property
    def spec(self) -> JsonMap:
        """``spec``, or an empty mapping."""
        return _mapping(self.body.get("spec"))

    @property
    def status(self) -> JsonMap:
        """``status``, or an empty mapping."""
        return _mapping(self.body.get("status"))

    def controller(self) -> OwnerReference | None:
        """The owner reference marked ``controller: true``, if any."""
        return next((o for o in self.owner_references if o.controller), None)


def _mapping(value: Json) -> JsonMap:
    if type(value) is MappingProxyType or isinstance(value, Mapping):
        return value
    return _EMPTY


def _str_map(meta: JsonMap, field: str, where: str) -> Mapping[str, str]:
    value = meta.get(field)
    if value is None:
        return _EMPTY  # type: ignore[return-value]
    if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
        raise ObjectError(f"{where}: metadata.{field} must map strings to strings")
    return value  # type: ignore[return-value]


def _owners(meta: JsonMap, where: str) -> tuple[OwnerReference, ...]:
    refs = meta.get("ownerReferences") or ()
    if not isinstance(refs, tuple):
        raise ObjectError(f"{where}: metadata.ownerReferences must be a list")
    out = []
    for ref in refs:
        if not isinstance(ref, Mapping) or not isinstance(ref.get("kind"), str):
            raise ObjectError(f"{where}: every metadata.ownerReferences entry needs kind and name")
        name = ref.get("name")
        if not isinstance(name, str):
            raise ObjectError(f"{where}: every metadata.ownerReferences entry needs kind and name")
        uid = str(ref.get("uid") or "")
        out.append(OwnerReference(str(ref["kind"]), name, uid=uid, controller=bool(ref.get("controller"))))
    return tuple(out)


def parse_object(raw: Mapping[str, object], *, kind: str | None = None, namespace: str = "") -> KubeObject:
    """Validates an object's envelope and freezes it.

    ``kind`` fills in a missing ``kind`` (list items from the API server carry none);
    ``namespace`` fills in a missing ``metadata.namespace``. Raises ``ObjectError``.
    """
    body = freeze(raw)
    if not isinstance(body, Mapping):
        raise ObjectError("an object must be a mapping with kind and metadata")
    obj_kind = body.get("kind") or kind
    meta = body.get("metadata")
    if not isinstance(obj_kind, str) or not obj_kind:
        raise ObjectError("the object has no kind; set 'kind'")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str) or not meta.get("name"):
        raise ObjectError(f"a {obj_kind} has no metadata.name; set it")
    name = str(meta["name"])
    ns = meta.get("namespace") or namespace
    if not isinstance(ns, str):
        raise ObjectError(f"{obj_kind} {name}: metadata.namespace must be a string")
    if obj_kind in _CLUSTER_SCOPED:
        ns = ""
    where = f"{obj_kind} {ns}/{name}"
    if "kind" not in body:
        body = MappingProxyType({**body, "kind": obj_kind})
    return KubeObject(
        kind=obj_kind,
        namespace=ns,
        name=name,
        uid=str(meta.get("uid") or ""),
        resource_version=str(meta.get("resourceVersion") or ""),
        creation_timestamp=str(meta.get("creationTimestamp") or ""),
        deletion_timestamp=str(meta.get("deletionTimestamp") or ""),
        labels=_str_map(meta, "labels", where),
        annotations=_str_map(meta, "annotations", where),
        owner_references=_owners(meta, where),
        body=body,
    )
