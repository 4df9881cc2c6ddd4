"""``lab apply`` and ``lab delete`` as pure functions: current objects + request -> actions + messages.

Apply keeps what the cluster filled in (uid, creationTimestamp, status, a Service's clusterIP, a
scheduled Pod's nodeName), bumps ``metadata.generation`` when the spec changes, allocates Service
VIPs, and creates missing Namespaces and their ``default`` ServiceAccount as a convenience.
"""

from __future__ import annotations

import copy
import ipaddress
import random
from collections.abc import Mapping, Sequence
from typing import Any

from meshctl.lab._meta import new_uid, rfc3339, strip_server_fields
from meshctl.lab.actions import Action, MarkDeleted, Put, Remove
from meshctl.lab.errors import LabObjectError
from meshctl.lab.ipam import allocate_service_ip
from meshctl.lab.objects import ObjKey, describe, is_cluster_scoped, key_of

__all__ = ["plan_apply", "plan_delete", "resource_name"]

Objects = Mapping[ObjKey, dict[str, Any]]


def resource_name(obj: Mapping[str, Any]) -> str:
    """kubectl's ``kind.group/name`` (``deployment.apps/server``, ``service/server``)."""
    group = str(obj["apiVersion"]).rpartition("/")[0]
    kind = str(obj["kind"]).lower()
    return f"{kind}.{group}/{obj['metadata']['name']}" if group else f"{kind}/{obj['metadata']['name']}"


def _group(obj: Mapping[str, Any]) -> str:
    return str(obj["apiVersion"]).rpartition("/")[0]


def plan_apply(
    current: Objects, objects: Sequence[dict[str, Any]], *, service_cidr: str, rng: random.Random, now: float
) -> tuple[list[Action], list[str]]:
    """The writes for applying ``objects`` (validated) and kubectl-style messages."""
    work = dict(current)
    actions: list[Action] = []
    messages: list[str] = []
    batch = [*_implicit_objects(current, objects), *objects]
    accounts = {key_of(o) for o in batch if o["kind"] == "ServiceAccount"} | set(current)
    for obj in batch:
        key = key_of(obj)
        if obj["kind"] == "Pod":
            _admit_service_account(obj, accounts)
        existing = work.get(key)
        if existing is not None and _group(existing) != _group(obj):
            raise LabObjectError(
                source="apply",
                obj=describe(obj),
                field="apiVersion",
                problem=f"the lab already has a {obj['kind']} with this name from {existing['apiVersion']}",
                hint="the lab keeps one object per kind, namespace and name; rename one of them",
            )
        merged = _merge(existing, obj, rng=rng, now=now)
        if obj["kind"] == "Service":
            _assign_cluster_ip(merged, existing, work, service_cidr=service_cidr)
        if existing is not None and _same(existing, merged):
            messages.append(f"{resource_name(obj)} unchanged")
            continue
        work[key] = merged
        actions.append(Put(merged))
        messages.append(f"{resource_name(obj)} {'configured' if existing else 'created'}")
    return actions, messages


def _admit_service_account(pod: dict[str, Any], accounts: set[ObjKey]) -> None:
    """Refuses a Pod whose ServiceAccount does not exist (nor comes in the same apply), as the
    ServiceAccount admission plugin does. Pods of Deployments and DaemonSets wait in the runtime."""
    namespace = pod["metadata"]["namespace"]
    name = (pod.get("spec") or {}).get("serviceAccountName") or "default"
    if ("ServiceAccount", namespace, name) not in accounts:
        raise LabObjectError(
            source="apply",
            obj=describe(pod),
            field="spec.serviceAccountName",
            problem=f'error looking up service account {namespace}/{name}: serviceaccount "{name}" not found',
            hint="apply the ServiceAccount first, or in the same apply",
        )


def _implicit_objects(current: Objects, objects: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Namespaces referenced but not defined, and a ``default`` ServiceAccount in each namespace."""
    given = {key_of(o) for o in objects}
    namespaces = {o["metadata"]["namespace"] for o in objects if not is_cluster_scoped(o["kind"])}
    namespaces |= {o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"}
    extra: list[dict[str, Any]] = []
    for ns in sorted(namespaces):
        if ("Namespace", "", ns) not in current and ("Namespace", "", ns) not in given:
            extra.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        if ("ServiceAccount", ns, "default") not in current and (
            "ServiceAccount",
            ns,
            "default",
        ) not in given:
            extra.append(
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": "default", "namespace": ns},
                }
            )
    return extra


def _merge(
    existing: dict[str, Any] | None, obj: dict[str, Any], *, rng: random.Random, now: float
) -> dict[str, Any]:
    merged = copy.deepcopy(obj)
    meta = merged["metadata"]
    if existing is None:
        meta["uid"] = new_uid(rng)
        meta["creationTimestamp"] = rfc3339(now)
        meta["generation"] = 1
        return merged
    old_meta = existing["metadata"]
    meta["uid"] = old_meta.get("uid") or new_uid(rng)
    meta["creationTimestamp"] = old_meta.get("creationTimestamp", rfc3339(now))
    generation = int(old_meta.get("generation", 1))
    meta["generation"] = (
        generation + 1 if existing.get("spec") != _spec_as_stored(merged, existing) else generation
    )
    if "status" in existing:
        merged["status"] = existing["status"]
    if obj["kind"] == "Pod" and existing.get("spec", {}).get("nodeName") and "spec" in merged:
        merged["spec"].setdefault("nodeName", existing["spec"]["nodeName"])
    return merged


def _spec_as_stored(merged: dict[str, Any], existing: dict[str, Any]) -> Any:
    spec = copy.deepcopy(merged.get("spec"))
    if isinstance(spec, dict) and merged["kind"] == "Service":
        for field in ("clusterIP", "clusterIPs"):
            if field not in spec and field in existing.get("spec", {}):
                spec[field] = existing["spec"][field]
    if isinstance(spec, dict) and merged["kind"] == "Pod" and "nodeName" in existing.get("spec", {}):
        spec.setdefault("nodeName", existing["spec"]["nodeName"])
    return spec


def _assign_cluster_ip(
    merged: dict[str, Any], existing: dict[str, Any] | None, work: Objects, *, service_cidr: str
) -> None:
    spec = merged["spec"]
    others = {
        o["spec"].get("clusterIP") for k, o in work.items() if k[0] == "Service" and k != key_of(merged)
    } - {None}
    wanted = spec.get("clusterIP") or (existing or {}).get("spec", {}).get("clusterIP")
    if wanted:
        if ipaddress.ip_address(wanted) not in ipaddress.ip_network(service_cidr) or wanted in others:
            raise LabObjectError(
                source="apply",
                obj=describe(merged),
                field="spec.clusterIP",
                problem=f"{wanted} is outside the service range {service_cidr} or already taken",
                hint="omit clusterIP to get a free address",
            )
    else:
        wanted = allocate_service_ip(service_cidr, others)
    spec["clusterIP"] = wanted
    spec["clusterIPs"] = [wanted]
    spec.setdefault("type", "ClusterIP")


def _same(existing: dict[str, Any], merged: dict[str, Any]) -> bool:
    return strip_server_fields(existing) == strip_server_fields(merged)


def plan_delete(
    current: Objects, objects: Sequence[dict[str, Any]], *, now: float, graceful: bool
) -> tuple[list[Action], list[str]]:
    """The writes for deleting ``objects``; a Namespace takes everything in it along.

    Pods are marked for deletion when ``graceful`` (a daemon will stop them), else removed.
    """
    actions: list[Action] = []
    messages: list[str] = []
    stamp = rfc3339(now)

    def drop(key: ObjKey) -> None:
        if key[0] == "Pod" and graceful:
            actions.append(MarkDeleted(key, stamp))
        else:
            actions.append(Remove(key))

    for obj in objects:
        key = key_of(obj)
        if key not in current:
            messages.append(f"{resource_name(obj)} not found")
            continue
        if obj["kind"] == "Namespace":
            for inner in sorted(k for k in current if k[1] == key[2]):
                drop(inner)
        drop(key)
        messages.append(f"{resource_name(obj)} deleted")
    return actions, messages
