"""The file source over a lab-style state directory (docs/lab-state.md), on a real filesystem."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from structlog.testing import capture_logs

from istiod_lite.sources.file import FileSource, StateScanner
from istiod_lite.translate import build_resources
from istiod_lite.view import ClusterView, Informers
from tests.unit.test_translate_scenarios import authz, endpoint_slice, namespace, pod, service

_versions = iter(range(1, 1_000_000))


def object_path(state: Path, obj: dict[str, Any]) -> Path:
    meta = obj["metadata"]
    folder = str(meta.get("namespace") or "_cluster")
    return state / "objects" / str(obj["kind"]) / folder / f"{meta['name']}.yaml"


def write(state: Path, obj: dict[str, Any]) -> Path:
    """Writes like the lab does: a temporary file in the same directory, then a rename."""
    obj["metadata"]["resourceVersion"] = str(next(_versions))
    path = object_path(state, obj)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(yaml.safe_dump(obj))
    os.replace(tmp, path)
    return path


async def until(informers: Informers, check: Callable[[ClusterView], bool], *, within: float = 1.0) -> float:
    """Seconds until ``check(view)`` holds; fails the test after ``within`` seconds."""
    started = time.monotonic()
    while not check(informers.view()):
        if time.monotonic() - started > within:
            pytest.fail(f"the view did not change within {within} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@pytest.fixture
def state(tmp_path: Path) -> Path:
    (tmp_path / "lab.yaml").write_text("clusterId: Kubernetes\nnodes: [node1, node2]\n")
    for obj in (
        namespace("demo"),
        pod("web-1", labels={"app": "web"}),
        service("web"),
        endpoint_slice("web", endpoints=[("web-1", "10.244.1.5", True)]),
    ):
        write(tmp_path, obj)
    return tmp_path


@pytest.fixture
async def informers(state: Path) -> AsyncIterator[Informers]:
    informers = Informers()
    task = asyncio.create_task(FileSource(state, informers.sink("lab")).run())  # the default 200 ms poll
    await asyncio.wait_for(informers.wait_synced(), timeout=5.0)
    yield informers
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_initial_list_feeds_the_caches_and_translates(informers: Informers) -> None:
    view = informers.view()
    assert set(view.pods) == {("demo", "web-1")} and set(view.namespaces) == {("", "demo")}
    res = build_resources(view)
    assert "demo/web.demo.svc.cluster.local" in res.addresses["Kubernetes//Pod/demo/web-1"].workload.services


async def test_changes_seen_within_a_second(state: Path, informers: Informers) -> None:
    calls: list[int] = []
    informers.on_change(lambda: calls.append(1))
    write(state, pod("web-1", labels={"app": "web", "version": "v2"}))
    took = await until(informers, lambda v: v.pods[("demo", "web-1")].labels.get("version") == "v2")
    assert took < 1.0 and calls
    write(state, pod("web-2", ip="10.244.2.5", node="node2"))
    write(state, authz("deny-all", action="DENY", rules=[{}]))
    await until(
        informers, lambda v: ("demo", "web-2") in v.pods and ("demo", "deny-all") in v.authorization_policies
    )
    object_path(state, pod("web-1")).unlink()
    await until(informers, lambda v: ("demo", "web-1") not in v.pods)
    assert informers.view().service_account_on_node("demo", "web", "node2")


def l7_object(api_version: str, kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": name, "namespace": "demo"},
        "spec": spec,
    }


async def test_l7_kinds_are_cached(state: Path, informers: Informers) -> None:
    write(
        state,
        l7_object(
            "gateway.networking.k8s.io/v1", "Gateway", "waypoint", {"gatewayClassName": "istio-waypoint"}
        ),
    )
    write(
        state,
        l7_object("gateway.networking.k8s.io/v1", "HTTPRoute", "web", {"parentRefs": [{"name": "web"}]}),
    )
    write(state, l7_object("networking.istio.io/v1", "VirtualService", "web", {"hosts": ["web"]}))
    write(state, l7_object("networking.istio.io/v1alpha3", "DestinationRule", "web", {"host": "web"}))
    await until(informers, lambda v: len(v.destination_rules) + len(v.virtual_services) == 2, within=2.0)
    view = informers.view()
    assert set(view.gateways) == {("demo", "waypoint")} and set(view.http_routes) == {("demo", "web")}
    assert view.virtual_services[("demo", "web")].spec["hosts"] == ("web",)
    assert view.destination_rules[("demo", "web")].body["apiVersion"] == "networking.istio.io/v1alpha3"


async def test_malformed_file_skipped_with_warning_naming_it(state: Path, informers: Informers) -> None:
    bad = object_path(state, pod("broken"))
    with capture_logs() as logs:
        source = FileSource(state, Informers().sink("probe"), poll_interval=0.05)
        bad.write_text("kind: Pod\nmetadata: {name: broken, namespace: demo\n")  # unterminated flow mapping
        write(state, pod("good", ip="10.244.1.7"))
        task = asyncio.create_task(source.run())
        await until(informers, lambda v: ("demo", "good") in v.pods)
        await asyncio.sleep(0.2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    skipped = [e for e in logs if e["event"] == "source.file.skipped"]
    assert skipped and all(e["file"] == str(bad) and e["log_level"] == "warning" for e in skipped)
    assert ("demo", "broken") not in informers.view().pods
    write(state, pod("broken", ip="10.244.1.8"))
    await until(informers, lambda v: ("demo", "broken") in v.pods)


async def test_a_good_object_survives_a_bad_rewrite(state: Path, informers: Informers) -> None:
    path = object_path(state, pod("web-1"))
    path.write_text("- just\n- a list\n")
    write(state, pod("marker", ip="10.244.1.99"))  # same directory: the scan that sees it saw the bad file
    await until(informers, lambda v: ("demo", "marker") in v.pods)
    assert informers.view().pods[("demo", "web-1")].labels == {"app": "web"}
    path.unlink()
    await until(informers, lambda v: ("demo", "web-1") not in v.pods)


@pytest.mark.parametrize(
    ("relative", "content"),
    [
        ("objects/Pod/demo/other-name.yaml", pod("web-9")),
        ("objects/Pod/elsewhere/web-9.yaml", pod("web-9")),
        ("objects/Service/demo/web-9.yaml", pod("web-9")),
    ],
    ids=["name", "namespace", "kind"],
)
def test_object_not_matching_its_path_is_skipped(
    tmp_path: Path, relative: str, content: dict[str, Any]
) -> None:
    path = tmp_path / relative
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(content))
    changes = StateScanner(tmp_path).scan()
    assert changes.upserts == [] and [p for p, _ in changes.problems] == [path]
    assert "does not match its path" in changes.problems[0][1]


def test_unwatched_kinds_temporary_and_hidden_files_ignored(tmp_path: Path) -> None:
    write(
        tmp_path,
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "demo"}},
    )
    write(tmp_path, pod("p"))
    (tmp_path / "objects/Pod/demo/.p2.yaml.tmp").write_text("garbage: [")
    (tmp_path / "objects/Pod/demo/notes.txt").write_text("garbage: [")
    changes = StateScanner(tmp_path).scan()
    assert [(o.kind, o.name) for o in changes.upserts] == [("Pod", "p")] and changes.problems == []


def test_rescans_recent_directories_and_does_a_periodic_full_pass(tmp_path: Path) -> None:
    clock = [0.0]
    scanner = StateScanner(tmp_path, full_rescan_every=5.0, monotonic=lambda: clock[0])
    path = write(tmp_path, pod("p"))
    assert [o.name for o in scanner.scan().upserts] == ["p"]
    write(tmp_path, pod("q", ip="10.244.1.6"))
    assert [o.name for o in scanner.scan().upserts] == ["q"]
    directory = path.parent
    recent = directory.stat().st_mtime_ns
    path.write_text(path.read_text().replace("10.244.1.5", "10.244.1.8"))  # same tick as far as the dir knows
    os.utime(directory, ns=(recent, recent))
    assert [o.status["podIP"] for o in scanner.scan().upserts] == [
        "10.244.1.8"
    ]  # a recent mtime is not trusted
    old = time.time_ns() - 10_000_000_000
    os.utime(directory, ns=(old, old))
    clock[0] += 1.0
    scanner.scan()  # the directory is now old enough to trust its mtime
    text = path.read_text().replace("10.244.1.8", "10.244.1.9")
    path.write_text(text)  # an in-place edit (not a rename)
    os.utime(directory, ns=(old, old))
    clock[0] += 1.0
    assert scanner.scan().upserts == []  # not seen until the full pass...
    clock[0] += 5.0
    assert [o.status["podIP"] for o in scanner.scan().upserts] == ["10.244.1.9"]


async def test_missing_state_directory_is_empty_until_created(tmp_path: Path) -> None:
    state = tmp_path / "later"
    informers = Informers()
    with capture_logs() as logs:
        task = asyncio.create_task(
            FileSource(state, informers.sink("lab"), poll_interval=0.05, logger=structlog.get_logger()).run()
        )
        await asyncio.wait_for(informers.wait_synced(), timeout=5.0)
    try:
        assert dict(informers.view().pods) == {} and logs[0]["event"] == "source.file.missing"
        write(state, pod("p"))
        await until(informers, lambda v: ("demo", "p") in v.pods)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
