"""The node agent's behaviour with fake rules, a fake ZDS peer and a fake pod source: the order of
enrollment steps, fail closed, label changes, deletes and restart recovery, as scripts."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from mesh.testing.clock import FakeClock
from ztunnel.cni.apply import RuleChange, RulesError
from ztunnel.cni.enroll import PodFacts
from ztunnel.cni.node_agent import NodeAgent
from ztunnel.cni.plugin_server import CniEvent
from ztunnel.cni.pods import PodInfo
from ztunnel.cni.rules import CapturePlan
from ztunnel.cni.sandboxes import Sandbox, SandboxCache
from ztunnel.cni.zds_server import ZdsRejectedError, ZdsUnavailableError, ZdsWorkload

AMBIENT = {"istio.io/dataplane-mode": "ambient"}
REDIRECTION = "ambient.istio.io/redirection"
UID = "Kubernetes//Pod/demo/web-0"


class Journal(list[str]):
    """Every side effect, in order."""


class FakeSource:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.view: dict[str, PodInfo] = {}
        self.view_version = 1
        self.fresh: dict[str, PodInfo] = {}  # pods a direct read sees but the cached view not yet

    def pods(self) -> Mapping[str, PodInfo]:
        return dict(self.view)  # a snapshot, as LabPodSource replaces its mapping on each refresh

    def version(self) -> int:
        return self.view_version

    async def wait_changed(self) -> None:
        raise AssertionError("not used by these tests")

    async def fetch(self, namespace: str, name: str) -> PodInfo | None:
        pods = [*self.fresh.values(), *self.view.values()]
        return next((p for p in pods if (p.namespace, p.name) == (namespace, name)), None)

    async def set_redirection(self, pod: PodInfo, value: str | None) -> None:
        self.journal.append(f"annotate {value}")
        current = self.view.get(pod.uid)
        if current is not None:
            annotations = {k: v for k, v in current.facts.annotations.items() if k != REDIRECTION}
            annotations |= {REDIRECTION: value} if value else {}
            facts = dataclasses.replace(current.facts, annotations=annotations)
            self.view[pod.uid] = dataclasses.replace(current, facts=facts)

    def find_netns(self, pods: Mapping[str, PodInfo]) -> dict[str, str]:
        return {}

    def set_namespace_labels(self, labels: dict[str, str]) -> None:
        for uid, pod in self.view.items():
            self.view[uid] = dataclasses.replace(
                pod, facts=dataclasses.replace(pod.facts, namespace_labels=labels)
            )


class FakeRules:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.captured: set[str] = set()

    async def ensure_capture(
        self, netns: str, plan: CapturePlan | None = None, *, fresh: bool = False
    ) -> RuleChange:
        changed = netns not in self.captured
        self.captured.add(netns)
        self.journal.append("rules" if changed else "rules-unchanged")
        return RuleChange(iptables=changed, ip_rule=changed)

    async def release(self, netns: str) -> RuleChange:
        self.journal.append("release-rules")
        self.captured.discard(netns)
        return RuleChange(iptables=True, ip_rule=True)


class FakeZds:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.connected = True
        self.nack = ""

    async def add(self, workload: ZdsWorkload) -> None:
        if not self.connected:
            raise ZdsUnavailableError("no ztunnel is connected")
        self.journal.append(f"zds add {workload.uid} sa={workload.service_account}")
        if self.nack:
            raise ZdsRejectedError(self.nack)

    async def delete(self, uid: str) -> int:
        self.journal.append(f"zds del {uid}")
        return 1 if self.connected else 0


@dataclasses.dataclass
class World:
    agent: NodeAgent
    source: FakeSource
    rules: FakeRules
    zds: FakeZds
    journal: Journal
    clock: FakeClock
    netns: str
    cache: SandboxCache


def _world(tmp_path: Path) -> World:
    journal = Journal()
    source, rules, zds, clock = FakeSource(journal), FakeRules(journal), FakeZds(journal), FakeClock()
    cache = SandboxCache(tmp_path / "pods")
    netns = tmp_path / "netns-p1"
    netns.write_text("")
    agent = NodeAgent(
        source=source, rules=rules, zds=zds, sandboxes=cache, clock=clock, log=structlog.get_logger()
    )
    pod = PodInfo("u1", "demo", "web-0", "n1", "web", PodFacts(AMBIENT, {}, {}))
    source.view["u1"] = pod
    return World(agent, source, rules, zds, journal, clock, str(netns), cache)


def _add(world: World, command: str = "ADD") -> CniEvent:
    return CniEvent(command, "c1", world.netns, "demo", "web-0", pod_uid="u1")


async def test_add_enrolls_in_order_and_marks_enabled_only_after_the_ack(tmp_path: Path) -> None:
    w = _world(tmp_path)
    verdict = await w.agent.handle(_add(w))
    assert verdict.ok, verdict
    assert w.journal == ["rules", "annotate pending", f"zds add {UID} sa=web", "annotate enabled"]
    assert w.agent.records["u1"].phase == "enabled"
    assert w.agent.snapshot() == [ZdsWorkload(UID, "web-0", "demo", "web", w.netns)]
    assert w.cache.load()["u1"] == Sandbox("u1", "demo", "web-0", w.netns, "c1")


@pytest.mark.parametrize("failure", ["disconnected", "nack"])
async def test_add_fails_closed_leaving_rules_and_pending(tmp_path: Path, failure: str) -> None:
    w = _world(tmp_path)
    w.zds.connected = failure != "disconnected"
    w.zds.nack = "cannot create proxy" if failure == "nack" else ""
    verdict = await w.agent.handle(_add(w))
    assert not verdict.ok and verdict.code == 11 and "not enrolled" in verdict.msg
    assert w.journal[-1] != "annotate enabled"
    assert w.source.view["u1"].redirection == "pending"
    assert w.rules.captured == {w.netns}
    assert w.agent.snapshot() == []  # a pending pod is not replayed as enrolled


async def test_add_of_a_pod_outside_the_mesh_does_nothing(tmp_path: Path) -> None:
    w = _world(tmp_path)
    w.source.set_namespace_labels({})
    verdict = await w.agent.handle(_add(w))
    assert verdict.ok and "not enrolled" in verdict.msg
    assert w.journal == []
    assert w.agent.records["u1"].phase == "unenrolled"  # but its namespace is remembered


async def test_add_for_an_unknown_pod_fails(tmp_path: Path) -> None:
    w = _world(tmp_path)
    verdict = await w.agent.handle(dataclasses.replace(_add(w), name="ghost"))
    assert not verdict.ok and verdict.code == 11 and "not in the cluster state" in verdict.msg
    verdict = await w.agent.handle(dataclasses.replace(_add(w), pod_uid="other-uid"))
    assert not verdict.ok


async def test_pending_pod_is_retried_with_backoff_and_at_once_when_ztunnel_connects(tmp_path: Path) -> None:
    w = _world(tmp_path)
    w.zds.connected = False
    await w.agent.handle(_add(w))
    w.journal.clear()
    await w.agent.reconcile()
    assert w.journal == []  # backing off
    w.clock.advance(1.0)
    await w.agent.reconcile()
    assert w.journal == ["rules-unchanged"]  # retried, ztunnel still away
    w.journal.clear()
    w.zds.connected = True
    w.agent.zds_ready()
    await w.agent.reconcile()
    assert w.journal == ["rules-unchanged", f"zds add {UID} sa=web", "annotate enabled"]
    assert w.agent.records["u1"].phase == "enabled"


async def test_namespace_relabel_enrolls_then_releases_a_running_pod(tmp_path: Path) -> None:
    w = _world(tmp_path)
    w.source.set_namespace_labels({})
    await w.agent.handle(_add(w))
    w.source.set_namespace_labels(AMBIENT)
    await w.agent.reconcile()
    assert w.journal == ["rules", "annotate pending", f"zds add {UID} sa=web", "annotate enabled"]
    w.journal.clear()
    w.source.set_namespace_labels({})
    await w.agent.reconcile()
    assert w.journal == ["release-rules", "annotate None", f"zds del {UID}"]
    assert w.agent.records["u1"].phase == "unenrolled" and not w.rules.captured
    w.journal.clear()
    await w.agent.reconcile()
    assert w.journal == []


async def test_deleted_pod_is_removed_from_ztunnel_and_forgotten(tmp_path: Path) -> None:
    w = _world(tmp_path)
    await w.agent.handle(_add(w))
    w.journal.clear()
    del w.source.view["u1"]
    await w.agent.reconcile()
    assert w.journal == [f"zds del {UID}"]
    assert w.agent.records == {} and w.cache.load() == {}


async def test_a_stale_view_does_not_undo_a_fresh_add(tmp_path: Path) -> None:
    """The CNI ADD read the pod at version 5 while the polled view is still at 1 without it."""
    w = _world(tmp_path)
    pod = w.source.view.pop("u1")
    w.source.fresh["u1"] = dataclasses.replace(pod, resource_version=5)
    assert (await w.agent.handle(_add(w))).ok
    w.journal.clear()
    await w.agent.reconcile()
    assert w.journal == [] and w.agent.records["u1"].phase == "enabled"
    w.source.view_version = 5  # the view caught up and the pod is really gone
    await w.agent.reconcile()
    assert w.journal == [f"zds del {UID}"] and w.agent.records == {}


async def test_a_reconcile_that_waited_for_an_add_judges_by_the_view_it_started_with(tmp_path: Path) -> None:
    """A reconcile pass takes the view (version 1, without the new pod), then waits for the pod's lock
    while its CNI ADD is with ztunnel; meanwhile the view refreshes to version 6 with the pod. The pod
    is missing from the pass's view, but that view is older than the ADD, so the pod is kept."""
    w = _world(tmp_path)
    pod = w.source.view.pop("u1")
    w.source.fresh["u1"] = dataclasses.replace(pod, resource_version=5)
    with_ztunnel, ack = asyncio.Event(), asyncio.Event()
    zds_add = w.zds.add

    async def slow_add(workload: ZdsWorkload) -> None:
        with_ztunnel.set()
        await ack.wait()
        await zds_add(workload)

    w.zds.add = slow_add  # type: ignore[method-assign]
    adding = asyncio.create_task(w.agent.handle(_add(w)))
    await with_ztunnel.wait()
    reconciling = asyncio.create_task(w.agent.reconcile())
    await asyncio.sleep(0)  # the pass has its view and waits for u1's lock
    w.source.view["u1"] = dataclasses.replace(pod, resource_version=6)
    w.source.view_version = 6
    ack.set()
    assert (await adding).ok
    await reconciling
    assert w.agent.records["u1"].phase == "enabled"
    assert f"zds del {UID}" not in w.journal


async def test_cni_del_forgets_the_pod(tmp_path: Path) -> None:
    w = _world(tmp_path)
    await w.agent.handle(_add(w))
    w.journal.clear()
    verdict = await w.agent.handle(_add(w, "DEL"))
    assert verdict.ok and w.journal == [f"zds del {UID}"]
    assert w.agent.records == {} and w.cache.load() == {}
    assert (await w.agent.handle(_add(w, "DEL"))).ok  # DEL twice is fine


async def test_check_says_whether_an_ambient_pod_is_enrolled(tmp_path: Path) -> None:
    w = _world(tmp_path)
    assert not (await w.agent.handle(_add(w, "CHECK"))).ok
    await w.agent.handle(_add(w))
    assert (await w.agent.handle(_add(w, "CHECK"))).ok


async def test_restart_recovers_from_annotations_and_cache_without_touching_rules(tmp_path: Path) -> None:
    w = _world(tmp_path)
    await w.agent.handle(_add(w))
    restarted = NodeAgent(
        source=w.source,
        rules=w.rules,
        zds=w.zds,
        sandboxes=w.cache,
        clock=w.clock,
        log=structlog.get_logger(),
    )
    w.journal.clear()
    await restarted.recover()
    await restarted.reconcile()
    assert w.journal == ["rules-unchanged"]  # checked, not rewritten; no annotation flaps
    assert restarted.snapshot() == w.agent.snapshot()


async def test_restart_forgets_sandboxes_whose_namespace_is_gone(tmp_path: Path) -> None:
    w = _world(tmp_path)
    await w.agent.handle(_add(w))
    _remove(w.netns)
    restarted = NodeAgent(
        source=w.source,
        rules=w.rules,
        zds=w.zds,
        sandboxes=w.cache,
        clock=w.clock,
        log=structlog.get_logger(),
    )
    await restarted.recover()
    assert restarted.records == {} and w.cache.load() == {}


def _remove(path: str) -> None:
    Path(path).unlink()


class FakeProbes:
    """The node's probe SNAT: journals every change of the address set."""

    def __init__(self, journal: Journal, *, broken: bool = False) -> None:
        self.journal = journal
        self.broken = broken
        self.ips: tuple[str, ...] = ()

    async def ensure(self, pod_ips: Iterable[str]) -> bool:
        if self.broken:
            raise RulesError(
                "iptables-restore failed (exit 4): Another app is currently holding the xtables lock"
            )
        wanted = tuple(pod_ips)
        changed, self.ips = wanted != self.ips, wanted
        self.journal.append(f"probe snat {','.join(wanted) or '-'}")
        return changed


def _agent(w: World, probes: FakeProbes) -> NodeAgent:
    return NodeAgent(
        source=w.source, rules=w.rules, zds=w.zds, sandboxes=w.cache, clock=w.clock,
        log=structlog.get_logger(), probes=probes,
    )  # fmt: skip


def _add_with_ip(w: World, ip: str = "10.244.1.5") -> CniEvent:
    return dataclasses.replace(_add(w), pod_ips=(ip,))


async def test_probes_are_exempt_before_ztunnel_is_told_and_until_the_pod_is_released(tmp_path: Path) -> None:
    w = _world(tmp_path)
    probes = FakeProbes(w.journal)
    w.agent = _agent(w, probes)
    assert (await w.agent.handle(_add_with_ip(w))).ok
    assert w.journal == ["rules", "annotate pending", "probe snat 10.244.1.5", f"zds add {UID} sa=web",
                         "annotate enabled"]  # fmt: skip
    assert w.cache.load()["u1"].ips == ("10.244.1.5",)
    w.journal.clear()
    w.source.set_namespace_labels({})
    await w.agent.reconcile()
    assert w.journal == ["release-rules", "annotate None", f"zds del {UID}", "probe snat -"]


async def test_a_restarted_agent_rebuilds_the_probe_set_from_its_cache(tmp_path: Path) -> None:
    w = _world(tmp_path)
    first = FakeProbes(w.journal)
    w.agent = _agent(w, first)
    await w.agent.handle(_add_with_ip(w))
    restarted = _agent(w, FakeProbes(Journal()))
    await restarted.recover()
    assert restarted.probe_ips == ("10.244.1.5",)


async def test_a_failed_probe_snat_is_logged_once_and_retried_without_blocking_enrollment(
    tmp_path: Path,
) -> None:
    w = _world(tmp_path)
    probes = FakeProbes(w.journal, broken=True)
    w.agent = _agent(w, probes)
    with capture_logs() as logs:
        assert (await w.agent.handle(_add_with_ip(w))).ok  # the capture is in place: fail closed holds
        for _ in range(3):
            await w.agent.reconcile()  # one retry per tick
    assert w.agent.probe_ips is None
    assert [e["event"] for e in logs].count("agent.probe_snat_failed") == 1
    probes.broken = False
    await w.agent.reconcile()
    assert w.agent.probe_ips == ("10.244.1.5",)


def test_a_sandbox_cache_entry_from_before_addresses_were_kept_still_loads(tmp_path: Path) -> None:
    cache = SandboxCache(tmp_path)
    entry = {"uid": "u1", "namespace": "demo", "name": "web-0", "netns": "/n", "container_id": "c1"}
    (tmp_path / "u1.json").write_text(json.dumps(entry))
    assert cache.load() == {"u1": Sandbox("u1", "demo", "web-0", "/n", "c1", ips=())}
    for uid, ips in (("u2", 7), ("u3", ["10.0.0.300"]), ("u4", "10.0.0.3")):
        (tmp_path / f"{uid}.json").write_text(json.dumps(entry | {"uid": uid, "ips": ips}))
    assert cache.load().keys() == {"u1"}  # malformed entries are skipped, not a crash
