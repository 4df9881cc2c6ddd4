"""Waypoints in the lab (pure planning): a Gateway of class ``istio-waypoint`` gets its proxy.

As istiod's deployment controller does (waypoint-facts 1.3), every such Gateway gets a
ServiceAccount, a Deployment and a Service named after it, owned by the Gateway (and removed
with it). The Deployment's pods run ``waypoint`` as the Gateway's service account, are not
captured by ztunnel (``istio.io/dataplane-mode: none``) and carry the canonical name ztunnel
uses to recognise traffic coming from its own waypoint. The Gateway's status says Accepted, and
Programmed with its addresses (the Service's host name and cluster IP) once a pod is ready.

The waypoint process is started as::

    waypoint --xds-address <istiod>:15012 --root-cert <trust bundle> --token-file <token>
             --trust-domain <td> --cluster-id <id>

with ``POD_NAME``, ``POD_NAMESPACE``, ``INSTANCE_IP``, ``SERVICE_ACCOUNT``, ``NODE_NAME`` (the
downward API) and ``WAYPOINT_NAME`` (the Gateway) in its environment, from the pod template istiod_lite
renders on Kubernetes: the token is a projected service-account token (the lab registers it for
``<namespace>/<gateway name>``) and the trust bundle the ``istio-ca-root-cert`` ConfigMap.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from istiod_lite.waypoint_objects import WAYPOINT_CLASS, PodMesh, waypoint_objects
from meshctl.lab._meta import controller_uid, is_terminating, new_uid, owner_ref, rfc3339
from meshctl.lab.actions import Action, Put, Remove, SetStatus
from meshctl.lab.ipam import allocate_service_ip
from meshctl.lab.objects import ObjKey

__all__ = ["WaypointTemplate", "plan_waypoint_status", "plan_waypoints", "waypoint_gateways"]

_GATEWAY_API = "gateway.networking.k8s.io/"
_OWNED_KINDS = ("ServiceAccount", "Deployment", "Service")
Objects = dict[ObjKey, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class WaypointTemplate:
    """What every waypoint pod needs to reach the mesh, from the lab's settings."""

    mesh: PodMesh
    """The pod's arguments, volumes and container settings (:func:`kubernetes_pod_mesh`)."""
    cluster_domain: str
    service_cidr: str


def waypoint_gateways(objects: Mapping[ObjKey, dict[str, Any]]) -> list[dict[str, Any]]:
    """The live Gateway API Gateways of class ``istio-waypoint``."""
    return [
        obj
        for (kind, _, _), obj in sorted(objects.items())
        if kind == "Gateway"
        and str(obj.get("apiVersion", "")).startswith(_GATEWAY_API)
        and (obj.get("spec") or {}).get("gatewayClassName") == WAYPOINT_CLASS
        and not is_terminating(obj)
    ]


def plan_waypoints(
    objects: Objects, template: WaypointTemplate, *, rng: random.Random, now: float
) -> list[Action]:
    """Creates or updates each waypoint's ServiceAccount, Deployment and Service; removes orphans."""
    actions: list[Action] = []
    gateways = waypoint_gateways(objects)
    for gateway in gateways:
        for wanted in _desired(gateway, template):
            key = (wanted["kind"], gateway["metadata"]["namespace"], gateway["metadata"]["name"])
            current = objects.get(key)
            if current is None:
                actions.append(Put(_created(wanted, objects, template, rng=rng, now=now)))
            elif controller_uid(current) == gateway["metadata"]["uid"] and _differs(current, wanted):
                actions.append(Put(_updated(current, wanted)))
    live = {g["metadata"]["uid"] for g in gateways}
    for (kind, namespace, name), obj in sorted(objects.items()):
        if kind in _OWNED_KINDS and _gateway_owned(obj) and controller_uid(obj) not in live:
            actions.append(Remove((kind, namespace, name)))  # its Gateway is gone (or no longer a waypoint)
    return actions


def _gateway_owned(obj: Mapping[str, Any]) -> bool:
    refs = obj["metadata"].get("ownerReferences") or ()
    return any(r.get("controller") and r.get("kind") == "Gateway" for r in refs)


def _desired(gateway: dict[str, Any], template: WaypointTemplate) -> list[dict[str, Any]]:
    return waypoint_objects(gateway, template.mesh)


def _created(
    wanted: dict[str, Any], objects: Objects, template: WaypointTemplate, *, rng: random.Random, now: float
) -> dict[str, Any]:
    obj = copy.deepcopy(wanted)
    namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    gateway = objects[("Gateway", namespace, name)]
    obj["metadata"].update(
        uid=new_uid(rng), creationTimestamp=rfc3339(now), ownerReferences=[owner_ref(gateway)]
    )
    if obj["kind"] == "Deployment":
        obj["metadata"]["generation"] = 1
    if obj["kind"] == "Service":
        used = [o["spec"].get("clusterIP") for (k, _, _), o in objects.items() if k == "Service"]
        ip = allocate_service_ip(template.service_cidr, [u for u in used if u])
        obj["spec"].update(clusterIP=ip, clusterIPs=[ip])
    return obj


def _differs(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    labels = current["metadata"].get("labels") or {}
    if any(labels.get(k) != v for k, v in wanted["metadata"]["labels"].items()):
        return True
    if wanted["kind"] == "Deployment":
        return bool(current["spec"] != wanted["spec"])
    if wanted["kind"] == "Service":
        spec = current["spec"]
        return bool(
            spec.get("ports") != wanted["spec"]["ports"] or spec.get("selector") != wanted["spec"]["selector"]
        )
    return False


def _updated(current: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(current)
    obj["metadata"]["labels"] = {**(obj["metadata"].get("labels") or {}), **wanted["metadata"]["labels"]}
    if wanted["kind"] == "Deployment":
        obj["spec"] = copy.deepcopy(wanted["spec"])
        obj["metadata"]["generation"] = int(obj["metadata"].get("generation", 1)) + 1
    elif wanted["kind"] == "Service":
        obj["spec"].update(
            ports=copy.deepcopy(wanted["spec"]["ports"]), selector=dict(wanted["spec"]["selector"])
        )
    return obj


def plan_waypoint_status(objects: Objects, *, cluster_domain: str, now: float) -> list[Action]:
    """Each waypoint Gateway's Accepted and Programmed conditions and addresses."""
    actions: list[Action] = []
    for gateway in waypoint_gateways(objects):
        meta = gateway["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        deployment = objects.get(("Deployment", namespace, name)) or {}
        service = objects.get(("Service", namespace, name)) or {}
        ready = int((deployment.get("status") or {}).get("readyReplicas", 0)) > 0
        addresses = []
        if ready:
            addresses.append({"type": "Hostname", "value": f"{name}.{namespace}.svc.{cluster_domain}"})
            if (service.get("spec") or {}).get("clusterIP"):
                addresses.append({"type": "IPAddress", "value": service["spec"]["clusterIP"]})
        conditions = [
            _condition("Accepted", True, "Accepted", "the waypoint is accepted", meta),
            _condition(
                "Programmed",
                ready,
                "Programmed" if ready else "Pending",
                "the waypoint's pods are ready" if ready else "waiting for a ready waypoint pod",
                meta,
            ),
        ]
        old = gateway.get("status") or {}
        status = {
            "addresses": addresses,
            "conditions": _keep_times(conditions, old.get("conditions") or [], now),
        }
        if old != status:
            actions.append(SetStatus(("Gateway", namespace, name), status))
    return actions


def _condition(kind: str, ok: bool, reason: str, message: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": int(meta.get("generation", 1)),
    }


def _keep_times(
    conditions: list[dict[str, Any]], old: list[dict[str, Any]], now: float
) -> list[dict[str, Any]]:
    """Sets ``lastTransitionTime``: kept while a condition's status stays the same."""
    before = {c.get("type"): c for c in old if isinstance(c, dict)}
    for condition in conditions:
        previous = before.get(condition["type"])
        same = previous is not None and previous.get("status") == condition["status"]
        kept = previous.get("lastTransitionTime") if same and previous is not None else None
        condition["lastTransitionTime"] = kept or rfc3339(now)
    return conditions
