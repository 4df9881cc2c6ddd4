"""``meshctl install|upgrade|uninstall`` against a Kubernetes API through the real ``kubernetes``
client. The API server is ``kmock`` (a test double of the Kubernetes API server, here answering
each server-side apply with the object it was sent and each delete with success, and serving the
node agents' DaemonSet as terminating, then gone): the tests check the calls meshctl makes, in
which order, with which field manager, content type and body. meshctl's client is synchronous, so
it runs in a thread while the test double serves on the test's event loop."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator
from typing import Any

import kmock
import pytest
from kubernetes import client

from meshctl.install import run
from meshctl.manifests import install_order, render

pytestmark = pytest.mark.kmock(cls=kmock.KubernetesScaffold)

AGENT_DS = "/apis/apps/v1/namespaces/istio-system/daemonsets/istio-cni-node"


@pytest.fixture
def server(kmock: kmock.KubernetesScaffold) -> kmock.KubernetesScaffold:
    return kmock


@pytest.fixture
def api(server: kmock.KubernetesScaffold) -> Iterator[client.ApiClient]:
    api = client.ApiClient(client.Configuration(host=str(server.url).rstrip("/")))
    yield api
    api.close()  # type: ignore[no-untyped-call]


def args(action: str, **extra: Any) -> argparse.Namespace:
    defaults: dict[str, Any] = {"overlay": "base", "set": [], "kubeconfig": None, "context": None}
    if action == "uninstall":
        defaults |= {"purge": False, "timeout": 10.0}
    else:
        defaults |= {"dry_run": False, "output": "yaml"}
    return argparse.Namespace(action=action, **(defaults | extra))


@pytest.mark.parametrize("action", ["install", "upgrade"])
async def test_install_applies_every_object_server_side_in_dependency_order(
    server: kmock.KubernetesScaffold, api: client.ApiClient, action: str, capsys: pytest.CaptureFixture[str]
) -> None:
    server[kmock.method.PATCH] << (lambda request: request.data)
    assert await asyncio.to_thread(run, args(action, set=["image=registry.example/mesh:1.2"]), api=api) == 0
    patches = list(server[kmock.method.PATCH])
    expected = install_order(render(image="registry.example/mesh:1.2"))
    assert [p.data for p in patches] == expected  # every object, whole, namespaces and CRDs first
    assert [p.data["kind"] for p in patches][:2] == ["Namespace", "CustomResourceDefinition"]
    assert all(p.params == {"fieldManager": "meshctl", "force": "true"} for p in patches)
    assert {p.headers["Content-Type"] for p in patches} == {"application/apply-patch+yaml"}
    assert patches[0].url.path == "/api/v1/namespaces/istio-system"
    assert "/apis/apps/v1/namespaces/istio-system/daemonsets/ztunnel" in [p.url.path for p in patches]
    verb = "upgraded" if action == "upgrade" else "applied"
    assert f"{verb} DaemonSet istio-system/istio-cni-node" in capsys.readouterr().out


async def test_a_refused_apply_names_the_object_and_what_to_do(
    server: kmock.KubernetesScaffold, api: client.ApiClient
) -> None:
    server[kmock.method.PATCH] << 403 << {"kind": "Status", "code": 403, "message": "forbidden: no rights"}
    with pytest.raises(
        Exception, match=r"refused Namespace istio-system: 403 forbidden: no rights.*cluster-admin"
    ):
        await asyncio.to_thread(run, args("install"), api=api)


@pytest.mark.parametrize("purge", [False, True])
async def test_uninstall_removes_the_node_agents_first_and_waits_for_them(
    server: kmock.KubernetesScaffold, api: client.ApiClient, purge: bool
) -> None:
    terminating = {"kind": "DaemonSet", "metadata": {"name": "istio-cni-node", "deletionTimestamp": "now"}}
    served = [0]

    def agent_daemonset(_: Any) -> Any:
        served[0] += 1
        return terminating if served[0] == 1 else 404  # its agents are releasing pods, then it is gone

    server[f"get {AGENT_DS}"] << agent_daemonset
    server[kmock.method.DELETE] << {"kind": "Status", "status": "Success"}
    assert await asyncio.to_thread(run, args("uninstall", purge=purge), api=api) == 0
    deletes = [r.url.path for r in server[kmock.method.DELETE]]
    assert deletes[0] == AGENT_DS and served[0] == 2  # deleted, then waited for until gone
    rest = [o for o in reversed(install_order(render())) if o["metadata"]["name"] != "istio-cni-node"]
    kept = [] if purge else ["CustomResourceDefinition"]
    assert len(deletes) == 1 + len([o for o in rest if o["kind"] not in kept])
    assert deletes[-1] == "/api/v1/namespaces/istio-system"  # the namespace last
    assert all(r.data == {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground"}
               for r in server[kmock.method.DELETE])  # fmt: skip
    crd = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/localratelimits.policy.mesh.dev"
    assert (crd in deletes) is purge
