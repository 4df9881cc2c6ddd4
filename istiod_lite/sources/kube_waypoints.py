"""On Kubernetes, istiod_lite is the waypoints' deployment controller (as istiod is): each Gateway of
class ``istio-waypoint`` gets its ServiceAccount, Deployment and Service (``istiod_lite.
waypoint_objects``) through the API, owned by the Gateway (``ownerReferences``: Kubernetes removes
them with it), and the Gateway's status says Accepted, and Programmed with its addresses once a
waypoint pod is ready. Objects changed by hand are put back at the next sync. The waypoint pod
authenticates to istiod with a projected service-account token (audience ``istio-ca``) and trusts
the mesh root from the ``istio-ca-root-cert`` ConfigMap, which istiod_lite keeps in every namespace
(``istiod_lite.root_cert``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from istiod_lite.root_cert import ROOT_CONFIGMAP
from istiod_lite.sources.objects import KubeObject, thaw
from istiod_lite.status import always
from istiod_lite.waypoint_objects import WAYPOINT_CLASS, PodMesh, waypoint_objects
from mesh.rt.kube.rbac import ApiCall
from mesh.rt.kube.rest import call_api

__all__ = ["KubeWaypointDeployer", "KubeWaypointSettings", "kubernetes_pod_mesh"]

_GATEWAY_API = "gateway.networking.k8s.io/"
_TOKEN_DIR, _ROOT_DIR = "/var/run/secrets/tokens", "/var/run/secrets/istio"
_COLLECTIONS = {
    "ServiceAccount": ("api/v1", "serviceaccounts"),
    "Service": ("api/v1", "services"),
    "Deployment": ("apis/apps/v1", "deployments"),
}
API_CALLS = tuple(
    ApiCall("apps" if path.startswith("apis/apps") else "", plural, ("get", "create", "patch"))
    for path, plural in _COLLECTIONS.values()
)
"""What the waypoint deployment controller calls."""


@dataclass(frozen=True, slots=True)
class KubeWaypointSettings:
    """What waypoint pods on this cluster run and reach."""

    image: str
    xds_address: str = "istiod.istio-system.svc:15012"
    trust_domain: str = "cluster.local"
    cluster_id: str = "Kubernetes"
    cluster_domain: str = "cluster.local"
    path_normalization: str = "BASE"
    """Istio's ``meshConfig.pathNormalization`` for every waypoint."""


def kubernetes_pod_mesh(settings: KubeWaypointSettings) -> PodMesh:
    """The container and pod settings of a waypoint on Kubernetes (non-root, read-only root file
    system, no capabilities; a readiness probe on 15021; the token and the root as volumes)."""
    container = {
        "image": settings.image,
        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}, "periodSeconds": 2},
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": 1337, "runAsGroup": 1337, "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "istio-token", "mountPath": _TOKEN_DIR, "readOnly": True},
            {"name": "istiod-ca-cert", "mountPath": _ROOT_DIR, "readOnly": True},
        ],
    }  # fmt: skip
    pod = {
        "terminationGracePeriodSeconds": 30,
        "volumes": [
            {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
                "audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}}]}},
            {"name": "istiod-ca-cert", "configMap": {"name": ROOT_CONFIGMAP}},
        ],
    }  # fmt: skip
    return PodMesh(
        xds_address=settings.xds_address,
        root_cert=f"{_ROOT_DIR}/root-cert.pem",
        token_file=f"{_TOKEN_DIR}/istio-token",
        trust_domain=settings.trust_domain,
        cluster_id=settings.cluster_id,
        path_normalization=settings.path_normalization,
        container=container,
        pod=pod,
    )


def _is_waypoint(gateway: KubeObject) -> bool:
    return (
        str(gateway.body.get("apiVersion", "")).startswith(_GATEWAY_API)
        and gateway.spec.get("gatewayClassName") == WAYPOINT_CLASS
        and not gateway.deletion_timestamp
    )


class KubeWaypointDeployer:
    """Creates and repairs each waypoint's objects through the API; computes the Gateways' status.
    Blocking (the kubernetes client): call :meth:`sync` from a worker thread. ``may_write`` is
    asked before each create or patch (a replica that lost leadership stops at once)."""

    def __init__(
        self,
        api: Any,
        settings: KubeWaypointSettings,
        *,
        may_write: Callable[[], bool] = always,
        logger: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        self._api = api
        self._may_write = may_write
        self._settings = settings
        self._mesh = kubernetes_pod_mesh(settings)
        self._log = logger or structlog.get_logger().bind(component="istiod_lite.waypoints")

    def sync(self, gateways: Iterable[KubeObject]) -> dict[tuple[str, str, str], dict[str, Any]]:
        """Makes every waypoint's objects as they should be; returns each Gateway's status."""
        statuses: dict[tuple[str, str, str], dict[str, Any]] = {}
        for gateway in gateways:
            if gateway.kind != "Gateway" or not _is_waypoint(gateway):
                continue
            owner = {
                "apiVersion": str(gateway.body.get("apiVersion")), "kind": "Gateway", "name": gateway.name,
                "uid": gateway.uid, "controller": True, "blockOwnerDeletion": True,
            }  # fmt: skip
            current: dict[str, dict[str, Any]] = {}
            for wanted in waypoint_objects(_plain(gateway), self._mesh):
                wanted["metadata"]["ownerReferences"] = [owner]
                current[wanted["kind"]] = self._ensure(wanted)
            statuses[("Gateway", gateway.namespace, gateway.name)] = self._status(gateway, current)
        return statuses

    def _status(self, gateway: KubeObject, current: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        ready = int((current.get("Deployment", {}).get("status") or {}).get("readyReplicas", 0)) > 0
        cluster_ip = (current.get("Service", {}).get("spec") or {}).get("clusterIP")
        host = f"{gateway.name}.{gateway.namespace}.svc.{self._settings.cluster_domain}"
        addresses = [{"type": "Hostname", "value": host}] if ready else []
        if ready and cluster_ip:
            addresses.append({"type": "IPAddress", "value": cluster_ip})
        generation = int(_plain(gateway)["metadata"].get("generation", 1))
        return {
            "addresses": addresses,
            "conditions": [
                {"type": "Accepted", "status": "True", "reason": "Accepted",
                 "message": "the waypoint is accepted", "observedGeneration": generation},
                {"type": "Programmed", "status": "True" if ready else "False",
                 "reason": "Programmed" if ready else "Pending",
                 "message": "the waypoint's pods are ready" if ready else "waiting for a ready waypoint pod",
                 "observedGeneration": generation},
            ],
        }  # fmt: skip

    def _ensure(self, wanted: dict[str, Any]) -> dict[str, Any]:
        """Creates ``wanted`` or patches what drifted; returns the object as the API has it."""
        version, plural = _COLLECTIONS[wanted["kind"]]
        meta = wanted["metadata"]
        collection = f"/{version}/namespaces/{meta['namespace']}/{plural}"
        status, body = self._call("GET", f"{collection}/{meta['name']}")
        if status in (200, 404) and not self._may_write():
            return json.loads(body) if status == 200 else {}
        if status == 404:
            status, body = self._call("POST", collection, wanted)
            self._log.info(
                "waypoint.object_created", kind=wanted["kind"], object=f"{meta['namespace']}/{meta['name']}"
            )
        elif status == 200 and _drifted(json.loads(body), wanted):
            patch = {key: value for key, value in wanted.items() if key in ("metadata", "spec")}
            status, body = self._call("PATCH", f"{collection}/{meta['name']}", patch)
            self._log.info(
                "waypoint.object_repaired", kind=wanted["kind"], object=f"{meta['namespace']}/{meta['name']}"
            )
        if status not in (200, 201):
            self._log.warning(
                "waypoint.object_failed",
                kind=wanted["kind"],
                object=f"{meta['namespace']}/{meta['name']}",
                status=status,
                answer=body[:300].decode(errors="replace"),
            )
            return {}
        found: dict[str, Any] = json.loads(body)
        return found

    def _call(self, method: str, path: str, body: object = None) -> tuple[int, bytes]:
        return call_api(self._api, method, path, body)


def _plain(gateway: KubeObject) -> dict[str, Any]:
    body = thaw(gateway.body)
    assert isinstance(body, dict)
    return body


def _drifted(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether a field this controller owns differs (labels, owners, the spec it sets)."""
    meta, want_meta = current.get("metadata") or {}, wanted["metadata"]
    if any((meta.get("labels") or {}).get(k) != v for k, v in want_meta.get("labels", {}).items()):
        return True
    if "ownerReferences" in want_meta and meta.get("ownerReferences") != want_meta["ownerReferences"]:
        return True
    spec = current.get("spec") or {}
    return any(spec.get(key) != value for key, value in (wanted.get("spec") or {}).items())
