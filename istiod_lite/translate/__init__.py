"""Translation: a ``ClusterView`` in, the Address and Authorization resources for ztunnel out.

Pure: no I/O, no clock, no globals; the same view always gives the same resources. Objects
that cannot be translated are reported as ``TranslationWarning``s and everything else still
applies. The rules per resource are in ``workloads``, ``services``, ``authz`` and ``peerauth``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from istiod_lite.translate._fields import FieldError
from istiod_lite.translate.authz import CompiledPolicy, SelectorIndex, compile_authorization_policy
from istiod_lite.translate.model import TranslatedResources, TranslateOptions, TranslationWarning, Warnings
from istiod_lite.translate.peerauth import PeerAuthIndex, PeerAuthn, parse_peer_authentication
from istiod_lite.translate.services import ServiceInfo, parse_service, ready_endpoints, service_address
from istiod_lite.translate.workloads import WorkloadContext, pod_workload
from istiod_lite.view import ClusterView, ObjectKey
from mesh.api.istio.workload import workload_pb2

__all__ = [
    "ADDRESS_TYPE_URL",
    "AUTHORIZATION_TYPE_URL",
    "TranslateOptions",
    "TranslatedResources",
    "TranslationWarning",
    "build_resources",
]

ADDRESS_TYPE_URL = "type.googleapis.com/istio.workload.Address"
AUTHORIZATION_TYPE_URL = "type.googleapis.com/istio.security.Authorization"


def build_resources(
    view: ClusterView,
    *,
    cluster_id: str = "Kubernetes",
    trust_domain: str = "cluster.local",
    root_namespace: str = "istio-system",
    cluster_domain: str = "cluster.local",
    network: str = "",
) -> TranslatedResources:
    """Translates every pod, Service, AuthorizationPolicy and PeerAuthentication of ``view``."""
    options = TranslateOptions(cluster_id, trust_domain, root_namespace, cluster_domain, network)
    warnings = Warnings()
    compiled = _authorization_policies(view, options, warnings)
    peer = PeerAuthIndex(_peer_authentications(view, warnings), root_namespace=root_namespace)
    authorizations = {p.key: p.authorization for p in compiled}
    authorizations.update(peer.policies())
    services = _services(view, options, warnings)
    addresses: dict[str, workload_pb2.Address] = {
        s.key: service_address(s, options) for s in services.values()
    }
    selectors = SelectorIndex(compiled, root_namespace=root_namespace)

    def policy_keys(namespace: str, labels: Mapping[str, str]) -> list[str]:
        return selectors.keys_for(namespace, labels) + peer.keys_for(namespace, labels)

    ctx = WorkloadContext(view, options, ready_endpoints(view, services, warnings), policy_keys)
    for pod in view.pods.values():
        try:
            workload = pod_workload(pod, ctx)
        except FieldError as exc:
            warnings.add(pod, exc.field, f"{exc.problem}; the pod is skipped")
            continue
        if workload is not None:
            addresses[workload.uid] = workload_pb2.Address(workload=workload)
    return TranslatedResources(
        addresses=MappingProxyType(dict(sorted(addresses.items()))),
        authorizations=MappingProxyType(dict(sorted(authorizations.items()))),
        warnings=warnings.frozen(),
    )


def _authorization_policies(
    view: ClusterView, options: TranslateOptions, warnings: Warnings
) -> list[CompiledPolicy]:
    out = []
    for obj in view.authorization_policies.values():
        policy = compile_authorization_policy(obj, root_namespace=options.root_namespace, warnings=warnings)
        if policy is not None:
            out.append(policy)
    return out


def _peer_authentications(view: ClusterView, warnings: Warnings) -> list[PeerAuthn]:
    out = []
    for obj in view.peer_authentications.values():
        try:
            out.append(parse_peer_authentication(obj))
        except FieldError as exc:
            warnings.add(obj, exc.field, f"{exc.problem}; the PeerAuthentication is skipped")
    return out


def _services(
    view: ClusterView, options: TranslateOptions, warnings: Warnings
) -> dict[ObjectKey, ServiceInfo]:
    out = {}
    for obj in view.services.values():
        try:
            info = parse_service(obj, cluster_domain=options.cluster_domain)
        except FieldError as exc:
            warnings.add(obj, exc.field, f"{exc.problem}; the Service is skipped")
            continue
        if info is not None:
            out[obj.key] = info
    return out
