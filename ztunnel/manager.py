"""The workload manager: ztunnel's side of ZDS. It starts a pod proxy for each pod the node agent
hands over (with its netns fd), stops it on ``del``, and after a snapshot drops the proxies the
agent no longer names. Each request gets exactly one ack; an add is acked only once the pod's
listeners are bound, so the agent marks a pod enrolled only when ztunnel really serves it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Callable
from typing import Protocol

import structlog

from mesh.api.istio.workload.zds import zds_pb2
from mesh.identity.spiffe import WorkloadIdentity
from mesh.revocation import Revocation
from mesh.rt.metrics import CounterFamily
from ztunnel.context import NodeContext
from ztunnel.proxy import PodInfo, PodProxy
from ztunnel.zds import ZdsChannel, ZdsError, connect, decode_request

__all__ = ["ServedPod", "WorkloadManager", "WorkloadManagerMetrics"]

_BACKOFF_START = 0.005
_BACKOFF_CAP = 15.0


class ServedPod(Protocol):
    """An enrolled pod as the manager keeps it: its :class:`PodProxy`, or with ``--workers N`` the
    handle that has the worker processes serve it (:class:`ztunnel.workers.pool.WorkerServedPod`)."""

    @property
    def info(self) -> PodInfo:
        """What the node agent said about the pod."""
        ...

    @property
    def identity(self) -> WorkloadIdentity:
        """The pod's workload identity."""
        ...

    @property
    def active(self) -> int:
        """Downstream connections served now."""
        ...

    def serves_namespace_of(self, netns_fd: int) -> bool:
        """Whether ``netns_fd`` is the pod network namespace served."""
        ...

    async def start(self) -> None:
        """Binds the pod's listeners and serves it."""
        ...

    async def stop(self, *, deadline: float = 5.0) -> int:
        """Drains until ``deadline``; returns how many connections were cut."""
        ...

    def close_revoked(self, revocation: Revocation) -> int:
        """Drops the pod's connections whose peer certificate ``revocation`` revokes; how many."""
        ...


class WorkloadManager:
    """Keeps one served pod (a PodProxy by default) per enrolled pod of this node, driven by the
    node agent."""

    def __init__(
        self,
        ctx: NodeContext,
        *,
        socket_path: str,
        rng: random.Random,
        proxy_factory: Callable[[PodInfo, int, NodeContext], ServedPod] = PodProxy,
        drain_deadline: float = 5.0,
    ) -> None:
        self.ctx = ctx
        self.socket_path = socket_path
        self.proxies: dict[str, ServedPod] = {}
        self.connected = False
        self.snapshot_received = False
        self.proxies_started = 0
        self.proxies_stopped = 0
        self._rng = rng
        self._factory = proxy_factory
        self._drain_deadline = drain_deadline
        self._log: structlog.typing.FilteringBoundLogger = ctx.log.bind(component="workload_manager")

    @property
    def ready(self) -> bool:
        """Connected to the node agent and its snapshot applied."""
        return self.connected and self.snapshot_received

    async def run(self) -> None:
        """Connects (with backoff 5 ms doubling to 15 s) and serves the agent until cancelled."""
        delay = _BACKOFF_START
        while True:
            try:
                channel = await connect(self.socket_path)
            except ZdsError as exc:
                self._log.debug("zds.connect_failed", error=exc.message, retry_in=round(delay, 3))
                await asyncio.sleep(delay * self._rng.uniform(0.8, 1.2))
                delay = min(delay * 2, _BACKOFF_CAP)
                continue
            delay = _BACKOFF_START
            try:
                await self._serve(channel)
            except ZdsError as exc:
                self._log.warning("zds.disconnected", error=exc.message)
            finally:
                self.connected = False
                channel.close()

    async def _serve(self, channel: ZdsChannel) -> None:
        hello = zds_pb2.ZdsHello(version=zds_pb2.V1)
        await channel.send(hello.SerializeToString())
        self.connected = True
        self._log.info("zds.connected", socket=self.socket_path)
        seen: set[str] = set()
        while True:
            data, fd = await channel.recv()
            try:
                request = decode_request(data)
            except ZdsError as exc:
                if fd is not None:
                    os.close(fd)
                error = exc.message
            else:
                error = await self.handle(request, fd, seen)  # takes ownership of fd
            ack = zds_pb2.WorkloadResponse(ack=zds_pb2.Ack(error=error))
            await channel.send(ack.SerializeToString())

    async def handle(self, request: zds_pb2.WorkloadRequest, fd: int | None, seen: set[str]) -> str:
        """Applies one request (taking ownership of ``fd``); returns the ack's error ("" when done).
        ``seen`` collects the uids named since the last snapshot."""
        kind = request.WhichOneof("payload")
        if kind == "add":
            seen.add(request.add.uid)
            return await self._add(request.add, fd)
        if fd is not None:
            os.close(fd)
        if kind == "keep":
            seen.add(request.keep.uid)
            return "" if request.keep.uid in self.proxies else f"no proxy for {request.keep.uid} to keep"
        if kind == "del":
            await self._remove(getattr(request, "del").uid)  # "del" is a Python keyword
            return ""
        if kind == "snapshot_sent":
            for uid in [u for u in self.proxies if u not in seen]:
                await self._remove(uid)
            seen.clear()
            self.snapshot_received = True
            self._log.info("zds.snapshot_applied", proxies=len(self.proxies))
            return ""
        return f"unknown request {kind}"

    async def _add(self, add: zds_pb2.AddWorkload, fd: int | None) -> str:
        if fd is None:
            return f"add {add.uid} came without a netns file descriptor"
        info = add.workload_info
        pod = PodInfo(add.uid, info.name, info.namespace, info.service_account or "default")
        existing = self.proxies.get(add.uid)
        if existing is not None and existing.serves_namespace_of(fd):
            # a replay (the node agent restarted): the pod's listeners and connections stay as they are
            os.close(fd)
            self._log.info("proxy.kept", uid=add.uid, pod=f"{info.namespace}/{info.name}")
            return ""
        if existing is not None:  # the pod's sandbox was made again: rebind in its new namespace
            del self.proxies[add.uid]
            await existing.stop(deadline=0.1)
        proxy = self._factory(pod, fd, self.ctx)
        started = time.perf_counter()
        try:
            await proxy.start()
        except Exception as exc:
            with contextlib.suppress(OSError):
                os.close(fd)
            self._log.warning("proxy.start_failed", uid=add.uid, error=str(exc))
            return f"cannot start the proxy for {add.uid}: {exc}"
        self.proxies[add.uid] = proxy
        self.proxies_started += 1
        took_ms = round((time.perf_counter() - started) * 1e3, 3)  # listeners bound, before the ack
        self._log.info("proxy.started", uid=add.uid, pod=f"{info.namespace}/{info.name}", took_ms=took_ms)
        return ""

    async def _remove(self, uid: str) -> None:
        proxy = self.proxies.pop(uid, None)
        if proxy is None:
            return
        cut = await proxy.stop(deadline=0.0)  # a deleted or released pod is drained immediately
        self.proxies_stopped += 1
        self._log.info("proxy.stopped", uid=uid, connections_cut=cut)

    async def stop_all(self, *, deadline: float) -> int:
        """Drains every pod proxy (SIGTERM); returns how many connections were cut at the deadline."""
        proxies, self.proxies = list(self.proxies.values()), {}
        results = await asyncio.gather(*(p.stop(deadline=deadline) for p in proxies), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                self._log.warning("proxy.stop_failed", error=repr(result))
        return sum(r for r in results if isinstance(r, int))


class WorkloadManagerMetrics:
    """ztunnel's in-pod ``workload_manager_proxies_{started,stopped}_total``, read at scrape time.

    Istio's ``workload_manager_active_proxy_count`` gauge is left out: its ``_count`` suffix fails
    ``promtool check metrics``; the active proxies are started minus stopped."""

    def __init__(self, manager: WorkloadManager) -> None:
        self._manager = manager

    def collect(self) -> list[CounterFamily]:
        """Proxies started and stopped since ztunnel started (a ``mesh.rt.metrics.Collector``)."""
        started = CounterFamily(
            "workload_manager_proxies_started", "The total number of proxies that were started"
        )
        started.add_metric((), self._manager.proxies_started)
        stopped = CounterFamily(
            "workload_manager_proxies_stopped", "The total number of proxies that were stopped"
        )
        stopped.add_metric((), self._manager.proxies_stopped)
        return [started, stopped]
