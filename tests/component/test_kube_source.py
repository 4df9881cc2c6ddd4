"""The Kubernetes source (list, watch, bookmarks, 410 re-list, reconnect) via the real ``kubernetes`` client.

The API server here is ``kmock``: a test double of the Kubernetes API server (an in-process HTTP
server with the API's paths, list/watch streaming and errors), not a real cluster. Its watches
replay every stored object as ADDED and ignore resourceVersion; the faults a real server
produces -- an expired resourceVersion (410 Gone, as an ERROR event and as an HTTP status), a
watch stream cut mid-way, a 500 ERROR event -- are scripted per test. Cutting a stream uses
kmock's (private, "use at your own risk") handle on the raw aiohttp request.

kmock 0.8 cannot serve the cluster-scoped collection ``/api/v1/namespaces`` (its path parser
reads ``namespaces`` as the namespace prefix and answers 500), so these tests run the source on
every resource but Namespace; translation does not read Namespaces yet.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import kmock
import pytest
import structlog
import structlog.testing
from kubernetes import client

from istiod_lite.sources.kube import RESOURCES, KubeSource
from istiod_lite.translate import build_resources
from istiod_lite.view import ClusterView, Informers, view_from_objects
from mesh.rt.kube.watch import Resource, WatchSettings, backoff_delay
from tests.unit.test_translate_scenarios import SCENARIOS, Scenario, namespace, pod

SERVED = tuple(r for r in RESOURCES if r.kind != "Namespace")
FAST = WatchSettings(backoff_initial=0.02, backoff_max=0.2, read_timeout=10.0, connect_timeout=2.0)
PODS = kmock.resource("v1/pods")


def resource_key(r: Resource) -> str:
    return f"{r.group}/{r.version}/{r.plural}" if r.group else f"{r.version}/{r.plural}"


def store(server: kmock.KubernetesEmulator, objects: list[dict[str, Any]]) -> None:
    """Puts objects straight into the API server's store (no watch events)."""
    keys = {r.kind: resource_key(r) for r in SERVED}
    for obj in objects:
        if obj["kind"] not in keys:
            continue
        meta = obj["metadata"]
        server.objects[keys[obj["kind"]], meta.get("namespace"), meta["name"]] = obj


@pytest.fixture
def server(kmock: kmock.KubernetesEmulator) -> kmock.KubernetesEmulator:
    for r in SERVED:
        kmock.resources[resource_key(r)] = kmock.ResourceInfo(kind=r.kind, namespaced=True)
    return kmock


@pytest.fixture
def api(server: kmock.KubernetesEmulator) -> Iterator[client.ApiClient]:
    api = client.ApiClient(client.Configuration(host=str(server.url).rstrip("/")))
    yield api
    api.close()  # type: ignore[no-untyped-call]


@pytest.fixture
async def informers(api: client.ApiClient) -> AsyncIterator[Callable[[], Any]]:
    """Starts the source on demand (after the test scripted the server); stops it at the end."""
    tasks: list[asyncio.Task[None]] = []
    caches = Informers()

    async def start() -> Informers:
        source = KubeSource(api, caches.sink("kube"), resources=SERVED, settings=FAST, rng=random.Random(7))
        tasks.append(asyncio.create_task(source.run()))
        await asyncio.wait_for(caches.wait_synced(), timeout=10.0)
        return caches

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("watch-")], (
        "watch threads left behind"
    )


async def until(caches: Informers, check: Callable[[ClusterView], bool], *, within: float = 3.0) -> float:
    started = time.monotonic()
    while not check(caches.view()):
        if time.monotonic() - started > within:
            pytest.fail(f"the caches did not reach the expected state within {within} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def watches(server: kmock.KubernetesEmulator) -> list[kmock.Request]:
    """The pod watch requests the server saw, in order."""
    return list(server[kmock.action.WATCH, PODS])


def once(reaction: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A kmock reaction that answers the first matching request only (later ones fall through)."""
    used = [False]

    def react(request: Any) -> Any:
        if used[0]:
            return NotImplemented
        used[0] = True
        return reaction(request)

    return react


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
async def test_same_translation_as_from_the_objects(
    server: kmock.KubernetesEmulator, informers: Callable[[], Any], scenario: Scenario
) -> None:
    store(server, scenario.objects)
    caches = await informers()
    res = build_resources(caches.view())
    scenario.check(res)
    expected = build_resources(view_from_objects(o for o in scenario.objects if o["kind"] != "Namespace"))
    assert dict(res.addresses) == dict(expected.addresses)
    assert dict(res.authorizations) == dict(expected.authorizations) and res.warnings == expected.warnings


async def test_lists_every_kind_then_follows_the_watch(
    server: kmock.KubernetesEmulator, informers: Callable[[], Any]
) -> None:
    store(server, [namespace("demo"), pod("a")])
    caches = await informers()
    assert {len(server[kmock.action.LIST, kmock.resource(resource_key(r))]) for r in SERVED} == {1}
    await until(caches, lambda _: bool(watches(server)))  # synced after the list; the watch follows
    watch = watches(server)[0]
    assert watch.params["allowWatchBookmarks"] == "true" and "timeoutSeconds" in watch.params
    await server.post("/api/v1/namespaces/demo/pods", json=pod("b", ip="10.244.1.6"))
    assert await until(caches, lambda v: ("demo", "b") in v.pods) < 1.0
    await server.patch("/api/v1/namespaces/demo/pods/b", json={"metadata": {"labels": {"v": "2"}}})
    await until(caches, lambda v: v.pods[("demo", "b")].labels.get("v") == "2")
    await server.delete("/api/v1/namespaces/demo/pods/a")
    await until(caches, lambda v: ("demo", "a") not in v.pods)


async def test_list_follows_continue_tokens(
    server: kmock.KubernetesEmulator, informers: Callable[[], Any]
) -> None:
    store(server, [pod("b", ip="10.244.1.6")])
    first_page = {"metadata": {"continue": "page-2", "resourceVersion": "5"}, "items": [pod("a")]}
    server[kmock.action.LIST, PODS] << once(lambda _: first_page)
    caches = await informers()
    lists = list(server[kmock.action.LIST, PODS])
    assert [r.params.get("continue") for r in lists] == [None, "page-2"] and lists[0].params["limit"] == "500"
    assert set(caches.view().pods) == {("demo", "a"), ("demo", "b")}


async def test_bookmarks_move_the_resource_version(
    server: kmock.KubernetesEmulator, informers: Callable[[], Any]
) -> None:
    bookmark = {"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {"resourceVersion": "4242"}}}
    server[kmock.action.WATCH, PODS] << once(lambda _: (bookmark,))
    caches = await informers()
    await until(caches, lambda _: len(server[kmock.action.WATCH, PODS]) >= 2)
    assert watches(server)[1].params["resourceVersion"] == "4242"
    assert len(server[kmock.action.LIST, PODS]) == 1


async def test_broken_watch_reconnects_from_the_last_version_without_relisting(
    server: kmock.KubernetesEmulator, informers: Callable[[], Any]
) -> None:
    store(server, [namespace("demo"), pod("a")])
    seen = pod("x", ip="10.244.1.9")
    seen["metadata"]["resourceVersion"] = "77"

    def cut(request: Any) -> Any:
        async def stream() -> AsyncIterator[Any]:
            yield {"type": "ADDED", "object": seen}
            await asyncio.sleep(0.05)
            request._raw_request.transport.abort()
            await asyncio.sleep(1.0)

        return stream()

    server[kmock.action.WATCH, PODS] << once(cut)
    caches = await informers()
    await until(caches, lambda v: ("demo", "x") in v.pods and len(server[kmock.action.WATCH, PODS]) >= 2)
    assert watches(server)[1].params["resourceVersion"] == "77"
    assert len(server[kmock.action.LIST, PODS]) == 1
    await server.post("/api/v1/namespaces/demo/pods", json=pod("after", ip="10.244.1.10"))
    await until(caches, lambda v: ("demo", "after") in v.pods)


async def test_error_event_backs_off_and_resumes(
    server: kmock.KubernetesEmulator, informers: Callable[[], Any]
) -> None:
    failure = {"type": "ERROR", "object": {"kind": "Status", "code": 500, "message": "etcd is sad"}}
    server[kmock.action.WATCH, PODS] << once(lambda _: (failure,))
    caches = await informers()
    await server.post("/api/v1/namespaces/demo/pods", json=pod("later"))
    await until(caches, lambda v: ("demo", "later") in v.pods)
    assert len(server[kmock.action.LIST, PODS]) == 1


@pytest.mark.parametrize("form", ["error-event", "http-status"])
async def test_410_gone_relists_and_drops_what_vanished(
    server: kmock.KubernetesEmulator, informers: Callable[[], Any], form: str
) -> None:
    store(server, [namespace("demo"), pod("a"), pod("b", ip="10.244.1.6")])
    gone = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"}

    def expire(_: Any) -> Any:
        del server.objects["v1/pods", "demo", "b"]  # deleted while we were not watching: no event
        if form == "http-status":
            return kmock.Response(status=410, payload=gone)  # type: ignore[attr-defined]
        return ({"type": "ERROR", "object": gone},)

    server[kmock.action.WATCH, PODS] << once(expire)
    caches = await informers()
    await until(caches, lambda v: set(v.pods) == {("demo", "a")})
    assert len(server[kmock.action.LIST, PODS]) == 2


async def test_unreachable_server_is_retried_with_backoff() -> None:
    api = client.ApiClient(client.Configuration(host="http://127.0.0.1:9"))  # discard port: refused
    caches = Informers()
    source = KubeSource(
        api, caches.sink("kube"), resources=RESOURCES[:1], settings=FAST, rng=random.Random(1)
    )
    task = asyncio.create_task(source.run())
    await asyncio.sleep(0.3)
    assert not caches.synced and not task.done()
    task.cancel()
    started = time.monotonic()
    await asyncio.gather(task, return_exceptions=True)
    assert time.monotonic() - started < 2.0
    api.close()  # type: ignore[no-untyped-call]


@pytest.mark.parametrize(
    ("failures", "low", "high"),
    [(0, 0.0, 0.0), (1, 0.1, 0.2), (2, 0.2, 0.4), (4, 0.8, 1.6), (12, 15.0, 30.0), (500, 15.0, 30.0)],
)
def test_backoff_doubles_with_jitter_and_caps(failures: int, low: float, high: float) -> None:
    rng = random.Random(3)
    delays = [backoff_delay(failures, initial=0.2, maximum=30.0, rng=rng) for _ in range(200)]
    assert all(low <= d <= high for d in delays)
    assert failures == 0 or max(delays) - min(delays) > (high - low) / 4  # jittered, not fixed


VIRTUAL_SERVICES = Resource("VirtualService", "networking.istio.io", "v1", "virtualservices", ("v1beta1",))


def virtual_service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "demo", "resourceVersion": "3"},
        "spec": {"hosts": ["reviews"]},
    }


async def test_a_crd_not_installed_is_empty_warned_once_and_looked_for_again(
    server: kmock.KubernetesEmulator, api: client.ApiClient
) -> None:
    """404 on every version: synced empty, one warning, slow retries; installing it later works."""
    settings = WatchSettings(
        backoff_initial=0.02, backoff_max=0.2, read_timeout=10.0, connect_timeout=2.0, not_served_retry=0.3
    )
    for version in VIRTUAL_SERVICES.versions:  # the server fixture serves every RESOURCES kind
        server.resources.pop(f"networking.istio.io/{version}/virtualservices", None)
    caches = Informers()
    source = KubeSource(
        api, caches.sink("kube"), resources=(VIRTUAL_SERVICES,), settings=settings, rng=random.Random(2)
    )
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(source.run())
        try:
            await asyncio.wait_for(caches.wait_synced(), timeout=5.0)
            assert caches.view().virtual_services == {}
            await asyncio.sleep(1.0)
            lists = [
                len(server[kmock.resource(f"networking.istio.io/{v}/virtualservices")])
                for v in ("v1", "v1beta1")
            ]
            assert min(lists) >= 3 and max(lists) <= 8  # each version every 0.3 s: slowly, not spinning
            server.resources["networking.istio.io/v1beta1/virtualservices"] = kmock.ResourceInfo(
                kind="VirtualService", namespaced=True
            )
            server.objects["networking.istio.io/v1beta1/virtualservices", "demo", "r"] = virtual_service("r")
            await until(caches, lambda v: ("demo", "r") in v.virtual_services)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    warned = [e for e in logs if e["event"] == "source.kube.not_served"]
    assert len(warned) == 1 and "virtualservices.networking.istio.io" in warned[0]["hint"]
    assert [e["version"] for e in logs if e["event"] == "source.kube.served"] == ["v1beta1"]
