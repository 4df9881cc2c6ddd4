"""Builders for the objects tests, benchmarks and demos give the lab (pure; plain dicts out)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["HTTPECHO", "SLEEPER", "deployment", "httpecho_deployment", "namespace", "service"]

HTTPECHO = ("python", "-m", "meshctl.apps.httpecho")
SLEEPER = ("sleep", "infinity")
_DOWNWARD_ENV = [
    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
    {"name": "VERSION", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['version']"}}},
]


def namespace(name: str, *, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A Namespace."""
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = dict(labels)
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def deployment(
    name: str,
    namespace: str,
    *,
    command: Sequence[str],
    labels: Mapping[str, str] | None = None,
    replicas: int = 1,
    ports: Sequence[int] = (),
    node: str | None = None,
    env: Sequence[Mapping[str, Any]] = (),
    service_account: str | None = None,
) -> dict[str, Any]:
    """A Deployment with one container running ``command``; ``labels`` default to ``app=<name>``."""
    labels = dict(labels or {"app": name})
    container: dict[str, Any] = {"name": "main", "command": list(command)}
    if ports:
        container["ports"] = [{"containerPort": p} for p in ports]
    if env:
        container["env"] = [dict(e) for e in env]
    pod_spec: dict[str, Any] = {"containers": [container]}
    if node:
        pod_spec["nodeName"] = node
    if service_account:
        pod_spec["serviceAccountName"] = service_account
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(labels)},
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        },
    }


def httpecho_deployment(
    name: str,
    namespace: str,
    *,
    labels: Mapping[str, str] | None = None,
    replicas: int = 1,
    port: int = 8080,
    node: str | None = None,
) -> dict[str, Any]:
    """A Deployment of the HTTP echo server, reporting pod, namespace, node and ``version`` label."""
    return deployment(
        name,
        namespace,
        command=[*HTTPECHO, "--port", str(port)],
        labels=labels,
        replicas=replicas,
        ports=[port],
        node=node,
        env=_DOWNWARD_ENV,
    )


def service(
    name: str, namespace: str, *, selector: Mapping[str, str], port: int = 80, target_port: int | str = 8080
) -> dict[str, Any]:
    """A ClusterIP Service with one TCP port named ``http``."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": dict(selector),
            "ports": [{"name": "http", "port": port, "targetPort": target_port, "protocol": "TCP"}],
        },
    }
