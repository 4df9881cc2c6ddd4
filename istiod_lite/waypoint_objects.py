"""What a waypoint Gateway gets (pure), as istiod's deployment controller makes it (waypoint-facts
1.3): a ServiceAccount, a Deployment and a Service named after the Gateway, labelled with it and
owned by it. The lab and Kubernetes share the objects; only how the pod reaches istiod differs
(:class:`PodMesh`: a lab token file and trust bundle, or a projected token and the
``istio-ca-root-cert`` ConfigMap on a cluster)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "GATEWAY_NAME_LABEL",
    "MANAGED_LABELS",
    "WAYPOINT_CLASS",
    "PodMesh",
    "gateway_labels",
    "waypoint_objects",
]

WAYPOINT_CLASS = "istio-waypoint"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
_CLASS_LABEL = "gateway.networking.k8s.io/gateway-class-name"
MANAGED_LABELS = {"gateway.istio.io/managed": "istio.io-mesh-controller"}
_DOWNWARD = {
    "POD_NAME": "metadata.name",
    "POD_NAMESPACE": "metadata.namespace",
    "INSTANCE_IP": "status.podIP",
    "SERVICE_ACCOUNT": "spec.serviceAccountName",
    "NODE_NAME": "spec.nodeName",
}


@dataclass(frozen=True, slots=True)
class PodMesh:
    """How a waypoint pod reaches istiod: its arguments' values and what the container needs
    beyond them (image, volumes, probes, resources, security context)."""

    xds_address: str
    root_cert: str
    token_file: str
    trust_domain: str
    cluster_id: str
    path_normalization: str = "BASE"
    """Istio's ``meshConfig.pathNormalization`` (the waypoint's ``--path-normalization``)."""
    container: Mapping[str, Any] = field(default_factory=dict)
    """Merged into the container (e.g. ``image``, ``volumeMounts``, ``readinessProbe``)."""
    pod: Mapping[str, Any] = field(default_factory=dict)
    """Merged into the pod spec (e.g. ``volumes``)."""


def gateway_labels(name: str) -> dict[str, str]:
    """The labels of everything a waypoint Gateway owns."""
    return {GATEWAY_NAME_LABEL: name, _CLASS_LABEL: WAYPOINT_CLASS}


def waypoint_objects(gateway: Mapping[str, Any], mesh: PodMesh) -> list[dict[str, Any]]:
    """The ServiceAccount, Deployment and Service of ``gateway`` (no owner reference or uid yet)."""
    meta = gateway["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    owned_meta = {"name": name, "namespace": namespace, "labels": {**gateway_labels(name), **MANAGED_LABELS}}
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": copy.deepcopy(owned_meta)}
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": copy.deepcopy(owned_meta),
        "spec": {
            "type": "ClusterIP",
            "selector": {GATEWAY_NAME_LABEL: name},
            "ports": [_service_port("status-port", 15021, "tcp"), _service_port("mesh", 15008, "hbone")],
        },
    }  # fmt: skip
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": copy.deepcopy(owned_meta),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {GATEWAY_NAME_LABEL: name}},
            "template": _pod_template(name, mesh),
        },
    }  # fmt: skip
    return [account, deployment, service]


def _service_port(name: str, port: int, app_protocol: str) -> dict[str, Any]:
    return {"name": name, "port": port, "targetPort": port, "protocol": "TCP", "appProtocol": app_protocol}


def _pod_template(name: str, mesh: PodMesh) -> dict[str, Any]:
    env: list[dict[str, Any]] = [
        {"name": k, "valueFrom": {"fieldRef": {"fieldPath": v}}} for k, v in _DOWNWARD.items()
    ]
    env.append({"name": "WAYPOINT_NAME", "value": name})
    container: dict[str, Any] = {
        "name": "istio-proxy",
        "command": ["waypoint"],
        "args": [
            "--xds-address", mesh.xds_address, "--root-cert", mesh.root_cert, "--token-file", mesh.token_file,
            "--trust-domain", mesh.trust_domain, "--cluster-id", mesh.cluster_id,
            *(("--path-normalization", mesh.path_normalization) if mesh.path_normalization != "BASE" else ()),
        ],
        "env": env,
        "ports": [
            {"name": "mesh", "containerPort": 15008, "protocol": "TCP"},
            {"name": "metrics", "containerPort": 15020, "protocol": "TCP"},
            {"name": "status-port", "containerPort": 15021, "protocol": "TCP"},
        ],
        **copy.deepcopy(dict(mesh.container)),
    }  # fmt: skip
    labels = {
        **gateway_labels(name),
        "sidecar.istio.io/inject": "false",
        "istio.io/dataplane-mode": "none",
        "service.istio.io/canonical-name": name,
        "service.istio.io/canonical-revision": "latest",
    }
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "15020",
        "prometheus.io/path": "/stats/prometheus",
    }
    spec: dict[str, Any] = {
        "serviceAccountName": name,
        "containers": [container],
        **copy.deepcopy(dict(mesh.pod)),
    }
    return {"metadata": {"labels": labels, "annotations": annotations}, "spec": spec}
