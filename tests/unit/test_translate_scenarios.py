"""Whole-cluster translation scenarios, checked by what they mean to ztunnel.

Each scenario is a list of Kubernetes objects (as YAML would give them) and a check on the
translated resources; the checks decide connections with ``mesh.policy`` (ztunnel's RBAC
semantics) after converting the resources with ``mesh.convert``, as an agent would. The same
``SCENARIOS`` run through the Kubernetes source in tests/component/test_kube_source.py.
This module also holds the object builders the other translation tests use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any

import pytest

from istiod_lite.translate import TranslatedResources, build_resources
from istiod_lite.view import view_from_objects
from mesh.api.istio.workload import workload_pb2
from mesh.convert import address_from_proto, authorization_from_proto
from mesh.model import Workload
from mesh.policy import ConnectionAttributes, applicable_policies, authorize

Obj = dict[str, Any]


def namespace(name: str, labels: Mapping[str, str] | None = None) -> Obj:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": dict(labels or {})}}


def pod(
    name: str,
    ns: str = "demo",
    *,
    ip: str = "10.244.1.5",
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    node: str = "node1",
    sa: str | None = "web",
    phase: str = "Running",
    ready: bool | None = True,
    owner: tuple[str, str] | None = None,
    ports: Mapping[str, int] | None = None,
    enrolled: bool = True,
    uid: str | None = None,
) -> Obj:
    notes = dict(annotations or {})
    if enrolled:
        notes.setdefault("ambient.istio.io/redirection", "enabled")
    meta: Obj = {"name": name, "namespace": ns, "uid": uid or f"uid-{name}", "labels": dict(labels or {})}
    meta["annotations"] = notes
    if owner:
        meta["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1], "controller": True}
        ]
    container: Obj = {
        "name": "app",
        "ports": [{"name": n, "containerPort": p} for n, p in (ports or {}).items()],
    }
    spec: Obj = {"nodeName": node, "containers": [container]}
    if sa is not None:
        spec["serviceAccountName"] = sa
    status: Obj = {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}] if ip else []}
    if ready is not None:
        status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}


def replica_set(name: str, ns: str = "demo", *, deployment: str | None = None) -> Obj:
    meta: Obj = {"name": name, "namespace": ns}
    if deployment:
        meta["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment, "controller": True}
        ]
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": meta, "spec": {}}


def service(name: str, ns: str = "demo", *, ip: str = "10.96.0.10", ports: list[Obj] | None = None) -> Obj:
    spec: Obj = {"clusterIP": ip, "ports": ports or [{"name": "http", "port": 80, "targetPort": 8080}]}
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": spec}


def endpoint_slice(svc: str, ns: str = "demo", *, endpoints: list[tuple[str, str, bool | None]]) -> Obj:
    """``endpoints`` are (pod name, pod IP, ready)."""
    items = []
    for pod_name, ip, ready in endpoints:
        item: Obj = {"addresses": [ip], "targetRef": {"kind": "Pod", "namespace": ns, "name": pod_name}}
        item["conditions"] = {} if ready is None else {"ready": ready}
        items.append(item)
    meta = {"name": f"{svc}-abcde", "namespace": ns, "labels": {"kubernetes.io/service-name": svc}}
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": meta,
        "addressType": "IPv4",
        "endpoints": items,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


def authz(name: str, ns: str = "demo", **spec: Any) -> Obj:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def peer_auth(
    name: str,
    ns: str = "demo",
    *,
    mode: str | None = None,
    selector: Mapping[str, str] | None = None,
    ports: Mapping[int, str] | None = None,
    created: str = "2024-01-01T00:00:00Z",
) -> Obj:
    spec: Obj = {}
    if mode:
        spec["mtls"] = {"mode": mode}
    if selector is not None:
        spec["selector"] = {"matchLabels": dict(selector)}
    if ports:
        spec["portLevelMtls"] = {str(p): {"mode": m} for p, m in ports.items()}
    meta = {"name": name, "namespace": ns, "creationTimestamp": created}
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": meta,
        "spec": spec,
    }


def translate(objects: list[Obj], **options: Any) -> TranslatedResources:
    return build_resources(view_from_objects(objects), **options)


def workload(
    res: TranslatedResources, name: str, ns: str = "demo", cluster: str = "Kubernetes"
) -> workload_pb2.Workload:
    return res.addresses[f"{cluster}//Pod/{ns}/{name}"].workload


def allowed(
    res: TranslatedResources,
    pod_name: str,
    *,
    port: int = 8080,
    peer: str | None = "cluster.local/ns/demo/sa/client",
    source_ip: str = "10.244.9.9",
) -> bool:
    """Would ztunnel let this connection through to ``pod_name``? ``peer=None`` is plaintext."""
    key = f"Kubernetes//Pod/demo/{pod_name}"
    target = address_from_proto(key, res.addresses[key])
    assert isinstance(target, Workload)
    policies = {k: authorization_from_proto(k, p) for k, p in res.authorizations.items()}
    td, ns, sa = (peer.split("/")[0], peer.split("/")[2], peer.split("/")[4]) if peer else ("", "", "")
    conn = ConnectionAttributes(
        source_ip=ip_address(source_ip),
        destination_ip=target.addresses[0],
        destination_port=port,
        source_trust_domain=td,
        source_namespace=ns,
        source_service_account=sa,
    )
    return authorize(applicable_policies(target, policies), conn).allowed


@dataclass(frozen=True, slots=True)
class Scenario:
    id: str
    objects: list[Obj]
    check: Callable[[TranslatedResources], None]


WEB = pod(
    "web-7d4-x1",
    labels={"app": "web", "pod-template-hash": "7d4"},
    owner=("ReplicaSet", "web-7d4"),
    ports={"http": 8080},
)


def _deployment_pod(res: TranslatedResources) -> None:
    w = workload(res, "web-7d4-x1")
    assert (w.workload_name, w.workload_type, w.canonical_name, w.canonical_revision) == (
        "web",
        workload_pb2.DEPLOYMENT,
        "web",
        "latest",
    )
    assert w.tunnel_protocol == workload_pb2.HBONE and w.status == workload_pb2.HEALTHY
    assert w.addresses == [bytes([10, 244, 1, 5])] and w.service_account == "web" and w.node == "node1"
    ports = w.services["demo/web.demo.svc.cluster.local"].ports
    assert [(p.service_port, p.target_port) for p in ports] == [(80, 8080)]
    svc = res.addresses["demo/web.demo.svc.cluster.local"].service
    assert (svc.hostname, svc.addresses[0].address, svc.ports[0].target_port) == (
        "web.demo.svc.cluster.local",
        bytes([10, 96, 0, 10]),
        0,
    )
    assert res.warnings == ()


def _not_ready(res: TranslatedResources) -> None:
    w = workload(res, "web-7d4-x1")
    assert w.status == workload_pb2.UNHEALTHY and dict(w.services) == {}


def _allow_l7_only(res: TranslatedResources) -> None:
    assert list(res.authorizations["demo/get-only"].rules) == []
    assert "demo/get-only" in workload(res, "web-7d4-x1").authorization_policies
    assert not allowed(res, "web-7d4-x1") and not allowed(res, "web-7d4-x1", peer=None)
    assert any(w.field == "spec.rules[0]" and "ALLOW rule is omitted" in w.message for w in res.warnings)


def _deny_l7_only(res: TranslatedResources) -> None:
    assert not allowed(res, "web-7d4-x1") and not allowed(res, "web-7d4-x1", port=9090, peer=None)
    assert any("denies every connection" in w.message for w in res.warnings)


def _deny_keeps_l4(res: TranslatedResources) -> None:
    assert not allowed(res, "web-7d4-x1", peer="cluster.local/ns/demo/sa/intruder")
    assert allowed(res, "web-7d4-x1", peer="cluster.local/ns/demo/sa/client")


def _strict_with_permissive_port(res: TranslatedResources) -> None:
    assert workload(res, "web-7d4-x1").authorization_policies == [
        "demo/converted_peer_authentication_web-metrics"
    ]
    assert allowed(res, "web-7d4-x1", port=9090, peer=None)
    assert not allowed(res, "web-7d4-x1", port=8080, peer=None)
    assert allowed(res, "web-7d4-x1", port=8080)


def _invalid_skipped(res: TranslatedResources) -> None:
    fields = {(w.kind, w.name, w.field) for w in res.warnings}
    assert ("AuthorizationPolicy", "bad-cidr", "spec.rules[0].from[0].source.ipBlocks[0]") in fields
    assert ("Service", "broken", "spec.ports[0].port") in fields
    assert "demo/broken.demo.svc.cluster.local" not in res.addresses
    assert not allowed(res, "web-7d4-x1")  # the invalid ALLOW fails closed
    assert "demo/web.demo.svc.cluster.local" in res.addresses  # everything else still applies


NAMED = [{"name": "http", "port": 80, "targetPort": "http"}]
BASE = [namespace("demo"), replica_set("web-7d4", deployment="web"), WEB, service("web", ports=NAMED)]
READY = endpoint_slice("web", endpoints=[("web-7d4-x1", "10.244.1.5", True)])
SCENARIOS = [
    Scenario("deployment-pod-with-service", [*BASE, READY], _deployment_pod),
    Scenario(
        "not-ready-pod-not-in-service",
        [
            namespace("demo"),
            replica_set("web-7d4", deployment="web"),
            service("web"),
            pod("web-7d4-x1", labels={"app": "web"}, owner=("ReplicaSet", "web-7d4"), ready=False),
            endpoint_slice("web", endpoints=[("web-7d4-x1", "10.244.1.5", False)]),
        ],
        _not_ready,
    ),
    Scenario(
        "allow-with-only-l7-rules-denies-all",
        [
            *BASE,
            READY,
            authz(
                "get-only",
                selector={"matchLabels": {"app": "web"}},
                rules=[{"to": [{"operation": {"methods": ["GET"]}}]}],
            ),
        ],
        _allow_l7_only,
    ),
    Scenario(
        "deny-with-only-l7-rules-denies-all",
        [
            *BASE,
            READY,
            authz("no-admin", action="DENY", rules=[{"to": [{"operation": {"paths": ["/admin"]}}]}]),
        ],
        _deny_l7_only,
    ),
    Scenario(
        "deny-keeps-its-l4-part",
        [
            *BASE,
            READY,
            authz(
                "no-intruder-deletes",
                action="DENY",
                rules=[
                    {
                        "from": [{"source": {"principals": ["cluster.local/ns/demo/sa/intruder"]}}],
                        "to": [{"operation": {"methods": ["DELETE"]}}],
                    }
                ],
            ),
        ],
        _deny_keeps_l4,
    ),
    Scenario(
        "namespace-strict-workload-permissive-port",
        [
            *BASE,
            READY,
            peer_auth("default", mode="STRICT"),
            peer_auth("web-metrics", selector={"app": "web"}, ports={9090: "PERMISSIVE"}),
        ],
        _strict_with_permissive_port,
    ),
    Scenario(
        "invalid-objects-skipped-others-apply",
        [
            *BASE,
            READY,
            service("broken", ip="10.96.0.11", ports=[{"port": 70000}]),
            authz(
                "bad-cidr",
                selector={"matchLabels": {"app": "web"}},
                rules=[{"from": [{"source": {"ipBlocks": ["10.0.0.0/33"]}}]}],
            ),
        ],
        _invalid_skipped,
    ),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_scenario(scenario: Scenario) -> None:
    scenario.check(translate(scenario.objects))


def test_translation_is_deterministic() -> None:
    objects = SCENARIOS[-1].objects
    first, second = translate(objects), translate(list(reversed(objects)))
    assert list(first.addresses) == list(second.addresses)
    assert all(first.addresses[k] == second.addresses[k] for k in first.addresses)
    assert first.authorizations == second.authorizations and first.warnings == second.warnings
