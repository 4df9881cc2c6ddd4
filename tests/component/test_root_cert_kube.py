"""The istio-ca-root-cert ConfigMap of every namespace on Kubernetes: two istiod_lite replicas, each
with its own API client, namespace informer (KubeSource) and ConfigMap watch; only the leader
creates and repairs, and the next leader puts back what went meanwhile. The API server is
``kmock``, a test double of the Kubernetes API server (list/watch/create/patch in process), taught
the cluster-scoped Namespaces (kmock_paths.py)."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import kmock
import pytest
import structlog
from kubernetes import client

from istiod_lite.root_cert import ROOT_CONFIGMAP, RootCertController
from istiod_lite.sources.kube import KubeSource
from istiod_lite.sources.kube_root_cert import RESOURCE, KubeRootCertStore
from istiod_lite.view import Informers
from mesh.rt.election import Leadership, run_while_leading
from mesh.rt.kube.watch import Resource, WatchSettings
from mesh.testing.polling import wait_until
from tests.component.kmock_paths import serve_namespaces

pytestmark = [pytest.mark.kmock(cls=kmock.KubernetesEmulator), pytest.mark.timeout(30)]

FAST = WatchSettings(backoff_initial=0.02, backoff_max=0.2, read_timeout=10.0, connect_timeout=2.0)
CONFIGMAPS = "v1/configmaps"
NAMESPACES = (Resource("Namespace", "", "v1", "namespaces"),)
ROOT = "-----BEGIN CERTIFICATE-----\nTHE ROOT\n-----END CERTIFICATE-----\n"


@dataclass
class Replica:
    """One istiod_lite's namespace controller and what feeds it."""

    name: str
    api: client.ApiClient
    leadership: Leadership
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


@pytest.fixture
async def replicas(
    kmock: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[list[Replica]]:
    serve_namespaces(kmock, monkeypatch)
    kmock.resources[CONFIGMAPS] = kmock.ResourceInfo(kind="ConfigMap", namespaced=True)
    for name in ("istio-system", "shop", "kube-public"):
        kmock.objects["v1/namespaces", None, name] = namespace(name)
    made = []
    for name in ("istiod-a", "istiod-b"):
        api = client.ApiClient(client.Configuration(host=str(kmock.url).rstrip("/")))
        api.user_agent = name
        informers = Informers()
        leadership = Leadership(lease="istiod-lite-leader", identity=name, logger=structlog.get_logger())
        store = KubeRootCertStore(api, settings=FAST, rng=random.Random(name))
        controller = RootCertController(
            store,
            ROOT,
            namespaces=lambda i=informers: i.current("Namespace").values(),  # type: ignore[misc]
            may_write=lambda ls=leadership: ls.is_leader,  # type: ignore[misc]
        )
        informers.on_change(controller.poke)
        source = KubeSource(api, informers.sink("kubernetes"), resources=NAMESPACES, settings=FAST)
        replica = Replica(name, api, leadership)
        replica.tasks = [
            asyncio.create_task(source.run()),
            asyncio.create_task(run_while_leading(leadership, controller.run)),
        ]
        made.append(replica)
    yield made
    for replica in made:
        for task in replica.tasks:
            task.cancel()
        await asyncio.gather(*replica.tasks, return_exceptions=True)
        replica.api.close()  # type: ignore[no-untyped-call]
    assert not [t.name for t in threading.enumerate() if t.name.startswith("watch-")]


def root_of(server: kmock.KubernetesEmulator, ns: str) -> Any:
    try:
        found = server.objects[CONFIGMAPS, ns, ROOT_CONFIGMAP]
    except KeyError:
        return None
    return None if found.deleted else (dict(found).get("data") or {}).get("root-cert.pem")


def writers(server: kmock.KubernetesEmulator) -> list[str]:
    """Who created or patched a root ConfigMap, in order (the clients' User-Agent)."""
    return [
        str(r.headers.get("User-Agent"))
        for r in server
        if "/configmaps" in r.url.path and str(r.method.value) in ("POST", "PATCH")
    ]


async def test_the_leader_keeps_the_root_in_every_namespace(
    kmock: kmock.KubernetesEmulator, replicas: list[Replica]
) -> None:
    leader, _ = replicas
    leader.leadership.acquired()
    await wait_until(lambda: root_of(kmock, "istio-system") == root_of(kmock, "shop") == ROOT, what="both")
    stored = dict(kmock.objects[CONFIGMAPS, "shop", ROOT_CONFIGMAP])
    assert stored["metadata"]["labels"] == {"istio.io/config": "true"}
    assert root_of(kmock, "kube-public") is None  # Kubernetes' own, skipped as Istio does
    watch = next(r for r in kmock if "/configmaps" in r.url.path and r.params.get("watch") == "true")
    assert watch.params["fieldSelector"] == RESOURCE.field_selector == f"metadata.name={ROOT_CONFIGMAP}"

    await kmock.post("/api/v1/namespaces", json=namespace("late"))  # created later
    await wait_until(lambda: root_of(kmock, "late") == ROOT, what="the new namespace gets it")

    path = f"/api/v1/namespaces/shop/configmaps/{ROOT_CONFIGMAP}"  # by hand: another root, a key of ours
    await kmock.patch(path, json={"data": {"root-cert.pem": "NOT THE ROOT", "mine": "kept"}})
    await wait_until(lambda: root_of(kmock, "shop") == ROOT, what="the changed one is put back")
    assert dict(kmock.objects[CONFIGMAPS, "shop", ROOT_CONFIGMAP])["data"]["mine"] == "kept"

    await kmock.delete(f"/api/v1/namespaces/late/configmaps/{ROOT_CONFIGMAP}")
    await wait_until(lambda: root_of(kmock, "late") == ROOT, what="the deleted one is put back")
    ours = [w for w in writers(kmock) if w.startswith("istiod")]
    assert ours == ["istiod-a"] * 5  # istio-system, shop, late, shop again, late again: the leader only


async def test_the_next_leader_puts_back_what_went_meanwhile(
    kmock: kmock.KubernetesEmulator, replicas: list[Replica]
) -> None:
    first, second = replicas
    first.leadership.acquired()
    await wait_until(lambda: root_of(kmock, "shop") == ROOT, what="the first leader writes")
    first.leadership.lost("stopping")
    await kmock.delete(f"/api/v1/namespaces/shop/configmaps/{ROOT_CONFIGMAP}")
    await asyncio.sleep(0.3)
    assert root_of(kmock, "shop") is None  # no one leads: no one writes
    second.leadership.acquired()
    await wait_until(lambda: root_of(kmock, "shop") == ROOT, what="the next leader puts it back")
    assert [w for w in writers(kmock) if w.startswith("istiod")] == ["istiod-a", "istiod-a", "istiod-b"]
