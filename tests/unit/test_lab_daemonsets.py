"""The lab's DaemonSet controller as data: one pod per node, a template change rolled out node by
node within maxUnavailable (never more nodes without a ready pod) or by surge (the new pod beside the
ready old one), OnDelete, garbage collection, status and validation."""

from __future__ import annotations

import random
from typing import Any

import pytest

from meshctl.lab import builders as b
from meshctl.lab.actions import MarkDeleted, Put, Remove, apply_local
from meshctl.lab.controllers import REVISION_HASH_LABEL, plan
from meshctl.lab.errors import LabObjectError
from meshctl.lab.objects import validate_object
from tests.unit.test_lab_controllers import NOW, Objects, of_kind, store

NODES = ("node1", "node2", "node3", "node4")


def daemonset(
    name: str = "agent", *, strategy: dict[str, Any] | None = None, command: str = "v1"
) -> dict[str, Any]:
    ds = b.deployment(name, "kube-system", command=[command])
    ds["kind"] = "DaemonSet"
    ds["spec"].pop("replicas", None)
    if strategy is not None:
        ds["spec"]["updateStrategy"] = strategy
    return ds


def reconcile(objects: Objects, rng: random.Random, nodes: tuple[str, ...] = NODES) -> list[Any]:
    """One planning pass applied to the store; the actions taken."""
    actions = plan(objects, nodes=nodes, rng=rng, now=NOW)
    for action in actions:
        apply_local(objects, action)
    return actions


def runtime_step(objects: Objects) -> None:
    """What the lab runtime does between passes: terminated pods go, new pods become ready."""
    for pod in of_kind(objects, "Pod"):
        key = ("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"])
        if pod["metadata"].get("deletionTimestamp"):
            apply_local(objects, Remove(key))
        else:
            pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}


def pods_by_node(objects: Objects) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for pod in of_kind(objects, "Pod"):
        found.setdefault(pod["spec"]["nodeName"], []).append(pod)
    return found


def ready_nodes(objects: Objects) -> int:
    return sum(
        any(
            not p["metadata"].get("deletionTimestamp") and p["status"].get("phase") == "Running" for p in pods
        )
        for pods in pods_by_node(objects).values()
    )


def test_one_pod_per_node_owned_by_the_daemonset_with_its_revision() -> None:
    rng = random.Random(1)
    objects = store(b.namespace("kube-system"), daemonset())
    reconcile(objects, rng)
    (ds,) = of_kind(objects, "DaemonSet")
    pods = of_kind(objects, "Pod")
    assert sorted(p["spec"]["nodeName"] for p in pods) == list(NODES)
    assert all(p["metadata"]["ownerReferences"][0]["uid"] == ds["metadata"]["uid"] for p in pods)
    assert all(p["metadata"]["name"].startswith("agent-") for p in pods)
    assert len({p["metadata"]["labels"][REVISION_HASH_LABEL] for p in pods}) == 1
    runtime_step(objects)
    reconcile(objects, rng)
    assert of_kind(objects, "DaemonSet")[0]["status"] == {
        "observedGeneration": 1, "desiredNumberScheduled": 4, "currentNumberScheduled": 4,
        "updatedNumberScheduled": 4, "numberReady": 4, "numberAvailable": 4, "numberUnavailable": 0,
        "numberMisscheduled": 0,
    }  # fmt: skip
    assert reconcile(objects, rng) == []  # a fixpoint


@pytest.mark.parametrize(("max_unavailable", "at_once"), [(None, 1), (2, 2), ("50%", 2), ("10%", 1)])
def test_a_new_template_rolls_out_node_by_node_within_max_unavailable(
    max_unavailable: Any, at_once: int
) -> None:
    rng = random.Random(2)
    strategy: dict[str, Any] = {"type": "RollingUpdate"}
    if max_unavailable is not None:
        strategy["rollingUpdate"] = {"maxUnavailable": max_unavailable}
    objects = store(b.namespace("kube-system"), daemonset(strategy=strategy))
    reconcile(objects, rng)
    runtime_step(objects)
    reconcile(objects, rng)
    key = ("DaemonSet", "kube-system", "agent")
    objects[key]["spec"]["template"]["spec"]["containers"][0]["command"] = ["v2"]
    deletions = []
    for _ in range(20):
        actions = reconcile(objects, rng)
        deletions.append(sum(isinstance(a, MarkDeleted) for a in actions))
        assert ready_nodes(objects) >= len(NODES) - at_once  # never more nodes without a ready pod
        assert all(len(pods) <= 1 for pods in pods_by_node(objects).values())  # no surge
        if not actions:
            break
        runtime_step(objects)
    pods = of_kind(objects, "Pod")
    assert [p["spec"]["containers"][0]["command"] for p in pods] == [["v2"]] * len(NODES)
    assert max(deletions) == at_once


@pytest.mark.parametrize(("max_surge", "at_once"), [(1, 1), (2, 2), ("50%", 2)])
def test_a_surge_starts_the_new_pod_beside_the_ready_old_one(max_surge: Any, at_once: int) -> None:
    rng = random.Random(5)
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": max_surge, "maxUnavailable": 0}}
    validate_object(daemonset(strategy=strategy), source="test")
    objects = store(b.namespace("kube-system"), daemonset(strategy=strategy))
    reconcile(objects, rng)
    runtime_step(objects)
    reconcile(objects, rng)
    objects[("DaemonSet", "kube-system", "agent")]["spec"]["template"]["spec"]["containers"][0]["command"] = [
        "v2"
    ]
    surged = []
    for _ in range(30):
        actions = reconcile(objects, rng)
        assert ready_nodes(objects) == len(NODES)  # never a node without a ready pod
        live = {
            node: [p for p in pods if not p["metadata"].get("deletionTimestamp")]
            for node, pods in pods_by_node(objects).items()
        }
        surged.append(sum(len(ps) == 2 for ps in live.values()))
        assert all(len(ps) <= 2 for ps in live.values())
        if not actions:
            break
        runtime_step(objects)
    pods = of_kind(objects, "Pod")
    assert sorted(p["spec"]["nodeName"] for p in pods) == list(NODES)
    assert [p["spec"]["containers"][0]["command"] for p in pods] == [["v2"]] * len(NODES)
    assert max(surged) == at_once


def test_a_surge_waits_for_the_new_pod_to_be_ready_before_deleting_the_old_one() -> None:
    rng = random.Random(6)
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    objects = store(b.namespace("kube-system"), daemonset(strategy=strategy))
    reconcile(objects, rng)
    runtime_step(objects)
    objects[("DaemonSet", "kube-system", "agent")]["spec"]["template"]["spec"]["containers"][0]["command"] = [
        "v2"
    ]
    (created,) = [a.obj for a in reconcile(objects, rng) if isinstance(a, Put) and a.obj["kind"] == "Pod"]
    for _ in range(3):  # while the new pod is not ready, no pod is deleted or created
        actions = reconcile(objects, rng)
        assert not [a for a in actions if isinstance(a, MarkDeleted)]
        assert not [a for a in actions if isinstance(a, Put) and a.obj["kind"] == "Pod"]
    created_key = ("Pod", "kube-system", created["metadata"]["name"])
    objects[created_key]["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    deleted = [a for a in reconcile(objects, rng) if isinstance(a, MarkDeleted)]
    assert len(deleted) == 1
    (old,) = [p for p in of_kind(objects, "Pod") if p["metadata"].get("deletionTimestamp")]
    assert old["spec"]["nodeName"] == created["spec"]["nodeName"]


def test_a_surge_replaces_an_old_pod_that_is_not_ready_at_once_and_keeps_it_until_then() -> None:
    rng = random.Random(7)
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    objects = store(b.namespace("kube-system"), daemonset(strategy=strategy))
    reconcile(objects, rng)
    runtime_step(objects)
    (unready,) = [p for p in of_kind(objects, "Pod") if p["spec"]["nodeName"] == "node3"]
    unready["status"]["conditions"] = [{"type": "Ready", "status": "False"}]  # e.g. its agent restarts
    objects[("DaemonSet", "kube-system", "agent")]["spec"]["template"]["spec"]["containers"][0]["command"] = [
        "v2"
    ]
    actions = reconcile(objects, rng)
    created = sorted(
        a.obj["spec"]["nodeName"] for a in actions if isinstance(a, Put) and a.obj["kind"] == "Pod"
    )
    assert created == ["node1", "node3"]  # node3's outside the surge budget
    assert not [a for a in actions if isinstance(a, MarkDeleted)]  # the old one may still serve
    assert not [a for a in reconcile(objects, rng) if isinstance(a, MarkDeleted | Put)]
    (new,) = [
        p
        for p in of_kind(objects, "Pod")
        if p["spec"]["nodeName"] == "node3" and p["metadata"]["name"] != unready["metadata"]["name"]
    ]
    new["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    (deleted,) = [a for a in reconcile(objects, rng) if isinstance(a, MarkDeleted)]
    assert deleted.key == ("Pod", "kube-system", unready["metadata"]["name"])


def test_on_delete_keeps_old_pods_until_they_are_deleted() -> None:
    rng = random.Random(3)
    objects = store(b.namespace("kube-system"), daemonset(strategy={"type": "OnDelete"}))
    reconcile(objects, rng)
    runtime_step(objects)
    objects[("DaemonSet", "kube-system", "agent")]["spec"]["template"]["spec"]["containers"][0]["command"] = [
        "v2"
    ]
    assert not [a for a in reconcile(objects, rng) if isinstance(a, MarkDeleted | Put)]
    victim = of_kind(objects, "Pod")[0]
    apply_local(objects, Remove(("Pod", "kube-system", victim["metadata"]["name"])))
    (created,) = [a.obj for a in reconcile(objects, rng) if isinstance(a, Put) and a.obj["kind"] == "Pod"]
    assert created["spec"]["nodeName"] == victim["spec"]["nodeName"]
    assert created["spec"]["containers"][0]["command"] == ["v2"]


def test_pods_of_a_deleted_daemonset_are_deleted_and_live_ones_are_not_orphans() -> None:
    rng = random.Random(4)
    objects = store(b.namespace("kube-system"), daemonset())
    reconcile(objects, rng)
    runtime_step(objects)
    assert not [a for a in reconcile(objects, rng) if isinstance(a, MarkDeleted)]
    apply_local(objects, Remove(("DaemonSet", "kube-system", "agent")))
    deleted = [a for a in reconcile(objects, rng) if isinstance(a, MarkDeleted)]
    assert len(deleted) == len(NODES)


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        ({"type": "Recreate"}, "must be RollingUpdate or OnDelete"),
        ({"rollingUpdate": {"maxUnavailable": 0}}, "must be a number >= 1 or a percentage"),
        ({"rollingUpdate": {"maxUnavailable": "x%"}}, "must be a number >= 1 or a percentage"),
        ({"rollingUpdate": {"maxSurge": 1}}, "must be 0 with maxSurge"),
        ({"rollingUpdate": {"maxSurge": "x", "maxUnavailable": 0}}, "must be a number or a percentage"),
    ],
)
def test_an_update_strategy_the_lab_cannot_follow_is_named(strategy: dict[str, Any], message: str) -> None:
    with pytest.raises(LabObjectError, match=message):
        validate_object(daemonset(strategy=strategy), source="test")
