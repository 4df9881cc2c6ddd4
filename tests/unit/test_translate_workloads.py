"""Pods -> istio.workload.Workload, one rule per table."""

from __future__ import annotations

from typing import Any

import pytest

from mesh.api.istio.workload import workload_pb2 as pb
from tests.unit.test_translate_scenarios import (
    authz,
    endpoint_slice,
    namespace,
    pod,
    replica_set,
    service,
    translate,
    workload,
)


def one(p: dict[str, Any], *extra: dict[str, Any], **options: Any) -> pb.Workload:
    res = translate([namespace("demo"), p, *extra], **options)
    cluster = options.get("cluster_id", "Kubernetes")
    return workload(res, p["metadata"]["name"], p["metadata"]["namespace"], cluster)


def test_identity_and_addressing() -> None:
    p = pod("web-1", ip="10.244.1.5", node="node-a", sa="web")
    p["status"]["podIPs"] = [{"ip": "10.244.1.5"}, {"ip": "fd00::5"}]
    w = one(p, cluster_id="east")
    assert w.uid == "east//Pod/demo/web-1" and (w.name, w.namespace, w.cluster_id) == (
        "web-1",
        "demo",
        "east",
    )
    assert list(w.addresses) == [bytes([10, 244, 1, 5]), bytes.fromhex("fd00" + "00" * 13 + "05")]
    assert (w.node, w.service_account, w.trust_domain, w.network) == ("node-a", "web", "", "")


@pytest.mark.parametrize(
    ("sa", "trust_domain", "expected"),
    [
        ("web", "cluster.local", ("web", "")),
        ("default", "cluster.local", ("", "")),
        (None, "cluster.local", ("", "")),
        ("web", "example.org", ("web", "example.org")),
    ],
)
def test_service_account_and_trust_domain_left_out_when_default(
    sa: str | None, trust_domain: str, expected: tuple[str, str]
) -> None:
    w = one(pod("p", sa=sa), trust_domain=trust_domain)
    assert (w.service_account, w.trust_domain) == expected


@pytest.mark.parametrize(
    ("annotations", "labels", "protocol", "native"),
    [
        ({"ambient.istio.io/redirection": "enabled"}, {}, pb.HBONE, False),
        ({"ambient.istio.io/redirection": "pending"}, {}, pb.NONE, False),
        ({}, {}, pb.NONE, False),
        ({}, {"networking.istio.io/tunnel": "http"}, pb.HBONE, True),
    ],
    ids=["enrolled", "enrollment-pending", "not-enrolled", "native-hbone"],
)
def test_hbone_only_once_enrolled(
    annotations: dict[str, str], labels: dict[str, str], protocol: int, native: bool
) -> None:
    w = one(pod("p", annotations=annotations, labels=labels, enrolled=False))
    assert (w.tunnel_protocol, w.native_tunnel) == (protocol, native)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (
            {"service.istio.io/canonical-name": "cn", "app.kubernetes.io/name": "k", "app": "a"},
            ("cn", "latest"),
        ),
        ({"app.kubernetes.io/name": "k", "app": "a", "version": "v2"}, ("k", "v2")),
        ({"app": "a", "app.kubernetes.io/version": "1.2", "version": "v2"}, ("a", "1.2")),
        ({"service.istio.io/canonical-revision": "r", "version": "v2"}, ("p", "r")),
        ({}, ("p", "latest")),
    ],
)
def test_canonical_name_and_revision(labels: dict[str, str], expected: tuple[str, str]) -> None:
    w = one(pod("p", labels=labels))
    assert (w.canonical_name, w.canonical_revision) == expected


@pytest.mark.parametrize(
    ("owner", "labels", "extra", "expected"),
    [
        (("ReplicaSet", "web-5f6"), {}, [replica_set("web-5f6", deployment="web")], ("web", pb.DEPLOYMENT)),
        (("ReplicaSet", "web-5f6"), {"pod-template-hash": "5f6"}, [], ("web", pb.DEPLOYMENT)),
        (("ReplicaSet", "solo"), {}, [replica_set("solo")], ("p", pb.POD)),
        (("Job", "migrate"), {}, [], ("migrate", pb.JOB)),
        (("Job", "backup-28391234"), {}, [], ("backup", pb.CRONJOB)),
        (("StatefulSet", "db"), {}, [], ("p", pb.POD)),
        (None, {}, [], ("p", pb.POD)),
    ],
    ids=["deployment", "deployment-rs-not-cached", "bare-rs", "job", "cronjob", "statefulset", "bare-pod"],
)
def test_workload_name_and_type_from_owner(
    owner: tuple[str, str] | None,
    labels: dict[str, str],
    extra: list[dict[str, Any]],
    expected: tuple[str, int],
) -> None:
    w = one(pod("p", owner=owner, labels=labels), *extra)
    assert (w.workload_name, w.workload_type) == expected
    assert w.canonical_name == expected[0]


@pytest.mark.parametrize(
    ("phase", "ready", "deleting", "status"),
    [
        ("Running", True, False, pb.HEALTHY),
        ("Running", False, False, pb.UNHEALTHY),
        ("Running", None, False, pb.HEALTHY),  # the lab writes no conditions
        ("Pending", None, False, pb.UNHEALTHY),
        ("Running", True, True, pb.UNHEALTHY),
    ],
)
def test_status_healthy_when_running_and_ready(
    phase: str, ready: bool | None, deleting: bool, status: int
) -> None:
    p = pod("p", phase=phase, ready=ready)
    if deleting:
        p["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    assert one(p).status == status


def test_container_statuses_decide_readiness_without_conditions() -> None:
    p = pod("p", ready=None)
    p["status"]["containerStatuses"] = [{"name": "app", "ready": False, "restartCount": 0}]
    assert one(p).status == pb.UNHEALTHY


def test_host_network() -> None:
    p = pod("p")
    p["spec"]["hostNetwork"] = True
    assert one(p).network_mode == pb.HOST_NETWORK


@pytest.mark.parametrize(
    ("change", "warned"),
    [
        (lambda p: p["status"].update(podIP="", podIPs=[]), False),
        (lambda p: p["status"].update(phase="Succeeded"), False),
        (lambda p: p["status"].update(phase="Failed"), False),
        (lambda p: p["status"].update(podIP="10.0.0.300", podIPs=[{"ip": "10.0.0.300"}]), True),
    ],
    ids=["no-ip-yet", "succeeded", "failed", "bad-ip"],
)
def test_pods_without_a_workload(change: Any, warned: bool) -> None:
    p = pod("p")
    change(p)
    res = translate([p, pod("q", ip="10.244.1.6")])
    assert "Kubernetes//Pod/demo/p" not in res.addresses and "Kubernetes//Pod/demo/q" in res.addresses
    assert [(w.kind, w.name, w.field) for w in res.warnings] == (
        [("Pod", "p", "status.podIPs")] if warned else []
    )


def _ports(w: pb.Workload, key: str = "demo/web.demo.svc.cluster.local") -> list[tuple[int, int]]:
    return [(p.service_port, p.target_port) for p in w.services[key].ports]


def test_services_map_resolves_named_target_ports_per_pod() -> None:
    ports = [
        {"name": "http", "port": 80, "targetPort": "http"},
        {"name": "grpc", "port": 90, "targetPort": "grpc"},
        {"name": "raw", "port": 91, "targetPort": 9191},
        {"name": "same", "port": 92},
    ]
    p = pod("web-1", ports={"http": 8081})
    w = one(p, service("web", ports=ports), endpoint_slice("web", endpoints=[("web-1", "10.244.1.5", True)]))
    assert _ports(w) == [(80, 8081), (91, 9191), (92, 92)]  # grpc: the pod has no such port


@pytest.mark.parametrize(
    ("ready", "ref_uid", "listed"),
    [
        (True, "", True),
        (None, "", True),
        (False, "", False),
        (True, "uid-web-1", True),
        (True, "uid-old", False),
    ],
    ids=["ready", "ready-unset", "not-ready", "same-uid", "stale-uid"],
)
def test_pod_in_service_map_only_as_ready_endpoint(ready: bool | None, ref_uid: str, listed: bool) -> None:
    es = endpoint_slice("web", endpoints=[("web-1", "10.244.1.5", ready)])
    if ref_uid:
        es["endpoints"][0]["targetRef"]["uid"] = ref_uid
    w = one(pod("web-1"), service("web"), es)
    assert ("demo/web.demo.svc.cluster.local" in w.services) is listed


def test_endpoint_slice_of_unknown_service_or_without_pod_ref_is_ignored() -> None:
    orphan = endpoint_slice("gone", endpoints=[("web-1", "10.244.1.5", True)])
    external = endpoint_slice("web", endpoints=[("web-1", "10.244.1.5", True)])
    del external["endpoints"][0]["targetRef"]
    assert dict(one(pod("web-1"), service("web"), orphan, external).services) == {}


def test_selector_policies_listed_sorted_root_namespace_ones_included() -> None:
    web = {"matchLabels": {"app": "web"}}
    policies = [
        authz("z-web", selector=web),
        authz("a-web", selector=web),
        authz("db-only", selector={"matchLabels": {"app": "db"}}),
        authz("ns-wide"),
        authz("mesh-web", "istio-system", selector=web),
        authz("other-ns-web", "other", selector=web),
    ]
    w = one(pod("p", labels={"app": "web"}), *policies)
    assert list(w.authorization_policies) == ["demo/a-web", "demo/z-web", "istio-system/mesh-web"]


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"app": "web", "tier": "front"}, ["demo/every-pod", "demo/front-web"]),
        ({"app": "web"}, ["demo/every-pod"]),
        ({"tier": "front"}, ["demo/every-pod"]),
        ({}, ["demo/every-pod"]),
    ],
)
def test_every_selector_label_must_match(labels: dict[str, str], expected: list[str]) -> None:
    policies = [
        authz("front-web", selector={"matchLabels": {"tier": "front", "app": "web"}}),
        authz("every-pod", selector={}),
    ]
    assert list(one(pod("p", labels=labels), *policies).authorization_policies) == expected
