"""The cluster view: typed informer caches and the immutable snapshot that translation reads.

Sources (the Kubernetes watch, the lab's state directory) write objects into ``Informers``
through a per-source sink; ``Informers.view()`` hands out a ``ClusterView``, a frozen snapshot
of every cache. Objects are ``KubeObject`` values: typed metadata plus the whole object body,
deep-frozen (mappings become read-only proxies, lists become tuples), so a view can be shared
by translation and push without copies or locks.

``Informers`` lives on the event loop thread: sources that read in threads hand their results
to the loop (``loop.call_soon_threadsafe``) before calling a sink. A change bumps ``revision``
and calls the ``on_change`` callbacks, which only mark work dirty; nothing is computed inline.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from istiod_lite.sources.objects import (
    AUTHORIZATION_POLICY,
    DESTINATION_RULE,
    ENDPOINT_SLICE,
    GATEWAY,
    HTTP_ROUTE,
    KINDS,
    LOCAL_RATE_LIMIT,
    NAMESPACE,
    PEER_AUTHENTICATION,
    POD,
    REPLICA_SET,
    REQUEST_AUTHENTICATION,
    SERVICE,
    SERVICE_ACCOUNT,
    TELEMETRY,
    VIRTUAL_SERVICE,
    Json,
    JsonMap,
    KubeObject,
    ObjectError,
    ObjectKey,
    OwnerReference,
    freeze,
    parse_object,
    thaw,
)
from mesh.errors import ConfigError

__all__ = [
    "AUTHORIZATION_POLICY",
    "DESTINATION_RULE",
    "ENDPOINT_SLICE",
    "GATEWAY",
    "HTTP_ROUTE",
    "KINDS",
    "NAMESPACE",
    "PEER_AUTHENTICATION",
    "POD",
    "REPLICA_SET",
    "SERVICE",
    "SERVICE_ACCOUNT",
    "VIRTUAL_SERVICE",
    "ClusterView",
    "Informers",
    "Json",
    "JsonMap",
    "KubeObject",
    "ObjectError",
    "ObjectKey",
    "OwnerReference",
    "freeze",
    "parse_object",
    "thaw",
    "view_from_objects",
]

_TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
_EMPTY_KEYED: Mapping[ObjectKey, KubeObject] = MappingProxyType({})


def _node_index_key(pod: KubeObject) -> tuple[str, str, str] | None:
    node = pod.spec.get("nodeName")
    if not isinstance(node, str) or not node or pod.status.get("phase") in _TERMINAL_PHASES:
        return None
    if pod.deletion_timestamp:
        return None
    sa = pod.spec.get("serviceAccountName") or "default"
    return (pod.namespace, str(sa), node)


@dataclass(frozen=True, slots=True)
class ClusterView:
    """An immutable snapshot of every informer cache, at one ``revision``."""

    revision: int
    objects: Mapping[str, Mapping[ObjectKey, KubeObject]]
    service_accounts_on_nodes: frozenset[tuple[str, str, str]] = frozenset()

    @classmethod
    def empty(cls) -> ClusterView:
        """A view with no objects."""
        return cls(revision=0, objects=MappingProxyType({}))

    def of_kind(self, kind: str) -> Mapping[ObjectKey, KubeObject]:
        """All objects of ``kind``, keyed by (namespace, name)."""
        return self.objects.get(kind, _EMPTY_KEYED)

    def get(self, kind: str, namespace: str, name: str) -> KubeObject | None:
        """One object, or None."""
        return self.of_kind(kind).get((namespace, name))

    @property
    def namespaces(self) -> Mapping[ObjectKey, KubeObject]:
        """Namespaces, keyed by ("", name)."""
        return self.of_kind(NAMESPACE)

    @property
    def pods(self) -> Mapping[ObjectKey, KubeObject]:
        """Pods."""
        return self.of_kind(POD)

    @property
    def services(self) -> Mapping[ObjectKey, KubeObject]:
        """Services."""
        return self.of_kind(SERVICE)

    @property
    def endpoint_slices(self) -> Mapping[ObjectKey, KubeObject]:
        """EndpointSlices (discovery.k8s.io/v1)."""
        return self.of_kind(ENDPOINT_SLICE)

    @property
    def service_accounts(self) -> Mapping[ObjectKey, KubeObject]:
        """ServiceAccounts."""
        return self.of_kind(SERVICE_ACCOUNT)

    @property
    def replica_sets(self) -> Mapping[ObjectKey, KubeObject]:
        """ReplicaSets (apps/v1)."""
        return self.of_kind(REPLICA_SET)

    @property
    def peer_authentications(self) -> Mapping[ObjectKey, KubeObject]:
        """security.istio.io PeerAuthentications."""
        return self.of_kind(PEER_AUTHENTICATION)

    @property
    def authorization_policies(self) -> Mapping[ObjectKey, KubeObject]:
        """security.istio.io AuthorizationPolicies."""
        return self.of_kind(AUTHORIZATION_POLICY)

    @property
    def request_authentications(self) -> Mapping[ObjectKey, KubeObject]:
        """security.istio.io RequestAuthentications."""
        return self.of_kind(REQUEST_AUTHENTICATION)

    @property
    def virtual_services(self) -> Mapping[ObjectKey, KubeObject]:
        """networking.istio.io VirtualServices (v1, v1beta1 and v1alpha3 share one schema)."""
        return self.of_kind(VIRTUAL_SERVICE)

    @property
    def destination_rules(self) -> Mapping[ObjectKey, KubeObject]:
        """networking.istio.io DestinationRules (v1, v1beta1 and v1alpha3 share one schema)."""
        return self.of_kind(DESTINATION_RULE)

    @property
    def gateways(self) -> Mapping[ObjectKey, KubeObject]:
        """Objects of kind Gateway: gateway.networking.k8s.io ones, and in the lab possibly Istio's."""
        return self.of_kind(GATEWAY)

    @property
    def http_routes(self) -> Mapping[ObjectKey, KubeObject]:
        """gateway.networking.k8s.io HTTPRoutes."""
        return self.of_kind(HTTP_ROUTE)

    @property
    def local_rate_limits(self) -> Mapping[ObjectKey, KubeObject]:
        """policy.mesh.dev LocalRateLimits."""
        return self.of_kind(LOCAL_RATE_LIMIT)

    @property
    def telemetries(self) -> Mapping[ObjectKey, KubeObject]:
        """telemetry.istio.io Telemetries."""
        return self.of_kind(TELEMETRY)

    def service_account_on_node(self, namespace: str, service_account: str, node: str) -> bool:
        """True when a non-terminated pod running as ``namespace/service_account`` is on ``node``.

        The CA uses it to accept a node agent's request to impersonate that identity.
        """
        return (namespace, service_account, node) in self.service_accounts_on_nodes


class _Sink:
    """The cache sink handed to one source (see ``istiod_lite.sources.CacheSink``)."""

    def __init__(self, informers: Informers, source: str) -> None:
        self._informers = informers
        self.source = source

    def upsert(self, obj: KubeObject) -> None:
        """Adds or replaces one object."""
        self._informers._upsert(self.source, obj)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        """Removes one object (a no-op when it is not cached)."""
        self._informers._delete(self.source, kind, (namespace, name))

    def replace(self, kind: str, objects: Iterable[KubeObject]) -> None:
        """Makes ``objects`` the full set of ``kind`` this source provides (a list or re-list)."""
        self._informers._replace(self.source, kind, objects)

    def mark_synced(self) -> None:
        """Says this source finished its initial list of every kind."""
        self._informers._mark_synced(self.source)


class Informers:
    """Typed informer caches fed by sources; hands out immutable ``ClusterView`` snapshots."""

    def __init__(self, *, kinds: Iterable[str] = KINDS) -> None:
        self._stores: dict[str, dict[ObjectKey, KubeObject]] = {k: {} for k in kinds}
        self._owned: dict[str, dict[str, set[ObjectKey]]] = {}
        self._pending: set[str] = set()
        self._synced = asyncio.Event()
        self._callbacks: list[Callable[[], None]] = []
        self._node_index: Counter[tuple[str, str, str]] = Counter()
        self._frozen: dict[str, Mapping[ObjectKey, KubeObject]] = {}
        self._dirty: set[str] = set(self._stores)
        self._revision = 0
        self._view: ClusterView | None = None

    @property
    def kinds(self) -> frozenset[str]:
        """The kinds these caches hold; objects of other kinds are ignored."""
        return frozenset(self._stores)

    @property
    def revision(self) -> int:
        """Grows by one with every change to any cache."""
        return self._revision

    def sink(self, source: str) -> _Sink:
        """Registers a source; ``synced`` stays false until it calls ``mark_synced``."""
        if source in self._owned:
            raise ConfigError(f"source {source!r} is already registered", hint="name each source once")
        self._owned[source] = {}
        self._pending.add(source)
        self._synced.clear()
        return _Sink(self, source)

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Calls ``callback()`` after every change; returns a function that unsubscribes.

        The callback must only mark work dirty: it runs inside the source's update.
        """
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback)

    @property
    def synced(self) -> bool:
        """True once every registered source finished its initial list."""
        return bool(self._owned) and not self._pending

    async def wait_synced(self) -> None:
        """Returns once ``synced`` is true."""
        await self._synced.wait()

    def service_account_on_node(self, namespace: str, service_account: str, node: str) -> bool:
        """Like ``ClusterView.service_account_on_node``, on the live caches."""
        return self._node_index[(namespace, service_account, node)] > 0

    def nodes_for_service_account(self, namespace: str, service_account: str) -> frozenset[str]:
        """The nodes with a live pod of ``namespace/service_account`` (for messages that help)."""
        return frozenset(
            node for ns, sa, node in self._node_index if (ns, sa) == (namespace, service_account)
        )

    def current(self, kind: str) -> Mapping[ObjectKey, KubeObject]:
        """The live cache of one kind, read-only (no snapshot is built: for a controller that reads
        one kind after every change); empty for a kind these caches do not hold."""
        return MappingProxyType(self._stores.get(kind, {}))

    def view(self) -> ClusterView:
        """An immutable snapshot of every cache (the same object while nothing changed)."""
        if self._view is not None and self._view.revision == self._revision:
            return self._view
        if self._view is None or POD in self._dirty:
            nodes = frozenset(self._node_index)
        else:
            nodes = self._view.service_accounts_on_nodes
        for kind in self._dirty:
            self._frozen[kind] = MappingProxyType(dict(self._stores[kind]))
        self._dirty.clear()
        self._view = ClusterView(
            revision=self._revision,
            objects=MappingProxyType(dict(self._frozen)),
            service_accounts_on_nodes=nodes,
        )
        return self._view

    # -- called through the sinks -------------------------------------------------------

    def _upsert(self, source: str, obj: KubeObject) -> None:
        store = self._stores.get(obj.kind)
        if store is None:
            return
        self._owned[source].setdefault(obj.kind, set()).add(obj.key)
        old = store.get(obj.key)
        if old is not None and old.body == obj.body:
            return
        self._set(obj.kind, obj.key, obj)
        self._changed(obj.kind)

    def _delete(self, source: str, kind: str, key: ObjectKey) -> None:
        if kind not in self._stores or key not in self._stores[kind]:
            return
        self._owned[source].get(kind, set()).discard(key)
        self._set(kind, key, None)
        self._changed(kind)

    def _replace(self, source: str, kind: str, objects: Iterable[KubeObject]) -> None:
        store = self._stores.get(kind)
        if store is None:
            return
        fresh = {o.key: o for o in objects if o.kind == kind}
        owned = self._owned[source].setdefault(kind, set())
        changed = False
        for key in owned - fresh.keys():
            if key in store:
                self._set(kind, key, None)
                changed = True
        for key, obj in fresh.items():
            old = store.get(key)
            if old is None or old.body != obj.body:
                self._set(kind, key, obj)
                changed = True
        self._owned[source][kind] = set(fresh)
        if changed:
            self._changed(kind)

    def _mark_synced(self, source: str) -> None:
        self._pending.discard(source)
        if not self._pending:
            self._synced.set()

    def _set(self, kind: str, key: ObjectKey, obj: KubeObject | None) -> None:
        store = self._stores[kind]
        if kind == POD:
            old = store.get(key)
            if old is not None and (k := _node_index_key(old)) is not None:
                self._node_index[k] -= 1
                if self._node_index[k] <= 0:
                    del self._node_index[k]
            if obj is not None and (k := _node_index_key(obj)) is not None:
                self._node_index[k] += 1
        if obj is None:
            del store[key]
        else:
            store[key] = obj

    def _changed(self, kind: str) -> None:
        self._revision += 1
        self._dirty.add(kind)
        for callback in list(self._callbacks):
            callback()


def view_from_objects(
    objects: Iterable[Mapping[str, object] | KubeObject], *, kinds: Iterable[str] = KINDS
) -> ClusterView:
    """Builds a view straight from objects (dicts as in YAML, or parsed ``KubeObject``s).

    For tools and tests; raises ``ObjectError`` on a malformed envelope.
    """
    informers = Informers(kinds=kinds)
    sink = informers.sink("objects")
    for raw in objects:
        sink.upsert(raw if isinstance(raw, KubeObject) else parse_object(raw))
    sink.mark_synced()
    return informers.view()
