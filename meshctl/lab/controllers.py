"""The lab's controllers as pure planning functions: objects in, actions out.

Deployment -> ReplicaSet (one per pod template, named ``<deploy>-<pod-template-hash>``) -> Pods
(``<replicaset>-<5 random>``), owned as on Kubernetes, a new template rolled out within ``maxSurge``
and ``maxUnavailable`` (or ``Recreate``); DaemonSet -> one Pod per node
(``<daemonset>-<5 random>``, labelled ``controller-revision-hash``), a new template rolled out node
by node within ``maxUnavailable`` (or, with ``OnDelete``, as old pods are deleted); orphans are
garbage collected; pods are placed with :func:`meshctl.lab.ipam.place_pod`. Endpoint slices and
statuses are in :mod:`meshctl.lab.endpoints`.
"""

from __future__ import annotations

import copy
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from meshctl.lab._meta import (
    controller_uid,
    hash_suffix,
    is_terminating,
    new_uid,
    owner_ref,
    pod_ready,
    random_suffix,
    rfc3339,
)
from meshctl.lab.actions import Action, MarkDeleted, Put, Remove, Schedule, SetStatus, apply_local
from meshctl.lab.endpoints import plan_endpoint_slices, plan_workload_status
from meshctl.lab.ipam import place_pod
from meshctl.lab.objects import ObjKey, max_unavailable
from meshctl.lab.waypoints import WaypointTemplate, plan_waypoint_status, plan_waypoints

__all__ = ["REVISION_HASH_LABEL", "TEMPLATE_HASH_LABEL", "plan"]

TEMPLATE_HASH_LABEL = "pod-template-hash"
REVISION_HASH_LABEL = "controller-revision-hash"
Objects = dict[ObjKey, dict[str, Any]]


def plan(
    objects: Objects,
    *,
    nodes: Sequence[str],
    rng: random.Random,
    now: float,
    waypoints: WaypointTemplate | None = None,
) -> list[Action]:
    """Every action needed to bring the store to the desired state, in order.

    Each phase sees the effects of the phases before it, so one call creates a Deployment's
    ReplicaSet and its Pods together. With ``waypoints`` (the mesh is on), Gateways of class
    istio-waypoint get their Deployment, Service and status (:mod:`meshctl.lab.waypoints`).
    """
    work = dict(objects)
    actions: list[Action] = []
    phases: tuple[Callable[[], list[Action]], ...] = (
        lambda: plan_waypoints(work, waypoints, rng=rng, now=now) if waypoints else [],
        lambda: _plan_replicasets(work, rng=rng, now=now),
        lambda: _plan_pods(work, nodes=nodes, rng=rng, now=now),
        lambda: _plan_daemonsets(work, nodes=nodes, rng=rng, now=now),
        lambda: _collect_garbage(work, now=now),
        lambda: _plan_daemonset_status(work, nodes=nodes),
        lambda: plan_endpoint_slices(work, rng=rng, now=now),
        lambda: plan_workload_status(work),
        lambda: (
            plan_waypoint_status(work, cluster_domain=waypoints.cluster_domain, now=now) if waypoints else []
        ),
    )
    for phase in phases:
        for action in phase():
            apply_local(work, action)
            actions.append(action)
    return actions


def _of_kind(objects: Objects, kind: str) -> list[dict[str, Any]]:
    return [obj for (k, _, _), obj in sorted(objects.items()) if k == kind]


def _plan_replicasets(objects: Objects, *, rng: random.Random, now: float) -> list[Action]:
    """Each Deployment's ReplicaSets: the current template's scaled to ``replicas``; on a new template
    a rolling update (:func:`_roll_replicasets`), or with ``Recreate`` the old ones removed first and
    the new one created once their pods are gone."""
    actions: list[Action] = []
    replicasets = _of_kind(objects, "ReplicaSet")
    pods = [p for p in _of_kind(objects, "Pod") if controller_uid(p)]
    for deploy in _of_kind(objects, "Deployment"):
        meta, spec = deploy["metadata"], deploy["spec"]
        template_hash = hash_suffix(spec["template"])
        name = f"{meta['name']}-{template_hash}"
        owned = [rs for rs in replicasets if controller_uid(rs) == meta["uid"]]
        current = next((rs for rs in owned if rs["metadata"]["name"] == name), None)
        old = [rs for rs in owned if rs is not current]
        replicas = spec.get("replicas", 1)
        if (spec.get("strategy") or {}).get("type") == "Recreate":
            for rs in old:  # scaled to 0, removed once its pods are gone
                has_pods = any(controller_uid(p) == rs["metadata"]["uid"] for p in pods)
                actions += _scaled(rs, 0) if has_pods else [Remove(_rs_key(rs))]
            if current is None and not old:
                actions.append(Put(_new_replicaset(deploy, name, template_hash, replicas, rng=rng, now=now)))
            elif current is not None:
                actions += _scaled(current, replicas)
            continue
        targets = _roll_replicasets(deploy, current, old, pods)
        if current is None:
            actions.append(Put(_new_replicaset(deploy, name, template_hash, targets[0], rng=rng, now=now)))
        else:
            actions += _scaled(current, targets[0])
        for rs, target in zip(old, targets[1:], strict=True):
            actions += [Remove(_rs_key(rs))] if target == 0 else _scaled(rs, target)
    return actions


def _roll_replicasets(
    deploy: dict[str, Any],
    current: dict[str, Any] | None,
    old: list[dict[str, Any]],
    pods: list[dict[str, Any]],
) -> list[int]:
    """The replica counts of the current ReplicaSet and of each old one for this step of a rolling
    update, as the Deployment controller computes them: the new one grows while all of them together
    stay within ``replicas + maxSurge``; old pods go while at least ``replicas - maxUnavailable`` are
    ready (not-ready old pods go at once). Defaults 25 % each (surge rounded up, unavailable down)."""
    spec = deploy["spec"]
    replicas = spec.get("replicas", 1)
    rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
    surge = _rolling_count(rolling.get("maxSurge", "25%"), replicas, round_up=True)
    unavailable = _rolling_count(rolling.get("maxUnavailable", "25%"), replicas, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1  # Kubernetes refuses both 0; the lab still makes progress

    def ready(rs: dict[str, Any] | None) -> int:
        uid = rs["metadata"]["uid"] if rs else None
        return sum(1 for p in pods if controller_uid(p) == uid and not is_terminating(p) and pod_ready(p))

    if not old:
        return [replicas]
    new = int(current["spec"]["replicas"]) if current else 0
    olds = [int(rs["spec"]["replicas"]) for rs in old]
    available = min(ready(current), new) + sum(min(ready(rs), n) for rs, n in zip(old, olds, strict=True))
    new = min(replicas, max(new, replicas + surge - sum(olds)))
    removable = max(0, available - (replicas - unavailable))
    for i, rs in enumerate(old):
        not_ready = max(0, olds[i] - ready(rs))
        take_ready = min(olds[i] - not_ready, removable)
        removable -= take_ready
        olds[i] -= not_ready + take_ready
    return [new, *olds]


def _rolling_count(value: Any, replicas: int, *, round_up: bool) -> int:
    """``maxSurge``/``maxUnavailable``: a count, or a percentage of ``replicas``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return max(0, value)
    if isinstance(value, str) and value.endswith("%") and value[:-1].isdigit():
        share = replicas * int(value[:-1]) / 100
        return math.ceil(share) if round_up else math.floor(share)
    return 0


def _scaled(rs: dict[str, Any], replicas: int) -> list[Action]:
    if rs["spec"]["replicas"] == replicas:
        return []
    updated = copy.deepcopy(rs)
    updated["spec"]["replicas"] = replicas
    return [Put(updated)]


def _rs_key(rs: dict[str, Any]) -> ObjKey:
    return ("ReplicaSet", rs["metadata"]["namespace"], rs["metadata"]["name"])


def _new_replicaset(
    deploy: dict[str, Any], name: str, template_hash: str, replicas: int, *, rng: random.Random, now: float
) -> dict[str, Any]:
    spec = deploy["spec"]
    template = copy.deepcopy(spec["template"])
    labels = dict(template["metadata"].get("labels") or {})
    labels[TEMPLATE_HASH_LABEL] = template_hash
    template["metadata"]["labels"] = labels
    selector = dict(spec["selector"]["matchLabels"])
    selector[TEMPLATE_HASH_LABEL] = template_hash
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": name,
            "namespace": deploy["metadata"]["namespace"],
            "uid": new_uid(rng),
            "creationTimestamp": rfc3339(now),
            "labels": labels,
            "ownerReferences": [owner_ref(deploy)],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": template,
        },
        "status": {"replicas": 0, "readyReplicas": 0, "availableReplicas": 0},
    }


def _node_counts(pods: list[dict[str, Any]]) -> Counter[str]:
    return Counter(p["spec"].get("nodeName", "") for p in pods if not is_terminating(p))


def _plan_pods(objects: Objects, *, nodes: Sequence[str], rng: random.Random, now: float) -> list[Action]:
    actions: list[Action] = []
    pods = _of_kind(objects, "Pod")
    totals = _node_counts(pods)
    for rs in _of_kind(objects, "ReplicaSet"):
        owned = [p for p in pods if controller_uid(p) == rs["metadata"]["uid"] and not is_terminating(p)]
        missing = rs["spec"]["replicas"] - len(owned)
        owner_counts = _node_counts(owned)
        for _ in range(max(missing, 0)):
            node = rs["spec"]["template"]["spec"].get("nodeName") or place_pod(
                nodes, owner_counts=owner_counts, total_counts=totals
            )
            owner_counts[node] += 1
            totals[node] += 1
            actions.append(Put(_new_pod(rs, rs["spec"]["template"], node, rng=rng, now=now)))
        for extra in _scale_down_order(owned)[: max(-missing, 0)]:
            meta = extra["metadata"]
            actions.append(MarkDeleted(("Pod", meta["namespace"], meta["name"]), rfc3339(now)))
    for pod in pods:
        if not pod["spec"].get("nodeName") and not is_terminating(pod) and controller_uid(pod) is None:
            node = place_pod(nodes, owner_counts={}, total_counts=totals)
            totals[node] += 1
            actions.append(Schedule(("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"]), node))
    return actions


def _scale_down_order(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Not-ready pods first, then the newest, as the ReplicaSet controller prefers."""
    by_age = sorted(pods, key=lambda p: (p["metadata"].get("creationTimestamp", ""), p["metadata"]["name"]))
    return sorted(reversed(by_age), key=pod_ready)


def _new_pod(
    owner: dict[str, Any], template: dict[str, Any], node: str, *, rng: random.Random, now: float
) -> dict[str, Any]:
    """A pod of ``owner`` (a ReplicaSet or DaemonSet) from ``template``, on ``node``."""
    template = copy.deepcopy(template)
    owner_meta = owner["metadata"]
    spec = template["spec"]
    spec["nodeName"] = node
    spec.setdefault("serviceAccountName", "default")
    spec.setdefault("restartPolicy", "Always")
    metadata: dict[str, Any] = {
        "name": f"{owner_meta['name']}-{random_suffix(rng)}",
        "generateName": f"{owner_meta['name']}-",
        "namespace": owner_meta["namespace"],
        "uid": new_uid(rng),
        "creationTimestamp": rfc3339(now),
        "labels": template["metadata"].get("labels") or {},
        "ownerReferences": [owner_ref(owner)],
    }
    if template["metadata"].get("annotations"):
        metadata["annotations"] = template["metadata"]["annotations"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": spec,
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]},
    }


def _plan_daemonsets(
    objects: Objects, *, nodes: Sequence[str], rng: random.Random, now: float
) -> list[Action]:
    """One pod per node for each DaemonSet. A node's pod is created once its previous one is gone.
    A new template replaces old pods node by node (RollingUpdate): not-ready old pods first, ready
    ones only while fewer than ``maxUnavailable`` nodes lack a ready pod; with ``maxSurge`` (and
    ``maxUnavailable: 0``) the new pod starts beside the ready old one on up to ``maxSurge`` nodes
    at a time, and the old one is deleted once the new one is ready (:func:`_plan_surge`); with
    ``OnDelete`` old pods stay until someone deletes them."""
    actions: list[Action] = []
    pods = _of_kind(objects, "Pod")
    for ds in _of_kind(objects, "DaemonSet"):
        meta, spec = ds["metadata"], ds["spec"]
        revision = hash_suffix(spec["template"])
        strategy = spec.get("updateStrategy") or {}
        rolling = strategy.get("type", "RollingUpdate") == "RollingUpdate"
        surge = max_unavailable((strategy.get("rollingUpdate") or {}).get("maxSurge", 0), len(nodes))
        if rolling and surge:
            owned = [p for p in pods if controller_uid(p) == meta["uid"]]
            actions += _plan_surge(ds, owned, revision, surge=surge, nodes=nodes, rng=rng, now=now)
            continue
        budget = (
            max_unavailable((strategy.get("rollingUpdate") or {}).get("maxUnavailable", 1), len(nodes)) or 1
        )
        owned = [p for p in pods if controller_uid(p) == meta["uid"]]
        unavailable, outdated = 0, []
        for node in nodes:
            on_node = [p for p in owned if p["spec"].get("nodeName") == node]
            live = sorted(
                (p for p in on_node if not is_terminating(p)),
                key=lambda p: (_revision(p) != revision, not pod_ready(p)),  # the one to keep first
            )
            if not live:
                unavailable += 1
                if not on_node:  # the previous pod has terminated: the node's new one
                    actions.append(
                        Put(_new_pod(ds, _with_revision(spec["template"], revision), node, rng=rng, now=now))
                    )
                continue
            kept, *extra = live
            actions += [MarkDeleted(_pod_key(p), rfc3339(now)) for p in extra]
            unavailable += not pod_ready(kept)
            if rolling and _revision(kept) != revision:
                outdated.append(kept)
        actions += [
            MarkDeleted(_pod_key(p), rfc3339(now))
            for p in owned
            if p["spec"].get("nodeName") not in nodes and not is_terminating(p)
        ]
        for pod in sorted(outdated, key=pod_ready):  # the unavailable ones cost nothing to replace
            if pod_ready(pod):
                if unavailable >= budget:
                    break
                unavailable += 1
            actions.append(MarkDeleted(_pod_key(pod), rfc3339(now)))
    return actions


def _plan_surge(
    ds: dict[str, Any],
    owned: list[dict[str, Any]],
    revision: str,
    *,
    surge: int,
    nodes: Sequence[str],
    rng: random.Random,
    now: float,
) -> list[Action]:
    """A DaemonSet rolled with surge: a node whose pod is outdated and ready gets the new pod beside
    it (at most ``surge`` such nodes at once); once the new pod is ready the old ones are deleted.
    A node whose outdated pod is not ready gets the new pod at once, outside the surge budget, and
    keeps the old one until the new one is ready (as Kubernetes' controller: a pod that is not ready
    may still serve, ztunnel's while its node agent restarts), and a node without a live pod gets
    the new one."""
    actions: list[Action] = []
    template = _with_revision(ds["spec"]["template"], revision)
    waiting: list[str] = []
    surging = 0
    for node in nodes:
        live = [p for p in owned if p["spec"].get("nodeName") == node and not is_terminating(p)]
        new = sorted((p for p in live if _revision(p) == revision), key=lambda p: not pod_ready(p))
        old = [p for p in live if _revision(p) != revision]
        if new:
            actions += [MarkDeleted(_pod_key(p), rfc3339(now)) for p in new[1:]]
            if pod_ready(new[0]):
                actions += [MarkDeleted(_pod_key(p), rfc3339(now)) for p in old]
            elif old:
                surging += 1
            continue
        if old and all(pod_ready(p) for p in old):
            waiting.append(node)  # the new pod beside it within the surge budget
        elif old or not any(p["spec"].get("nodeName") == node for p in owned):  # none left, not even going
            actions.append(Put(_new_pod(ds, template, node, rng=rng, now=now)))
    for node in waiting[: max(0, surge - surging)]:
        actions.append(Put(_new_pod(ds, template, node, rng=rng, now=now)))
    actions += [
        MarkDeleted(_pod_key(p), rfc3339(now))
        for p in owned
        if p["spec"].get("nodeName") not in nodes and not is_terminating(p)
    ]
    return actions


def _plan_daemonset_status(objects: Objects, *, nodes: Sequence[str]) -> list[Action]:
    """DaemonSet counts, as its controller reports them."""
    actions: list[Action] = []
    pods = [p for p in _of_kind(objects, "Pod") if not is_terminating(p)]
    for ds in _of_kind(objects, "DaemonSet"):
        meta = ds["metadata"]
        revision = hash_suffix(ds["spec"]["template"])
        owned = [p for p in pods if controller_uid(p) == meta["uid"]]
        ready = sum(pod_ready(p) for p in owned)
        status = {
            "observedGeneration": meta.get("generation", 1),
            "desiredNumberScheduled": len(nodes),
            "currentNumberScheduled": len(owned),
            "updatedNumberScheduled": sum(_revision(p) == revision for p in owned),
            "numberReady": ready,
            "numberAvailable": ready,
            "numberUnavailable": len(nodes) - ready,
            "numberMisscheduled": 0,
        }
        if ds.get("status") != status:
            actions.append(SetStatus(("DaemonSet", meta["namespace"], meta["name"]), status))
    return actions


def _revision(pod: dict[str, Any]) -> str:
    return str((pod["metadata"].get("labels") or {}).get(REVISION_HASH_LABEL, ""))


def _with_revision(template: dict[str, Any], revision: str) -> dict[str, Any]:
    labelled = copy.deepcopy(template)
    labelled["metadata"]["labels"] = {
        **(labelled["metadata"].get("labels") or {}),
        REVISION_HASH_LABEL: revision,
    }
    return labelled


def _pod_key(pod: dict[str, Any]) -> ObjKey:
    return ("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"])


def _collect_garbage(objects: Objects, *, now: float) -> list[Action]:
    """Removes ReplicaSets whose Deployment is gone and deletes Pods whose owner or namespace is gone."""
    actions: list[Action] = []
    deployments = {d["metadata"]["uid"] for d in _of_kind(objects, "Deployment")}
    owners = {d["metadata"]["uid"] for d in _of_kind(objects, "DaemonSet")}  # of pods
    for rs in _of_kind(objects, "ReplicaSet"):
        if controller_uid(rs) in deployments:
            owners.add(rs["metadata"]["uid"])
        else:
            actions.append(Remove(("ReplicaSet", rs["metadata"]["namespace"], rs["metadata"]["name"])))
    namespaces = {name for (kind, _, name) in objects if kind == "Namespace"}
    for pod in _of_kind(objects, "Pod"):
        meta = pod["metadata"]
        owner = controller_uid(pod)
        orphan = owner is not None and owner not in owners
        if (orphan or meta["namespace"] not in namespaces) and not is_terminating(pod):
            actions.append(MarkDeleted(("Pod", meta["namespace"], meta["name"]), rfc3339(now)))
    return actions
