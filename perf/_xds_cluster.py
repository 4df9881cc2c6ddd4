"""Generated Kubernetes objects for the xDS benchmark: namespaces, pods, services, policies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["QUICK", "Scale", "cluster_objects", "pod"]


@dataclass(frozen=True, slots=True)
class Scale:
    """How big a run is."""

    pods: int = 10_000
    services: int = 1_000
    policies: int = 1_000
    subscribers: int = 100
    namespaces: int = 100
    nodes: int = 10


QUICK = Scale(pods=1_000, services=100, policies=100, subscribers=10, namespaces=10, nodes=4)


def pod(i: int, scale: Scale, *, generation: int = 0) -> dict[str, Any]:
    ns, app = f"ns-{i % scale.namespaces}", f"svc-{i % scale.services}"
    ip = f"10.{64 + i // 65536}.{i // 256 % 256}.{i % 256}"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"pod-{i}",
            "namespace": ns,
            "uid": f"uid-pod-{i}",
            "labels": {"app": app, "version": f"v{generation}"},
            "annotations": {"ambient.istio.io/redirection": "enabled"},
        },
        "spec": {
            "nodeName": f"node-{i % scale.nodes}",
            "serviceAccountName": app,
            "containers": [{"name": "c"}],
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def _service(k: int, scale: Scale) -> list[dict[str, Any]]:
    ns, name = f"ns-{k % scale.namespaces}", f"svc-{k}"
    members = [
        i for i in range(k, scale.pods, scale.services) if i % scale.namespaces == k % scale.namespaces
    ]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-svc-{k}"},
        "spec": {
            "clusterIP": f"10.96.{k // 256}.{k % 256}",
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
        },
    }
    endpoints = [
        {
            "addresses": [pod(i, scale)["status"]["podIP"]],
            "conditions": {"ready": True},
            "nodeName": f"node-{i % scale.nodes}",
            "targetRef": {"kind": "Pod", "namespace": ns, "name": f"pod-{i}"},
        }
        for i in members
    ]
    meta = {"name": f"{name}-x", "namespace": ns, "labels": {"kubernetes.io/service-name": name}}
    slice_: dict[str, Any] = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": meta}
    slice_.update(addressType="IPv4", endpoints=endpoints, ports=[{"name": "http", "port": 8080}])
    return [service, slice_]


def _policy(j: int, scale: Scale) -> dict[str, Any]:
    ns = f"ns-{j % scale.namespaces}"
    spec: dict[str, Any] = {
        "action": "ALLOW" if j % 5 else "DENY",
        "rules": [
            {
                "from": [{"source": {"principals": [f"cluster.local/ns/{ns}/sa/svc-{j % scale.services}"]}}],
                "to": [{"operation": {"ports": ["8080", "9090"]}}],
            }
        ],
    }
    if j % 2:
        spec["selector"] = {"matchLabels": {"app": f"svc-{j % scale.services}"}}
    meta = {"name": f"policy-{j}", "namespace": ns, "uid": f"uid-ap-{j}"}
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": meta,
        "spec": spec,
    }


def cluster_objects(scale: Scale) -> list[dict[str, Any]]:
    """Namespaces, pods, services with their EndpointSlices, and AuthorizationPolicies."""
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"ns-{n}"}}
        for n in range(scale.namespaces)
    ]
    objects.extend(pod(i, scale) for i in range(scale.pods))
    for k in range(scale.services):
        objects.extend(_service(k, scale))
    objects.extend(_policy(j, scale) for j in range(scale.policies))
    return objects
