"""``Translator``: translation of a stream of views that does not redo what did not change.

``Informers`` keep an unchanged object as the same ``KubeObject`` from one view to the next, so
each per-object result (a compiled policy, a parsed Service or EndpointSlice, a pod's workload)
is cached by object identity, together with the warnings it produced. A pod's workload is
reused only when its other inputs -- the Services it is a ready endpoint of, the policy keys
that select it, its owner -- are equal too. The output always equals ``build_resources(view)``;
caches keep only the objects of the last view. Not thread-safe: one caller at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from istiod_lite.translate._fields import FieldError
from istiod_lite.translate.authz import CompiledPolicy, SelectorIndex, compile_authorization_policy
from istiod_lite.translate.model import TranslatedResources, TranslateOptions, TranslationWarning, Warnings
from istiod_lite.translate.peerauth import PeerAuthIndex, PeerAuthn, parse_peer_authentication
from istiod_lite.translate.services import ServiceInfo, parse_service, service_address, slice_endpoints
from istiod_lite.translate.services import ready_endpoints as _ready_endpoints
from istiod_lite.translate.waypoints import WaypointIndex
from istiod_lite.translate.workloads import WorkloadContext, pod_workload, workload_name_and_type
from istiod_lite.view import POD, ClusterView, KubeObject, ObjectKey
from mesh.api.istio.workload import workload_pb2

__all__ = ["Translator"]

_T = TypeVar("_T")


class _Memo(Generic[_T]):
    """Per-object results of one kind, valid while the object (and ``inputs``) stay the same."""

    def __init__(self) -> None:
        self._last: dict[ObjectKey, tuple[KubeObject, object, _T | FieldError, list[TranslationWarning]]] = {}
        self._next: dict[ObjectKey, tuple[KubeObject, object, _T | FieldError, list[TranslationWarning]]] = {}

    def get(
        self, obj: KubeObject, compute: Callable[[Warnings], _T], warnings: Warnings, inputs: object = None
    ) -> _T:
        """The cached result for ``obj`` or a fresh one; a cached ``FieldError`` is raised again."""
        hit = self._last.get(obj.key)
        if hit is None or hit[0] is not obj or hit[1] != inputs:
            local = Warnings()
            try:
                result: _T | FieldError = compute(local)
            except FieldError as exc:
                result = exc
            hit = (obj, inputs, result, local.items)
        self._next[obj.key] = hit
        warnings.items.extend(hit[3])
        if isinstance(hit[2], FieldError):
            raise hit[2]
        return hit[2]

    def rotate(self) -> None:
        """Forgets the objects the last build did not ask about."""
        self._last, self._next = self._next, {}

    def carry(self, drop: Iterable[ObjectKey]) -> None:
        """Starts a partial build: everything is kept but the ``drop`` keys (removed objects)."""
        self._next = dict(self._last)
        for key in drop:
            self._next.pop(key, None)


def _policy(obj: KubeObject, root: str, warnings: Warnings) -> CompiledPolicy | None:
    return compile_authorization_policy(obj, root_namespace=root, warnings=warnings)


def _peer(obj: KubeObject, _: Warnings) -> PeerAuthn:
    return parse_peer_authentication(obj)


def _service(obj: KubeObject, domain: str, _: Warnings) -> ServiceInfo | None:
    return parse_service(obj, cluster_domain=domain)


def _address(
    info: ServiceInfo, options: TranslateOptions, waypoint: workload_pb2.GatewayAddress | None, _: Warnings
) -> workload_pb2.Address:
    return service_address(info, options, waypoint=waypoint)


def _slice(es: KubeObject, _: Warnings) -> list[tuple[ObjectKey, str]]:
    return slice_endpoints(es)


def _pod(
    pod: KubeObject, ctx: WorkloadContext, waypoint: workload_pb2.GatewayAddress | None, _: Warnings
) -> workload_pb2.Address | None:
    workload = pod_workload(pod, ctx, waypoint=waypoint)
    return None if workload is None else workload_pb2.Address(workload=workload)


def _keys(
    pod: KubeObject, policy_keys: Callable[[str, Mapping[str, str]], list[str]], _: Warnings
) -> tuple[str, ...]:
    return tuple(policy_keys(pod.namespace, pod.labels))


def _same(last: tuple[object, ...] | None, current: tuple[object, ...]) -> bool:
    """True when every policy input is the very object of the last build (nothing changed)."""
    return (
        last is not None
        and len(last) == len(current)
        and all(a is b for a, b in zip(last, current, strict=True))
    )


@dataclass(slots=True)
class _LastBuild:
    """What a build that changed only pods can start from."""

    kinds: dict[str, Mapping[ObjectKey, KubeObject]]
    """Every kind but Pod, by mapping identity (the informers keep an unchanged kind's mapping)."""
    pods: Mapping[ObjectKey, KubeObject]
    ctx: WorkloadContext
    authorizations: dict[str, Any]
    service_addresses: dict[str, workload_pb2.Address]
    warnings: list[TranslationWarning]
    """Everything's warnings but the pods'."""
    pod_results: dict[ObjectKey, tuple[workload_pb2.Address | None, list[TranslationWarning]]]


class Translator:
    """Builds ``TranslatedResources`` from successive views, reusing unchanged results.

    When only pods changed since the last build (every other kind's mapping is the same object),
    only the changed pods are translated; the rest of the last result is reused as it is."""

    def __init__(self, options: TranslateOptions | None = None) -> None:
        self.options = options or TranslateOptions()
        self._policies: _Memo[CompiledPolicy | None] = _Memo()
        self._peer: _Memo[PeerAuthn] = _Memo()
        self._services: _Memo[ServiceInfo | None] = _Memo()
        self._service_addresses: _Memo[workload_pb2.Address] = _Memo()
        self._slices: _Memo[list[tuple[ObjectKey, str]]] = _Memo()
        self._pods: _Memo[workload_pb2.Address | None] = _Memo()
        self._pod_keys: _Memo[tuple[str, ...]] = _Memo()
        self._policy_inputs: tuple[object, ...] | None = None
        self._policy_generation = 0
        self._last: _LastBuild | None = None
        self._memos: tuple[_Memo[Any], ...] = (
            self._policies,
            self._peer,
            self._services,
            self._service_addresses,
            self._slices,
            self._pods,
            self._pod_keys,
        )

    def build(self, view: ClusterView) -> TranslatedResources:
        """Translates every pod, Service, AuthorizationPolicy and PeerAuthentication of ``view``."""
        kinds = {kind: objects for kind, objects in view.objects.items() if kind != POD}
        last = self._last
        if (
            last is not None
            and kinds.keys() == last.kinds.keys()
            and all(objects is last.kinds[kind] for kind, objects in kinds.items())
        ):
            return self._pods_changed(view, last)
        warnings = Warnings()
        compiled = self._compile_policies(view, warnings)
        peers = self._peer_authentications(view, warnings)
        peer = PeerAuthIndex(peers, root_namespace=self.options.root_namespace)
        authorizations = {p.key: p.authorization for p in compiled}
        authorizations.update(peer.policies())
        services = self._parse_services(view, warnings)
        selectors = SelectorIndex(compiled, root_namespace=self.options.root_namespace)

        def policy_keys(namespace: str, labels: Mapping[str, str]) -> list[str]:
            return selectors.keys_for(namespace, labels) + peer.keys_for(namespace, labels)

        def parse_slice(es: KubeObject) -> list[tuple[ObjectKey, str]]:
            return self._slices.get(es, partial(_slice, es), warnings)

        endpoints = _ready_endpoints(view, services, warnings, parse=parse_slice)
        ready = {(s.namespace, s.name) for entries in endpoints.values() for s, _ in entries}
        waypoints = WaypointIndex(view, self.options, ready)
        service_addresses = self._service_addresses_of(view, services, waypoints, warnings)
        ctx = WorkloadContext(view, self.options, endpoints, policy_keys, waypoints)
        if not _same(self._policy_inputs, (*compiled, *peers)):
            self._policy_inputs = (*compiled, *peers)
            self._policy_generation += 1
        results = {pod.key: self._translate_pod(pod, ctx) for pod in view.pods.values()}
        for memo in self._memos:
            memo.rotate()
        self._last = _LastBuild(
            kinds, view.pods, ctx, authorizations, service_addresses, list(warnings.items), results
        )
        return self._result(self._last)

    def _pods_changed(self, view: ClusterView, last: _LastBuild) -> TranslatedResources:
        """Only pods changed: translate those, reuse everything else of the last build."""
        old, new = last.pods, view.pods
        removed = old.keys() - new.keys()
        changed = [pod for key, pod in new.items() if old.get(key) is not pod]
        ctx = WorkloadContext(
            view, self.options, last.ctx.endpoints, last.ctx.policy_keys, last.ctx.waypoints
        )
        for memo in (self._pods, self._pod_keys):
            memo.carry(removed)
        for key in removed:
            del last.pod_results[key]
        for pod in changed:
            last.pod_results[pod.key] = self._translate_pod(pod, ctx)
        for memo in (self._pods, self._pod_keys):
            memo.rotate()
        last.pods, last.ctx = new, ctx
        return self._result(last)

    def _translate_pod(
        self, pod: KubeObject, ctx: WorkloadContext
    ) -> tuple[workload_pb2.Address | None, list[TranslationWarning]]:
        local = Warnings()
        keys = self._pod_keys.get(pod, partial(_keys, pod, ctx.policy_keys), local, self._policy_generation)
        waypoint = ctx.waypoints.for_pod(pod, local) if ctx.waypoints is not None else None
        inputs = (
            tuple(ctx.endpoints.get(pod.key, ())),
            keys,
            workload_name_and_type(pod, ctx.view),
            waypoint,
        )
        try:
            address = self._pods.get(pod, partial(_pod, pod, ctx, waypoint), local, inputs)
        except FieldError as exc:
            local.add(pod, exc.field, f"{exc.problem}; the pod is skipped")
            address = None
        return address, local.items

    @staticmethod
    def _result(last: _LastBuild) -> TranslatedResources:
        addresses = dict(last.service_addresses)
        warnings = Warnings(list(last.warnings))
        for address, pod_warnings in last.pod_results.values():
            if address is not None:
                addresses[address.workload.uid] = address
            warnings.items.extend(pod_warnings)
        return TranslatedResources(
            addresses=MappingProxyType(dict(sorted(addresses.items()))),
            authorizations=MappingProxyType(dict(sorted(last.authorizations.items()))),
            warnings=warnings.frozen(),
        )

    def _compile_policies(self, view: ClusterView, warnings: Warnings) -> list[CompiledPolicy]:
        root = self.options.root_namespace
        out = []
        for obj in view.authorization_policies.values():
            policy = self._policies.get(obj, partial(_policy, obj, root), warnings)
            if policy is not None:
                out.append(policy)
        return out

    def _peer_authentications(self, view: ClusterView, warnings: Warnings) -> list[PeerAuthn]:
        out = []
        for obj in view.peer_authentications.values():
            try:
                out.append(self._peer.get(obj, partial(_peer, obj), warnings))
            except FieldError as exc:
                warnings.add(obj, exc.field, f"{exc.problem}; the PeerAuthentication is skipped")
        return out

    def _parse_services(self, view: ClusterView, warnings: Warnings) -> dict[ObjectKey, ServiceInfo]:
        domain = self.options.cluster_domain
        infos: dict[ObjectKey, ServiceInfo] = {}
        for obj in view.services.values():
            try:
                info = self._services.get(obj, partial(_service, obj, domain), warnings)
            except FieldError as exc:
                warnings.add(obj, exc.field, f"{exc.problem}; the Service is skipped")
                continue
            if info is not None:
                infos[obj.key] = info
        return infos

    def _service_addresses_of(
        self,
        view: ClusterView,
        infos: Mapping[ObjectKey, ServiceInfo],
        waypoints: WaypointIndex,
        warnings: Warnings,
    ) -> dict[str, workload_pb2.Address]:
        addresses: dict[str, workload_pb2.Address] = {}
        for key, info in infos.items():
            obj = view.services[key]
            waypoint = waypoints.for_service(obj, warnings)
            addresses[info.key] = self._service_addresses.get(
                obj, partial(_address, info, self.options, waypoint), warnings, waypoint
            )
        return addresses
