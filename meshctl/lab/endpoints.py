"""EndpointSlices for Services and the status of ReplicaSets and Deployments (pure planning)."""

from __future__ import annotations

import random
from typing import Any

from meshctl.lab._meta import (
    controller_uid,
    hash_suffix,
    is_terminating,
    labels_match,
    new_uid,
    owner_ref,
    pod_ready,
    rfc3339,
)
from meshctl.lab.actions import Action, Put, Remove, SetStatus
from meshctl.lab.objects import ObjKey

__all__ = [
    "MANAGED_BY",
    "SERVICE_NAME_LABEL",
    "plan_endpoint_slices",
    "plan_workload_status",
    "resolve_target_port",
]

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "lab.meshctl.io"
Objects = dict[ObjKey, dict[str, Any]]


def resolve_target_port(port: dict[str, Any], pod: dict[str, Any]) -> int | None:
    """The container port a Service port sends to on ``pod`` (named target ports are looked up)."""
    target = port.get("targetPort", port["port"])
    if isinstance(target, int):
        return target
    for container in pod["spec"].get("containers") or ():
        for cport in container.get("ports") or ():
            if cport.get("name") == target:
                return int(cport["containerPort"])
    return None


def _of_kind(objects: Objects, kind: str) -> list[dict[str, Any]]:
    return [obj for (k, _, _), obj in sorted(objects.items()) if k == kind]


def plan_endpoint_slices(objects: Objects, *, rng: random.Random, now: float) -> list[Action]:
    """One managed EndpointSlice per Service with a selector; slices of deleted Services go."""
    actions: list[Action] = []
    pods = [
        p for p in _of_kind(objects, "Pod") if not is_terminating(p) and (p.get("status") or {}).get("podIP")
    ]
    wanted: set[ObjKey] = set()
    for svc in _of_kind(objects, "Service"):
        selector = svc["spec"].get("selector") or {}
        if not selector:
            continue
        meta = svc["metadata"]
        name = f"{meta['name']}-{hash_suffix(meta['uid'], 5)}"
        key: ObjKey = ("EndpointSlice", meta["namespace"], name)
        wanted.add(key)
        members = [p for p in pods if p["metadata"]["namespace"] == meta["namespace"]]
        members = [p for p in members if labels_match(selector, p["metadata"].get("labels"))]
        desired = _slice(svc, name, members)
        current = objects.get(key)
        if current is None:
            desired["metadata"]["uid"] = new_uid(rng)
            desired["metadata"]["creationTimestamp"] = rfc3339(now)
            actions.append(Put(desired))
        elif any(current.get(f) != desired.get(f) for f in ("ports", "endpoints", "addressType")):
            desired["metadata"]["uid"] = current["metadata"].get("uid")
            actions.append(Put(desired))
    for eps in _of_kind(objects, "EndpointSlice"):
        meta = eps["metadata"]
        key = ("EndpointSlice", meta["namespace"], meta["name"])
        managed = (meta.get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY
        if managed and key not in wanted:
            actions.append(Remove(key))
    return actions


def _slice(svc: dict[str, Any], name: str, members: list[dict[str, Any]]) -> dict[str, Any]:
    meta = svc["metadata"]
    ports = []
    for port in svc["spec"]["ports"]:
        resolved = next((p for p in (resolve_target_port(port, m) for m in members) if p is not None), None)
        target = port.get("targetPort", port["port"])
        number = resolved if resolved is not None else (target if isinstance(target, int) else None)
        ports.append({"name": port.get("name", ""), "port": number, "protocol": port.get("protocol", "TCP")})
    endpoints = [
        {
            "addresses": [m["status"]["podIP"]],
            "conditions": {"ready": pod_ready(m), "serving": pod_ready(m), "terminating": False},
            "nodeName": m["spec"].get("nodeName"),
            "targetRef": {
                "kind": "Pod",
                "namespace": m["metadata"]["namespace"],
                "name": m["metadata"]["name"],
                "uid": m["metadata"]["uid"],
            },
        }
        for m in sorted(members, key=lambda m: m["metadata"]["name"])
    ]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {SERVICE_NAME_LABEL: meta["name"], MANAGED_BY_LABEL: MANAGED_BY},
            "ownerReferences": [owner_ref(svc)],
        },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints,
    }


def plan_workload_status(objects: Objects) -> list[Action]:
    """ReplicaSet and Deployment replica counts, as their controllers report them."""
    actions: list[Action] = []
    pods = [p for p in _of_kind(objects, "Pod") if not is_terminating(p)]
    rs_counts: dict[str, tuple[int, int]] = {}
    for rs in _of_kind(objects, "ReplicaSet"):
        owned = [p for p in pods if controller_uid(p) == rs["metadata"]["uid"]]
        ready = sum(pod_ready(p) for p in owned)
        rs_counts[rs["metadata"]["uid"]] = (len(owned), ready)
        status = {"replicas": len(owned), "readyReplicas": ready, "availableReplicas": ready}
        if rs.get("status") != status:
            actions.append(
                SetStatus(("ReplicaSet", rs["metadata"]["namespace"], rs["metadata"]["name"]), status)
            )
    replicasets = _of_kind(objects, "ReplicaSet")
    for deploy in _of_kind(objects, "Deployment"):
        meta = deploy["metadata"]
        owned_rs = [rs for rs in replicasets if controller_uid(rs) == meta["uid"]]
        total = sum(rs_counts.get(rs["metadata"]["uid"], (0, 0))[0] for rs in owned_rs)
        ready = sum(rs_counts.get(rs["metadata"]["uid"], (0, 0))[1] for rs in owned_rs)
        status = {
            "observedGeneration": meta.get("generation", 1),
            "replicas": total,
            "updatedReplicas": total,
            "readyReplicas": ready,
            "availableReplicas": ready,
        }
        if deploy.get("status") != status:
            actions.append(SetStatus(("Deployment", meta["namespace"], meta["name"]), status))
    return actions
