"""The lab's controllers as data: Deployments -> ReplicaSets -> Pods, garbage collection, EndpointSlices,
statuses, and that planning reaches a fixpoint (no writes once the store matches)."""

from __future__ import annotations

import random
from typing import Any

from meshctl.lab import builders as b
from meshctl.lab.actions import MarkDeleted, Put, Remove, SetStatus, apply_local
from meshctl.lab.applying import plan_apply
from meshctl.lab.controllers import plan
from meshctl.lab.objects import ObjKey, validate_object

NODES = ("node1", "node2")
NOW = 1_800_000_000.0
Objects = dict[ObjKey, dict[str, Any]]


def store(*objects: dict[str, Any]) -> Objects:
    valid = [validate_object(o, source="test") for o in objects]
    actions, _ = plan_apply({}, valid, service_cidr="10.96.0.0/16", rng=random.Random(1), now=NOW)
    work: Objects = {}
    for action in actions:
        apply_local(work, action)
    return work


def settle(objects: Objects, rng: random.Random) -> Objects:
    for _ in range(5):
        actions = plan(objects, nodes=NODES, rng=rng, now=NOW)
        if not actions:
            return objects
        for action in actions:
            apply_local(objects, action)
    raise AssertionError("planning does not reach a fixpoint")


def of_kind(objects: Objects, kind: str) -> list[dict[str, Any]]:
    return [o for (k, _, _), o in sorted(objects.items()) if k == kind]


def run_pods(objects: Objects, *, ready: bool = True) -> None:
    """What the runtime does: give pods an IP and a Running/Ready status."""
    for i, pod in enumerate(of_kind(objects, "Pod"), start=2):
        pod["status"] = {
            "phase": "Running",
            "podIP": f"10.244.{pod['spec']['nodeName'][-1]}.{i}",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        }


def test_deployment_creates_replicaset_and_spread_pods_owned_as_on_kubernetes() -> None:
    objects = settle(
        store(b.namespace("demo"), b.deployment("web", "demo", command=["x"], replicas=3)), random.Random(2)
    )
    (deploy,) = of_kind(objects, "Deployment")
    (rs,) = of_kind(objects, "ReplicaSet")
    pods = of_kind(objects, "Pod")
    assert rs["metadata"]["ownerReferences"][0]["uid"] == deploy["metadata"]["uid"]
    template_hash = rs["metadata"]["labels"]["pod-template-hash"]
    assert rs["metadata"]["name"] == f"web-{template_hash}"
    assert len(pods) == 3 and all(p["metadata"]["name"].startswith(f"web-{template_hash}-") for p in pods)
    assert all(p["metadata"]["ownerReferences"][0]["uid"] == rs["metadata"]["uid"] for p in pods)
    assert sorted(p["spec"]["nodeName"] for p in pods) == ["node1", "node1", "node2"]
    assert all(
        p["spec"]["serviceAccountName"] == "default" and p["status"]["phase"] == "Pending" for p in pods
    )


def test_template_change_replaces_the_replicaset_and_its_pods() -> None:
    rng = random.Random(3)
    objects = settle(store(b.namespace("demo"), b.deployment("web", "demo", command=["x"])), rng)
    old_pod = of_kind(objects, "Pod")[0]
    key = ("Deployment", "demo", "web")
    objects[key]["spec"]["template"]["spec"]["containers"][0]["command"] = ["y"]
    actions = plan(objects, nodes=NODES, rng=rng, now=NOW)
    assert any(isinstance(a, Remove) and a.key[0] == "ReplicaSet" for a in actions)
    created = [a.obj for a in actions if isinstance(a, Put) and a.obj["kind"] == "Pod"]
    assert [p["spec"]["containers"][0]["command"] for p in created] == [["y"]]
    deleted = [a.key for a in actions if isinstance(a, MarkDeleted)]
    assert deleted == [("Pod", "demo", old_pod["metadata"]["name"])]


def _rolled(objects: Objects, rng: random.Random, *, ready: bool) -> tuple[int, int]:
    """One planning pass (pods run, ready or not); (ready pods of the new template, of the old)."""
    for action in plan(objects, nodes=NODES, rng=rng, now=NOW):
        apply_local(objects, action)
    live = [p for p in of_kind(objects, "Pod") if not p["metadata"].get("deletionTimestamp")]
    for pod in live:
        if "status" not in pod or pod["status"].get("phase") == "Pending":
            pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": str(ready)}]}
    for key in [k for k, o in objects.items() if k[0] == "Pod" and o["metadata"].get("deletionTimestamp")]:
        del objects[key]  # the runtime stopped it
    new = sum(p["spec"]["containers"][0]["command"] == ["y"] for p in live)
    return new, len(live) - new


def test_a_rolling_update_keeps_every_replica_while_the_new_ones_become_ready() -> None:
    rng = random.Random(6)
    deploy = b.deployment("istiod", "demo", command=["x"], replicas=2)
    deploy["spec"]["strategy"] = {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    objects = settle(store(b.namespace("demo"), deploy), rng)
    run_pods(objects)
    objects[("Deployment", "demo", "istiod")]["spec"]["template"]["spec"]["containers"][0]["command"] = ["y"]
    steps = [_rolled(objects, rng, ready=False) for _ in range(3)]
    assert steps == [(1, 2), (1, 2), (1, 2)]  # one surge pod; no old one goes while it is not ready
    for pod in of_kind(objects, "Pod"):
        pod["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    steps = [_rolled(objects, rng, ready=True) for _ in range(6)]
    assert all(new + old <= 3 and new + old >= 2 for new, old in steps), steps
    assert steps[-1] == (2, 0) and len(of_kind(objects, "ReplicaSet")) == 1


def test_recreate_removes_the_old_pods_before_the_new_ones_start() -> None:
    rng = random.Random(7)
    deploy = b.deployment("web", "demo", command=["x"], replicas=2)
    deploy["spec"]["strategy"] = {"type": "Recreate"}
    objects = settle(store(b.namespace("demo"), deploy), rng)
    run_pods(objects)
    objects[("Deployment", "demo", "web")]["spec"]["template"]["spec"]["containers"][0]["command"] = ["y"]
    steps = [_rolled(objects, rng, ready=True) for _ in range(6)]
    assert steps[0] == (0, 0) and steps[-1] == (2, 0), steps  # the old pods are deleted first
    assert all(new == 0 or old == 0 for new, old in steps), steps  # never both


def test_scale_down_deletes_not_ready_pods_first() -> None:
    rng = random.Random(4)
    objects = settle(store(b.namespace("demo"), b.deployment("web", "demo", command=["x"], replicas=3)), rng)
    run_pods(objects)
    laggard = of_kind(objects, "Pod")[1]
    laggard["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    for rs in of_kind(objects, "ReplicaSet"):
        rs["spec"]["replicas"] = 2
    objects[("Deployment", "demo", "web")]["spec"]["replicas"] = 2
    deleted = [a.key for a in plan(objects, nodes=NODES, rng=rng, now=NOW) if isinstance(a, MarkDeleted)]
    assert deleted == [("Pod", "demo", laggard["metadata"]["name"])]


def test_deleting_a_deployment_collects_its_replicaset_and_pods() -> None:
    rng = random.Random(5)
    objects = settle(store(b.namespace("demo"), b.deployment("web", "demo", command=["x"], replicas=2)), rng)
    del objects[("Deployment", "demo", "web")]
    actions = plan(objects, nodes=NODES, rng=rng, now=NOW)
    assert [type(a).__name__ for a in actions] == ["Remove", "MarkDeleted", "MarkDeleted"]


def test_pods_in_a_deleted_namespace_are_deleted() -> None:
    rng = random.Random(6)
    objects = settle(store(b.namespace("demo"), b.deployment("web", "demo", command=["x"])), rng)
    del objects[("Namespace", "", "demo")]
    assert any(isinstance(a, MarkDeleted) for a in plan(objects, nodes=NODES, rng=rng, now=NOW))


def test_endpoint_slice_lists_ready_selected_pods_with_resolved_ports() -> None:
    rng = random.Random(7)
    objects = store(
        b.namespace("demo"),
        b.httpecho_deployment("server", "demo", replicas=2, port=9090),
        b.deployment("other", "demo", command=["x"]),
        b.service("server", "demo", selector={"app": "server"}, target_port=9090),
    )
    objects = settle(objects, rng)
    run_pods(objects)
    objects = settle(objects, rng)
    (eps,) = of_kind(objects, "EndpointSlice")
    assert eps["metadata"]["labels"]["kubernetes.io/service-name"] == "server"
    assert eps["ports"] == [{"name": "http", "port": 9090, "protocol": "TCP"}]
    servers = [p for p in of_kind(objects, "Pod") if p["metadata"]["labels"]["app"] == "server"]
    assert sorted(e["addresses"][0] for e in eps["endpoints"]) == sorted(
        p["status"]["podIP"] for p in servers
    )
    assert all(e["conditions"]["ready"] and e["targetRef"]["kind"] == "Pod" for e in eps["endpoints"])
    statuses = [o["status"] for o in of_kind(objects, "Deployment")]
    assert {k: statuses[1][k] for k in ("replicas", "readyReplicas")} == {"replicas": 2, "readyReplicas": 2}

    del objects[("Service", "demo", "server")]
    actions = plan(objects, nodes=NODES, rng=rng, now=NOW)
    assert [a.key for a in actions if isinstance(a, Remove)] == [
        ("EndpointSlice", "demo", eps["metadata"]["name"])
    ]


def test_not_ready_pods_are_listed_as_not_ready() -> None:
    rng = random.Random(8)
    objects = settle(
        store(
            b.namespace("demo"),
            b.httpecho_deployment("s", "demo"),
            b.service("s", "demo", selector={"app": "s"}),
        ),
        rng,
    )
    run_pods(objects, ready=False)
    objects = settle(objects, rng)
    (eps,) = of_kind(objects, "EndpointSlice")
    assert [e["conditions"]["ready"] for e in eps["endpoints"]] == [False]


def test_bare_pods_are_scheduled() -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "solo", "namespace": "demo"},
        "spec": {"containers": [{"name": "c", "command": ["x"]}]},
    }
    objects = store(b.namespace("demo"), pod)
    actions = plan(objects, nodes=NODES, rng=random.Random(9), now=NOW)
    assert [(type(a).__name__, getattr(a, "node", None)) for a in actions] == [("Schedule", "node1")]


def test_status_only_changes_are_set_status_actions() -> None:
    rng = random.Random(10)
    objects = settle(store(b.namespace("demo"), b.deployment("web", "demo", command=["x"])), rng)
    run_pods(objects)
    actions = plan(objects, nodes=NODES, rng=rng, now=NOW)
    assert actions and all(isinstance(a, SetStatus) for a in actions)
