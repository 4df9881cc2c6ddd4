"""istiod_lite as the waypoints' deployment controller on Kubernetes: a Gateway of class
istio-waypoint gets its ServiceAccount, Deployment and Service through the API, owned by the
Gateway (the root ConfigMap its pods mount is the namespace controller's: test_root_cert_kube.py);
a hand-edited Deployment is put back; the Gateway is Programmed with its addresses once a pod is
ready. The API server is ``kmock``, a test double of the Kubernetes API
server (as in test_kube_status.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import kmock
import pytest
from kubernetes import client

from istiod_lite.sources.kube_waypoints import KubeWaypointDeployer, KubeWaypointSettings
from istiod_lite.sources.objects import parse_object

pytestmark = pytest.mark.kmock(cls=kmock.KubernetesEmulator)

RESOURCES = {
    "v1/serviceaccounts": "ServiceAccount",
    "v1/services": "Service",
    "apps/v1/deployments": "Deployment",
}
GATEWAY = {
    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
    "metadata": {"name": "waypoint", "namespace": "shop", "uid": "gw-uid-1", "generation": 2,
                 "labels": {"istio.io/waypoint-for": "service"}},
    "spec": {"gatewayClassName": "istio-waypoint",
             "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
}  # fmt: skip


@pytest.fixture
def api(kmock: kmock.KubernetesEmulator) -> Iterator[client.ApiClient]:
    for resource, kind in RESOURCES.items():
        kmock.resources[resource] = kmock.ResourceInfo(kind=kind, namespaced=True)
    api = client.ApiClient(client.Configuration(host=str(kmock.url).rstrip("/")))
    yield api
    api.close()  # type: ignore[no-untyped-call]


def stored(server: kmock.KubernetesEmulator, resource: str) -> dict[str, Any]:
    return dict(server.objects[resource, "shop", "waypoint"])


async def test_a_waypoint_gateway_gets_its_objects_owned_by_it(
    kmock: kmock.KubernetesEmulator, api: client.ApiClient
) -> None:
    deployer = KubeWaypointDeployer(api, KubeWaypointSettings(image="mesh:1.0"))
    statuses = await asyncio.to_thread(deployer.sync, [parse_object(GATEWAY)])
    for resource in RESOURCES:
        obj = stored(kmock, resource)
        (owner,) = obj["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
            "Gateway",
            "waypoint",
            "gw-uid-1",
            True,
        )
        assert obj["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"] == "waypoint"
    pod = stored(kmock, "apps/v1/deployments")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "mesh:1.0" and container["readinessProbe"]["httpGet"]["port"] == 15021
    assert container["securityContext"]["runAsNonRoot"] is True
    args = container["args"]
    assert args[args.index("--xds-address") + 1] == "istiod.istio-system.svc:15012"
    assert args[args.index("--token-file") + 1] == "/var/run/secrets/tokens/istio-token"
    assert pod["serviceAccountName"] == "waypoint"
    token = pod["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "istio-ca"
    assert pod["volumes"][1] == {"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}}
    (status,) = statuses.values()
    assert [(c["type"], c["status"]) for c in status["conditions"]] == [
        ("Accepted", "True"),
        ("Programmed", "False"),
    ]
    assert status["conditions"][0]["observedGeneration"] == 2 and status["addresses"] == []


async def test_a_drifted_deployment_is_put_back_and_a_ready_one_programs_the_gateway(
    kmock: kmock.KubernetesEmulator, api: client.ApiClient
) -> None:
    deployer = KubeWaypointDeployer(api, KubeWaypointSettings(image="mesh:1.0"))
    gateway = parse_object(GATEWAY)
    await asyncio.to_thread(deployer.sync, [gateway])
    key = ("apps/v1/deployments", "shop", "waypoint")
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    patch = {"spec": {"replicas": 7}}  # by hand: kubectl scale
    await asyncio.to_thread(apps.patch_namespaced_deployment, "waypoint", "shop", patch)
    await asyncio.to_thread(
        apps.patch_namespaced_deployment_status, "waypoint", "shop", {"status": {"readyReplicas": 1}}
    )
    await asyncio.to_thread(
        core.patch_namespaced_service, "waypoint", "shop", {"spec": {"clusterIP": "10.96.0.44"}}
    )
    assert dict(kmock.objects[key])["spec"]["replicas"] == 7
    statuses = await asyncio.to_thread(deployer.sync, [gateway])
    assert dict(kmock.objects[key])["spec"]["replicas"] == 1  # put back
    (status,) = statuses.values()
    assert [(c["type"], c["status"]) for c in status["conditions"]] == [
        ("Accepted", "True"),
        ("Programmed", "True"),
    ]
    assert status["addresses"] == [
        {"type": "Hostname", "value": "waypoint.shop.svc.cluster.local"},
        {"type": "IPAddress", "value": "10.96.0.44"},
    ]


async def test_a_gateway_of_another_class_gets_nothing(
    kmock: kmock.KubernetesEmulator, api: client.ApiClient
) -> None:
    other = {**GATEWAY, "spec": {**GATEWAY["spec"], "gatewayClassName": "istio"}}  # type: ignore[dict-item]
    deployer = KubeWaypointDeployer(api, KubeWaypointSettings(image="mesh:1.0"))
    assert await asyncio.to_thread(deployer.sync, [parse_object(other)]) == {}
    assert not [k for k in kmock.objects if k[0] in RESOURCES]
