"""``lab apply`` / ``lab delete`` planning: what is kept, what is allocated, what is reported."""

from __future__ import annotations

import random
from typing import Any

import pytest

from meshctl.lab import builders as b
from meshctl.lab.actions import MarkDeleted, Remove, apply_local
from meshctl.lab.applying import plan_apply, plan_delete, resource_name
from meshctl.lab.errors import LabObjectError
from meshctl.lab.objects import ObjKey, validate_object

CIDR = "10.96.0.0/16"
Objects = dict[ObjKey, dict[str, Any]]


def apply(current: Objects, *objects: dict[str, Any]) -> tuple[Objects, list[str]]:
    valid = [validate_object(o, source="t") for o in objects]
    actions, messages = plan_apply(current, valid, service_cidr=CIDR, rng=random.Random(1), now=1.8e9)
    work = dict(current)
    for action in actions:
        apply_local(work, action)
    return work, messages


def test_first_apply_creates_namespaces_and_default_service_accounts() -> None:
    work, messages = apply({}, b.service("server", "demo", selector={"app": "s"}))
    assert messages == ["namespace/demo created", "serviceaccount/default created", "service/server created"]
    svc = work[("Service", "demo", "server")]
    assert svc["spec"]["clusterIP"] == "10.96.0.100" and svc["spec"]["clusterIPs"] == ["10.96.0.100"]
    assert svc["metadata"]["uid"] and svc["metadata"]["generation"] == 1


def test_reapply_keeps_uid_vip_and_status_and_reports_unchanged() -> None:
    work, _ = apply(
        {}, b.service("server", "demo", selector={"app": "s"}), b.service("db", "demo", selector={"a": "d"})
    )
    uid = work[("Service", "demo", "server")]["metadata"]["uid"]
    work[("Service", "demo", "server")]["status"] = {"loadBalancer": {}}
    again, messages = apply(work, b.service("server", "demo", selector={"app": "s"}))
    assert messages == ["service/server unchanged"]
    changed, messages = apply(again, b.service("server", "demo", selector={"app": "s2"}))
    svc = changed[("Service", "demo", "server")]
    assert messages == ["service/server configured"]
    assert (svc["metadata"]["uid"], svc["spec"]["clusterIP"], svc["metadata"]["generation"]) == (
        uid,
        "10.96.0.100",
        2,
    )
    assert svc["status"] == {"loadBalancer": {}}
    assert changed[("Service", "demo", "db")]["spec"]["clusterIP"] == "10.96.0.101"


@pytest.mark.parametrize("vip", ["10.97.0.1", "10.96.0.100"])
def test_cluster_ip_outside_range_or_taken_is_refused(vip: str) -> None:
    work, _ = apply({}, b.service("a", "demo", selector={"x": "y"}))
    taken = b.service("b", "demo", selector={"x": "y"})
    taken["spec"]["clusterIP"] = vip
    with pytest.raises(LabObjectError, match=r"spec\.clusterIP"):
        apply(work, taken)


def test_same_kind_from_another_group_is_refused() -> None:
    spec = {
        "gatewayClassName": "istio-waypoint",
        "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
    }
    gateway = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "g"}}
    work, _ = apply({}, {**gateway, "spec": spec})
    with pytest.raises(LabObjectError, match="already has a Gateway"):
        apply(work, {**gateway, "apiVersion": "networking.istio.io/v1", "spec": spec})


def test_resource_names_are_kubectl_style() -> None:
    assert resource_name(b.deployment("w", "d", command=["x"])) == "deployment.apps/w"
    assert resource_name(b.namespace("d")) == "namespace/d"


def test_delete_namespace_takes_its_objects_and_pods_are_deleted_gracefully() -> None:
    work, _ = apply({}, b.namespace("demo"), b.service("s", "demo", selector={"a": "b"}))
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "demo"}, "spec": {}}
    work[("Pod", "demo", "p")] = pod
    actions, messages = plan_delete(
        work, [validate_object(b.namespace("demo"), source="t")], now=1.8e9, graceful=True
    )
    assert messages == ["namespace/demo deleted"]
    assert MarkDeleted(("Pod", "demo", "p"), "2027-01-15T08:00:00Z") in actions
    assert {a.key for a in actions if isinstance(a, Remove)} == {
        ("Service", "demo", "s"),
        ("ServiceAccount", "demo", "default"),
        ("Namespace", "", "demo"),
    }
    _, missing = plan_delete({}, [validate_object(b.namespace("x"), source="t")], now=0, graceful=False)
    assert missing == ["namespace/x not found"]


def test_apply_of_pod_keeps_its_node() -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "command": ["x"]}]},
    }
    work, _ = apply({}, pod)
    work[("Pod", "default", "p")]["spec"]["nodeName"] = "node2"
    again, messages = apply(work, pod)
    assert messages == ["pod/p unchanged"] and again[("Pod", "default", "p")]["spec"]["nodeName"] == "node2"


@pytest.mark.parametrize(
    ("given", "error"),
    [
        ([], 'error looking up service account demo/web: serviceaccount "web" not found'),
        (
            [
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": "web", "namespace": "demo"},
                }
            ],
            "",
        ),
    ],
)
def test_a_pod_needs_its_service_account_as_admission_checks(given: list[dict[str, Any]], error: str) -> None:
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "demo"},
        "spec": {"serviceAccountName": "web", "containers": [{"name": "c", "command": ["true"]}]},
    }
    if error:
        with pytest.raises(LabObjectError) as info:
            apply({}, pod, *given)
        assert info.value.problem == error and info.value.field == "spec.serviceAccountName"
    else:  # the ServiceAccount may come after the Pod in the same apply
        _, messages = apply({}, pod, *given)
        assert messages[-2:] == ["pod/p created", "serviceaccount/web created"]
    default = {**pod, "spec": {"containers": pod["spec"]["containers"]}}
    _, messages = apply({}, default)
    assert messages[-1] == "pod/p created"  # the namespace's default ServiceAccount comes with it
