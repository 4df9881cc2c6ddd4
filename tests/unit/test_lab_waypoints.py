"""The lab deploys waypoints: a Gateway of class istio-waypoint gets its ServiceAccount, Deployment,
Service and status, as istiod's deployment controller makes them (pure planning, no processes)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from meshctl.lab import builders as b
from meshctl.lab.actions import apply_local
from meshctl.lab.controllers import plan
from meshctl.lab.errors import LabError
from meshctl.lab.mesh import waypoint_template
from meshctl.lab.podspec import container_argv, container_env
from meshctl.lab.settings import LabSettings, build_settings
from tests.unit.test_lab_controllers import NODES, NOW, Objects, of_kind, run_pods, store

TEMPLATE = waypoint_template(build_settings(lab_id="t1", mesh=True))


def gateway(
    name: str = "waypoint", cls: str = "istio-waypoint", api: str = "gateway.networking.k8s.io/v1"
) -> dict[str, Any]:
    return {
        "apiVersion": api,
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {
            "gatewayClassName": cls,
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    }


def settle(objects: Objects, rng: random.Random) -> Objects:
    for _ in range(6):
        actions = plan(objects, nodes=NODES, rng=rng, now=NOW, waypoints=TEMPLATE)
        if not actions:
            return objects
        for action in actions:
            apply_local(objects, action)
    raise AssertionError("planning does not reach a fixpoint")


def test_a_waypoint_gateway_gets_its_account_deployment_service_and_pod() -> None:
    objects = settle(store(b.namespace("demo"), gateway()), random.Random(1))
    gw = objects[("Gateway", "demo", "waypoint")]
    account = objects[("ServiceAccount", "demo", "waypoint")]
    deployment = objects[("Deployment", "demo", "waypoint")]
    service = objects[("Service", "demo", "waypoint")]
    for owned in (account, deployment, service):
        (ref,) = owned["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["uid"], ref["controller"]) == ("Gateway", gw["metadata"]["uid"], True)
        assert owned["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"] == "waypoint"
    assert service["spec"]["clusterIP"].startswith("10.96.")
    assert [(p["name"], p["port"], p["appProtocol"]) for p in service["spec"]["ports"]] == [
        ("status-port", 15021, "tcp"),
        ("mesh", 15008, "hbone"),
    ]
    (pod,) = of_kind(objects, "Pod")
    assert pod["spec"]["serviceAccountName"] == "waypoint"
    labels = pod["metadata"]["labels"]
    assert (
        labels["istio.io/dataplane-mode"] == "none"
        and labels["service.istio.io/canonical-name"] == "waypoint"
    )
    (container,) = pod["spec"]["containers"]
    env = container_env(pod, container, pod_ip="10.244.1.9", host_ip="10.240.0.11", bin_dirs=["/venv/bin"])
    assert {
        k: env[k] for k in ("POD_NAME", "POD_NAMESPACE", "INSTANCE_IP", "SERVICE_ACCOUNT", "WAYPOINT_NAME")
    } == {
        "POD_NAME": pod["metadata"]["name"],
        "POD_NAMESPACE": "demo",
        "INSTANCE_IP": "10.244.1.9",
        "SERVICE_ACCOUNT": "waypoint",
        "WAYPOINT_NAME": "waypoint",
    }
    assert container_argv(container, env) == (
        "waypoint",
        "--xds-address",
        "istiod.istio-system.svc:15012",
        "--root-cert",
        "/var/run/secrets/istio/root-cert.pem",
        "--token-file",
        "/var/run/secrets/tokens/istio-token",
        "--trust-domain",
        "cluster.local",
        "--cluster-id",
        "Kubernetes",
    )


def test_the_gateway_is_programmed_with_its_addresses_once_a_pod_is_ready() -> None:
    rng = random.Random(2)
    objects = settle(store(b.namespace("demo"), gateway()), rng)
    status = objects[("Gateway", "demo", "waypoint")]["status"]
    assert [(c["type"], c["status"]) for c in status["conditions"]] == [
        ("Accepted", "True"),
        ("Programmed", "False"),
    ]
    assert status["addresses"] == []
    run_pods(objects)
    objects = settle(objects, rng)
    status = objects[("Gateway", "demo", "waypoint")]["status"]
    assert [(c["type"], c["status"]) for c in status["conditions"]] == [
        ("Accepted", "True"),
        ("Programmed", "True"),
    ]
    ip = objects[("Service", "demo", "waypoint")]["spec"]["clusterIP"]
    assert status["addresses"] == [
        {"type": "Hostname", "value": "waypoint.demo.svc.cluster.local"},
        {"type": "IPAddress", "value": ip},
    ]
    assert not plan(objects, nodes=NODES, rng=rng, now=NOW + 60, waypoints=TEMPLATE)  # settled: no churn


def test_deleting_the_gateway_removes_everything_it_owned() -> None:
    rng = random.Random(3)
    objects = settle(store(b.namespace("demo"), gateway()), rng)
    del objects[("Gateway", "demo", "waypoint")]
    objects = settle(objects, rng)
    assert not [
        k
        for k in objects
        if k[0] in ("ServiceAccount", "Deployment", "Service", "ReplicaSet") and k[2] == "waypoint"
    ]
    assert all(p["metadata"].get("deletionTimestamp") for p in of_kind(objects, "Pod"))


@pytest.mark.parametrize(
    "other",
    [gateway(cls="istio"), gateway(api="networking.istio.io/v1")],
    ids=["another-class", "istio-networking-gateway"],
)
def test_other_gateways_are_left_to_their_controllers(other: dict[str, Any]) -> None:
    objects = settle(store(b.namespace("demo"), other), random.Random(4))
    assert not of_kind(objects, "Deployment") and "status" not in objects[("Gateway", "demo", "waypoint")]


def test_without_the_mesh_no_waypoint_is_deployed() -> None:
    objects = store(b.namespace("demo"), gateway())
    assert not [
        a for a in plan(objects, nodes=NODES, rng=random.Random(5), now=NOW) if "Deployment" in str(a)
    ]


def test_each_waypoint_pod_mounts_its_service_account_token_and_the_mesh_root_as_on_kubernetes() -> None:
    objects = settle(store(b.namespace("demo"), gateway()), random.Random(3))
    spec = objects[("Deployment", "demo", "waypoint")]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    (source,) = volumes["istio-token"]["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "istio-ca"
    assert volumes["istiod-ca-cert"]["configMap"] == {"name": "istio-ca-root-cert"}
    assert spec["serviceAccountName"] == "waypoint"
    mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert mounts == {"istio-token": "/var/run/secrets/tokens", "istiod-ca-cert": "/var/run/secrets/istio"}


@pytest.mark.parametrize(
    ("mode", "extra"),
    [("BASE", ()), ("MERGE_SLASHES", ("--path-normalization", "MERGE_SLASHES"))],
)
def test_the_mesh_path_normalization_reaches_each_waypoint(mode: str, extra: tuple[str, ...]) -> None:
    template = waypoint_template(build_settings(lab_id="t1", mesh=True, path_normalization=mode))
    objects = store(b.namespace("demo"), gateway())
    for _ in range(6):
        for action in plan(objects, nodes=NODES, rng=random.Random(1), now=NOW, waypoints=template):
            apply_local(objects, action)
    (container,) = objects[("Deployment", "demo", "waypoint")]["spec"]["template"]["spec"]["containers"]
    assert tuple(container["args"][10:]) == extra


def test_lab_settings_keep_the_path_normalization_and_refuse_unknown_modes() -> None:
    settings = build_settings(lab_id="pn", mesh=True, path_normalization="DECODE_AND_MERGE_SLASHES")
    assert LabSettings.from_dict(settings.to_dict()).path_normalization == "DECODE_AND_MERGE_SLASHES"
    with pytest.raises(LabError, match="MERGE"):
        build_settings(lab_id="pn", mesh=True, path_normalization="MERGE")
