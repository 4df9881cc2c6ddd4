"""The node agent's behaviour: CNI events, label changes and restarts, acted out per pod.

Enrolling a pod (istio-ambient-facts.md 3a): capture rules in its network namespace, annotation
``ambient.istio.io/redirection: pending``, the netns fd to ztunnel over ZDS, and only after the
ack ``enabled``. Any failure leaves the rules and ``pending`` (the pod is captured but not served:
fail closed); a CNI ADD then fails so the runtime retries, a running pod is retried with backoff.
Releasing: rules removed, annotation removed, ZDS del. Every action on one pod holds that pod's
lock, so a CNI call and the reconciler never interleave on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import Awaitable, Iterable, Mapping
from typing import Protocol, TypeVar

import structlog

from mesh.clock import Clock
from mesh.errors import MeshError
from ztunnel.cni.apply import RuleChange, StepClock
from ztunnel.cni.enroll import should_enroll
from ztunnel.cni.plugin_server import CniEvent, CniVerdict
from ztunnel.cni.pods import PodInfo, PodSource
from ztunnel.cni.rules import CapturePlan, plan_capture
from ztunnel.cni.sandboxes import Sandbox, SandboxCache
from ztunnel.cni.state import (
    Action,
    PodRecord,
    RetryPolicy,
    decide,
    enrolled,
    failed,
    recovered_phase,
    released,
    retry_now,
    zds_uid,
)
from ztunnel.cni.zds_server import ZdsWorkload

__all__ = ["NodeAgent", "Rules", "Zds"]

TRY_AGAIN_LATER = 11
BYPASS_INBOUND = "ambient.istio.io/bypass-inbound-capture"
Logger = structlog.typing.FilteringBoundLogger
A = TypeVar("A")
B = TypeVar("B")


class Rules(Protocol):
    """Installs and removes the capture in a namespace (``apply.NetnsRules``)."""

    async def ensure_capture(
        self, netns: str, plan: CapturePlan | None = None, *, fresh: bool = False
    ) -> RuleChange: ...

    async def release(self, netns: str) -> RuleChange: ...


class ProbeSnat(Protocol):
    """The node's probe SNAT (see :class:`~ztunnel.cni.apply.HostProbeSnat`)."""

    async def ensure(self, pod_ips: Iterable[str]) -> bool: ...


class Zds(Protocol):
    """The ZDS server (``zds_server.ZdsServer``)."""

    @property
    def connected(self) -> bool: ...

    async def add(self, workload: ZdsWorkload) -> None: ...

    async def delete(self, uid: str) -> int: ...


class NodeAgent:
    """Enrolls and releases the pods of one node."""

    def __init__(
        self,
        *,
        source: PodSource,
        rules: Rules,
        zds: Zds,
        sandboxes: SandboxCache,
        clock: Clock,
        log: Logger,
        cluster: str = "Kubernetes",
        retry: RetryPolicy | None = None,
        tick: float = 1.0,
        probes: ProbeSnat | None = None,
    ) -> None:
        self.records: dict[str, PodRecord] = {}
        self._source = source
        self._rules = rules
        self._zds = zds
        self._sandboxes = sandboxes
        self._clock = clock
        self._log = log
        self.cluster = cluster
        self._retry = retry or RetryPolicy()
        self._tick = tick
        self._locks: dict[str, asyncio.Lock] = {}
        self._wake = asyncio.Event()
        self._probes = probes
        self._probe_lock = asyncio.Lock()
        self._probe_error = ""
        self.probe_ips: tuple[str, ...] | None = None
        """The pod addresses the node's probe SNAT covers (None until first applied)."""

    def _lock(self, uid: str) -> asyncio.Lock:
        return self._locks.setdefault(uid, asyncio.Lock())

    def _pod_log(self, rec: PodRecord) -> Logger:
        return self._log.bind(**{"pod.namespace": rec.namespace, "pod.name": rec.name, "pod.uid": rec.uid})

    def workload(self, rec: PodRecord) -> ZdsWorkload:
        """What ztunnel is told about ``rec``."""
        uid = zds_uid(rec.namespace, rec.name, cluster=self.cluster)
        return ZdsWorkload(uid, rec.name, rec.namespace, rec.service_account, rec.netns)

    def snapshot(self) -> list[ZdsWorkload]:
        """The enrolled set replayed to a (re)connecting ztunnel."""
        return [self.workload(rec) for rec in self.records.values() if rec.phase == "enabled"]

    def zds_ready(self) -> None:
        """A ztunnel connected and took the snapshot: retry pending pods now."""
        self.records = retry_now(self.records)
        self._wake.set()

    async def recover(self) -> None:
        """Rebuilds the known pods from the sandbox cache, the pod annotations and the existing
        namespaces (after a restart), touching no rule that is already in place."""
        pods = self._source.pods()
        saved = self._sandboxes.load()
        cached = {uid: s for uid, s in saved.items() if _netns_exists(s.netns)}
        found = self._source.find_netns({uid: pod for uid, pod in pods.items() if uid not in cached})
        for uid, pod in pods.items():
            netns = cached[uid].netns if uid in cached else found.get(uid)
            if netns and _netns_exists(netns):
                phase = recovered_phase(pod)
                self.records[uid] = PodRecord(
                    uid,
                    pod.namespace,
                    pod.name,
                    pod.service_account,
                    netns,
                    phase=phase,
                    since=pod.resource_version,
                    ips=cached[uid].ips if uid in cached else pod.ips,
                )
        for uid in saved.keys() - self.records.keys():
            self._sandboxes.forget(uid)
        for rec in [r for r in self.records.values() if r.phase == "enabled"]:
            try:
                change = await self._rules.ensure_capture(rec.netns, _plan_for(pods[rec.uid]))
            except MeshError as exc:
                self._pod_log(rec).error("agent.recover_rules_failed", error=str(exc))
                continue
            if change.iptables or change.ip_rule or change.sysctls:
                self._pod_log(rec).warning("agent.recover_rules_repaired", netns=rec.netns)
        await self.sync_probes()
        phases = [r.phase for r in self.records.values()]
        self._log.info(
            "agent.recovered",
            **{f"pods.{p}": phases.count(p) for p in ("enabled", "pending", "unenrolled")},
            **{"pods.found_running": len(found)},  # no sandbox known: found by the source (a /proc walk)
        )

    async def handle(self, event: CniEvent) -> CniVerdict:
        """Answers one CNI call from the plugin."""
        try:
            return await self._handle(event)
        except MeshError as exc:
            self._log.warning("cni.failed", command=event.command, **{"pod.name": event.name}, error=str(exc))
            return CniVerdict(ok=False, code=TRY_AGAIN_LATER, msg=str(exc))

    async def _handle(self, event: CniEvent) -> CniVerdict:
        received = time.perf_counter()
        if event.command == "DEL":
            return await self._cni_del(event)
        if not (event.namespace and event.name):
            return CniVerdict(ok=True, msg="not a Kubernetes pod (no K8S_POD_NAME); nothing to do")
        try:
            pod = await self._source.fetch(event.namespace, event.name)
        except MeshError as exc:
            return CniVerdict(ok=False, code=TRY_AGAIN_LATER, msg=f"cannot read pod state: {exc}")
        if pod is None or (event.pod_uid and event.pod_uid != pod.uid):
            msg = (
                f"pod {event.namespace}/{event.name} (uid {event.pod_uid or '?'}) is not in the cluster state"
            )
            return CniVerdict(
                ok=False, code=TRY_AGAIN_LATER, msg=msg, details="retry when the pod object exists"
            )
        if event.command == "CHECK":
            return self._cni_check(pod)
        return await self._cni_add(event, pod, received=received)

    async def _cni_add(self, event: CniEvent, pod: PodInfo, *, received: float) -> CniVerdict:
        async with self._lock(pod.uid):
            old = self.records.get(pod.uid)
            rec = PodRecord(
                pod.uid,
                pod.namespace,
                pod.name,
                pod.service_account,
                event.netns,
                since=pod.resource_version,
                ips=event.pod_ips,
            )
            if old is not None and old.netns == event.netns:
                rec = dataclasses.replace(rec, phase=old.phase)
            try:
                self._sandboxes.remember(
                    Sandbox(pod.uid, pod.namespace, pod.name, event.netns, event.container_id, event.pod_ips)
                )
            except OSError as exc:
                return CniVerdict(ok=False, code=TRY_AGAIN_LATER, msg=f"cannot record the sandbox: {exc}")
            self.records[pod.uid] = rec
            wanted, reason = should_enroll(pod.facts)
            log = self._pod_log(rec).bind(netns=rec.netns, reason=reason)
            if not wanted:
                if rec.phase != "unenrolled":
                    await self._release(rec, pod)
                log.info("cni.add_not_enrolled")
                return CniVerdict(ok=True, msg=f"not enrolled: {reason}")
            try:
                # a namespace this agent never knew has no rules of ours: they need not be read
                steps = await self._enroll(rec, pod, fresh=old is None)
            except MeshError as exc:
                log.warning("cni.add_failed", error=str(exc))
                return CniVerdict(ok=False, code=TRY_AGAIN_LATER, msg=f"pod not enrolled: {exc}")
            # cni_ms: from the plugin's request to this verdict (the pod's lock wait and its fetch too)
            cni_ms = round((time.perf_counter() - received) * 1e3, 3)
            log.info("cni.add_enrolled", cni_ms=cni_ms, steps_ms=steps)
            return CniVerdict(ok=True, msg="enrolled")

    def _cni_check(self, pod: PodInfo) -> CniVerdict:
        rec = self.records.get(pod.uid)
        wanted, reason = should_enroll(pod.facts)
        if not wanted:
            return CniVerdict(ok=True, msg=f"not enrolled: {reason}")
        if rec is None or rec.phase != "enabled":
            phase = rec.phase if rec else "unknown to the node agent"
            return CniVerdict(ok=False, code=TRY_AGAIN_LATER, msg=f"pod should be enrolled but is {phase}")
        return CniVerdict(ok=True, msg="enrolled")

    async def _cni_del(self, event: CniEvent) -> CniVerdict:
        uid = event.pod_uid or next(
            (r.uid for r in self.records.values() if (r.namespace, r.name) == (event.namespace, event.name)),
            "",
        )
        if not uid:
            return CniVerdict(ok=True, msg="unknown pod; nothing to do")
        async with self._lock(uid):
            rec = self.records.get(uid)
            if rec is None:
                self._sandboxes.forget(uid)
                return CniVerdict(ok=True, msg="unknown pod; nothing to do")
            await self._forget(rec)
        self._pod_log(rec).info("cni.del")
        return CniVerdict(ok=True, msg="forgotten")

    async def _enroll(self, rec: PodRecord, pod: PodInfo, *, fresh: bool = False) -> dict[str, float]:
        """Rules, pending, probe SNAT, ZDS add + ack, enabled; the record ends pending on any failure.
        Returns the milliseconds of each step (logged with the enrolment; bench_enrol reads them)."""
        now = self._clock.monotonic()
        clock = StepClock()
        try:
            # the rules and the annotation together: either way round, a failure leaves the pod pending
            change, pending_ms = await _both(
                self._rules.ensure_capture(rec.netns, _plan_for(pod), fresh=fresh),
                self._annotate(pod, "pending"),
            )
            clock.steps_ms.update(change.steps_ms)
            clock.steps_ms["annotate_pending"] = pending_ms
            clock.restart()
            self.records[rec.uid] = failed(rec, now=now, policy=self._retry)  # until the ack
            await self.sync_probes()  # captured from now on: probes must already bypass ztunnel
            clock.done("probe_snat")
            await self._zds.add(self.workload(rec))
            clock.done("zds_add")
            await self._source.set_redirection(pod, "enabled")
            clock.done("annotate_enabled")
        except MeshError:
            self.records[rec.uid] = failed(rec, now=now, policy=self._retry)
            raise
        self.records[rec.uid] = enrolled(rec)
        return {**clock.steps_ms, "total": clock.total()}

    async def _annotate(self, pod: PodInfo, value: str) -> float:
        """Sets the redirection annotation unless it already has ``value``; returns the milliseconds."""
        started = time.perf_counter()
        if pod.redirection != value:
            await self._source.set_redirection(pod, value)
        return round((time.perf_counter() - started) * 1e3, 3)

    async def _release(self, rec: PodRecord, pod: PodInfo) -> None:
        """Rules out, annotation removed, ZDS del to every ztunnel."""
        if _netns_exists(rec.netns):
            await self._rules.release(rec.netns)
        await self._source.set_redirection(pod, None)
        await self._zds.delete(self.workload(rec).uid)
        self.records[rec.uid] = released(rec)
        await self.sync_probes()

    async def release_all(self) -> int:
        """Takes every captured pod out of the mesh (the mesh is being uninstalled): rules removed,
        annotation removed, ZDS del. A failure is logged and the next pod goes on; returns how many
        pods were released."""
        pods = self._source.pods()
        released = 0
        for uid in sorted(self.records):
            async with self._lock(uid):
                rec = self.records.get(uid)
                if rec is None or rec.phase == "unenrolled":
                    continue
                try:
                    if (pod := pods.get(uid)) is not None:
                        await self._release(rec, pod)
                    elif _netns_exists(rec.netns):  # the pod object is gone: its rules only
                        await self._rules.release(rec.netns)
                except MeshError as exc:
                    self._pod_log(rec).error("agent.uninstall_release_failed", error=str(exc))
                    continue
                released += 1
        self._log.info("agent.released_all", pods=released)
        return released

    async def _forget(self, rec: PodRecord) -> None:
        if rec.phase != "unenrolled":
            await self._zds.delete(self.workload(rec).uid)
        self.records.pop(rec.uid, None)
        self._locks.pop(rec.uid, None)
        self._sandboxes.forget(rec.uid)
        await self.sync_probes()

    async def reconcile(self) -> None:
        """One pass over the known pods: enroll, release or forget as the source now says."""
        # The view and its version are taken together: the pass may wait on a pod's lock while the
        # source refreshes, and judging an old view by a newer version would forget a fresh pod.
        pods: Mapping[str, PodInfo] = self._source.pods()
        version = self._source.version()
        for uid in sorted(self.records):
            async with self._lock(uid):
                rec = self.records.get(uid)
                pod = pods.get(uid)
                action = decide(rec, pod, now=self._clock.monotonic(), view_version=version)
                if rec is None or action is Action.NONE:
                    continue
                await self._act(action, rec, pod)
        await self.sync_probes()  # also retries one that failed

    async def sync_probes(self) -> None:
        """Points the node's probe SNAT at the addresses of every captured (pending or enrolled) pod;
        a failure is logged and retried on the next reconcile."""
        if self._probes is None:
            return
        async with self._probe_lock:
            wanted = tuple(
                sorted({ip for r in self.records.values() if r.phase != "unenrolled" for ip in r.ips})
            )
            if wanted == self.probe_ips:
                return
            try:
                changed = await self._probes.ensure(wanted)
            except MeshError as exc:
                if str(exc) != self._probe_error:  # retried every tick: say each new failure once
                    self._log.warning("agent.probe_snat_failed", error=str(exc), pod_ips=len(wanted))
                self._probe_error = str(exc)
                return
            self.probe_ips, self._probe_error = wanted, ""
            if changed:
                self._log.info("agent.probe_snat", pod_ips=len(wanted))

    async def _act(self, action: Action, rec: PodRecord, pod: PodInfo | None) -> None:
        log = self._pod_log(rec).bind(action=action.value)
        try:
            if action is Action.FORGET:
                await self._forget(rec)
            elif action is Action.ENROLL and pod is not None:
                await self._enroll(rec, pod)
            elif action is Action.RELEASE and pod is not None:
                await self._release(rec, pod)
        except MeshError as exc:
            log.warning("agent.action_failed", error=str(exc), phase=self.records.get(rec.uid, rec).phase)
            return
        log.info(
            "agent.action_done", phase=self.records[rec.uid].phase if rec.uid in self.records else "forgotten"
        )

    async def run(self) -> None:
        """Reconciles on every source change, ztunnel connect, and each tick; runs until cancelled."""
        forward = asyncio.get_running_loop().create_task(self._forward_changes())
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._tick):
                        await self._wake.wait()
                self._wake.clear()
                await self.reconcile()
        finally:
            forward.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await forward

    async def _forward_changes(self) -> None:
        while True:
            await self._source.wait_changed()
            self._wake.set()


async def _both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Runs both to the end (neither is left running) and raises the first one's error if any."""
    a, b = await asyncio.gather(first, second, return_exceptions=True)
    if isinstance(a, BaseException):
        raise a
    if isinstance(b, BaseException):
        raise b
    return a, b


def _plan_for(pod: PodInfo) -> CapturePlan:
    return plan_capture(bypass_inbound=pod.facts.annotations.get(BYPASS_INBOUND) == "true")


def _netns_exists(path: str) -> bool:
    """One stat of a /var/run/netns entry (tmpfs/nsfs: never blocks in practice)."""
    return os.path.exists(path)
