"""The informer caches: sinks, change callbacks, immutable views, sync state, the CA's node index."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from istiod_lite.view import POD, SERVICE, Informers, ObjectError, parse_object
from tests.unit.test_translate_scenarios import pod, service


def obj(raw: dict[str, Any]) -> Any:
    return parse_object(raw)


def test_changes_bump_revision_and_call_back_once_per_real_change() -> None:
    informers = Informers()
    calls: list[int] = []
    informers.on_change(lambda: calls.append(informers.revision))
    sink = informers.sink("test")
    sink.upsert(obj(pod("a")))
    sink.upsert(obj(pod("a")))  # the same body again (a watch replay): no change
    sink.upsert(obj(pod("a", ip="10.244.1.6")))
    sink.delete(POD, "demo", "a")
    sink.delete(POD, "demo", "a")
    assert calls == [1, 2, 3] and informers.revision == 3


def test_views_are_immutable_snapshots() -> None:
    informers = Informers()
    sink = informers.sink("test")
    sink.upsert(obj(pod("a")))
    first = informers.view()
    assert informers.view() is first
    sink.upsert(obj(pod("b", ip="10.244.1.6")))
    second = informers.view()
    assert set(first.pods) == {("demo", "a")} and set(second.pods) == {("demo", "a"), ("demo", "b")}
    assert second.revision > first.revision
    with pytest.raises(TypeError):
        first.pods[("demo", "c")] = second.pods[("demo", "b")]  # type: ignore[index]
    with pytest.raises(TypeError):
        first.pods[("demo", "a")].body["spec"]["nodeName"] = "x"  # type: ignore[index]
    containers: Any = first.pods[("demo", "a")].spec["containers"]
    assert isinstance(containers, tuple) and containers[0]["name"] == "app"


def test_replace_removes_only_what_the_same_source_no_longer_has() -> None:
    informers = Informers()
    kube, files = informers.sink("kube"), informers.sink("files")
    kube.replace(POD, [obj(pod("a")), obj(pod("b"))])
    files.upsert(obj(pod("from-files")))
    kube.replace(POD, [obj(pod("b"))])
    assert set(informers.view().pods) == {("demo", "b"), ("demo", "from-files")}


async def test_synced_only_after_every_source_listed() -> None:
    informers = Informers()
    assert not informers.synced
    a, b = informers.sink("a"), informers.sink("b")
    waiter = asyncio.create_task(informers.wait_synced())
    a.mark_synced()
    await asyncio.sleep(0)
    assert not informers.synced and not waiter.done()
    b.mark_synced()
    await asyncio.wait_for(waiter, timeout=1.0)
    assert informers.synced


def test_kinds_outside_the_caches_are_ignored() -> None:
    informers = Informers(kinds=[SERVICE])
    sink = informers.sink("test")
    sink.upsert(obj(pod("a")))
    sink.upsert(obj(service("web")))
    view = informers.view()
    assert dict(view.pods) == {} and set(view.services) == {("demo", "web")} and informers.revision == 1


def test_service_account_on_node_index() -> None:
    informers = Informers()
    sink = informers.sink("test")
    sink.upsert(obj(pod("a", sa="web", node="n1")))
    sink.upsert(obj(pod("b", sa=None, node="n2")))
    sink.upsert(obj(pod("done", sa="batch", node="n1", phase="Succeeded")))
    view = informers.view()
    assert view.service_account_on_node("demo", "web", "n1") and informers.service_account_on_node(
        "demo", "web", "n1"
    )
    assert view.service_account_on_node("demo", "default", "n2")
    assert not view.service_account_on_node("demo", "web", "n2")
    assert not view.service_account_on_node("demo", "batch", "n1")
    sink.upsert(obj(pod("a", sa="web", node="n2")))  # moved (rescheduled under the same name)
    assert informers.nodes_for_service_account("demo", "web") == frozenset({"n2"})
    deleting = pod("b", sa=None, node="n2")
    deleting["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    sink.upsert(obj(deleting))
    assert not informers.view().service_account_on_node("demo", "default", "n2")
    assert view.service_account_on_node("demo", "default", "n2")  # the old view is unchanged


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"kind": "Pod", "metadata": {"namespace": "demo"}}, "no metadata.name"),
        ({"metadata": {"name": "x"}}, "no kind"),
        ({"kind": "Pod", "metadata": {"name": "x", "labels": {"a": 1}}}, "metadata.labels"),
        ({"kind": "Pod", "metadata": {"name": "x", "ownerReferences": [{"name": "rs"}]}}, "ownerReferences"),
    ],
)
def test_malformed_envelopes_are_rejected(raw: dict[str, Any], problem: str) -> None:
    with pytest.raises(ObjectError, match=problem):
        parse_object(raw)


def test_namespace_is_cluster_scoped_and_kind_can_be_supplied() -> None:
    ns = parse_object({"metadata": {"name": "demo", "namespace": "ignored"}}, kind="Namespace")
    assert (ns.kind, ns.namespace, ns.key, ns.body["kind"]) == ("Namespace", "", ("", "demo"), "Namespace")
