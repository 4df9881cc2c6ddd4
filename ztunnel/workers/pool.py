"""The parent's side of ``--workers N``: the pool of workers, and the pods they serve.

The pool hands every config change, pod change and certificate renewal to the live workers
(:class:`~ztunnel.workers.link.WorkerLink` runs each one); a worker that starts again gets the
whole state again, and meanwhile the other workers' listeners in each pod keep serving. A
certificate a worker asks for is the parent's :class:`CertificateManager`'s: one CA fetch per
identity, whatever the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence

import structlog

from mesh.api.istio.workload.zds import zds_pb2
from mesh.certs import IssuedCertificate
from mesh.errors import MeshError
from mesh.identity.spiffe import WorkloadIdentity
from mesh.revocation import Revocation
from mesh.rt.xds import XdsState
from ztunnel.context import Certificates, NodeContext
from ztunnel.proxy import PodInfo, same_namespace
from ztunnel.workers.certs import certificate_fields
from ztunnel.workers.channel import Message
from ztunnel.workers.link import QUESTION_TIMEOUT, WorkerGoneError, WorkerLink
from ztunnel.workers.mirror import ResourceMirror

__all__ = ["WorkerPool", "WorkerServedPod", "worker_command"]


class WorkerPool:
    """N worker processes started by ``command`` (the worker's argv without its channel flags)."""

    def __init__(
        self,
        *,
        count: int,
        command: Sequence[str],
        certs: Certificates,
        mirror: ResourceMirror,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self.certs = certs
        self.mirror = mirror
        self.log = log.bind(component="workers")
        self.pods: dict[str, WorkerServedPod] = {}
        """The pods the workers serve, by uid (a restarted worker gets each again)."""
        self._draining = asyncio.Event()
        self.links = [WorkerLink(self, index, command) for index in range(count)]
        self._any_live = asyncio.Event()

    async def run(self) -> None:
        """Keeps every worker running until :meth:`drain` (cancel to stop at once)."""
        await asyncio.gather(*(link.supervise() for link in self.links))

    async def wait_live(self) -> None:
        """Waits until every worker said hello and took the config (ztunnel takes pods after)."""
        while not all(link.live for link in self.links):
            self._any_live.clear()
            await self._any_live.wait()

    @property
    def draining(self) -> bool:
        """Whether :meth:`drain` began (no worker is started again)."""
        return self._draining.is_set()

    async def wait_draining(self, *, within: float) -> None:
        """Returns when the drain begins, or after ``within`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._draining.wait()

    def live_links(self) -> list[WorkerLink]:
        """The workers that have the config now and take pods and changes."""
        return [link for link in self.links if link.live]

    def missing(self) -> list[str]:
        """What readiness waits for among the workers (read from the readiness thread)."""
        return [f"worker {link.index} not ready" for link in self.links if not link.ready]

    def publish(self, state: XdsState) -> None:
        """Hands what changed in the accepted xDS state to every live worker."""
        for response in self.mirror.publish(state):
            body = response.SerializeToString()
            for link in self.live_links():
                link.post(Message("config", body=body))

    def certificate_issued(self, cert: IssuedCertificate) -> None:
        """Pushes a new or renewed certificate to the workers that asked for its identity."""
        fields = certificate_fields(cert)
        for link in self.live_links():
            if cert.identity in link.wanted:
                link.post(Message("certificate", fields))

    async def ask_all(self, kind: str) -> list[tuple[WorkerLink, Message]]:
        """Asks every live worker ``kind`` (e.g. "stats"); the answers of those that replied within
        2 s (a stuck worker leaves the others' answers standing)."""
        links = self.live_links()
        asked = (link.request(Message(kind), within=QUESTION_TIMEOUT) for link in links)
        replies = await asyncio.gather(*asked, return_exceptions=True)
        return [(link, r) for link, r in zip(links, replies, strict=True) if isinstance(r, Message)]

    def status(self) -> list[dict[str, object]]:
        """Each worker's process and state, for the admin page."""
        return [
            {
                "index": link.index,
                "pid": link.pid,
                "starts": link.starts,
                "live": link.live,
                "ready": link.ready,
                "identities": sorted(identity.uri for identity in link.wanted),
            }
            for link in self.links
        ]

    def pod(self, info: PodInfo, netns_fd: int, ctx: NodeContext) -> WorkerServedPod:
        """The workload manager's factory: the pod, served by the workers."""
        return WorkerServedPod(self, info, netns_fd, ctx)

    async def drain(self, *, deadline: float) -> int:
        """Tells every worker to drain within ``deadline``, waits for them to exit, and returns how
        many connections they cut at the deadline. No worker is restarted after this."""
        self._draining.set()
        results = await asyncio.gather(*(link.drain(deadline) for link in self.links), return_exceptions=True)
        return sum(r for r in results if isinstance(r, int))

    def link_live(self) -> None:
        """A worker took the config (wakes :meth:`wait_live`)."""
        self._any_live.set()


class WorkerServedPod:
    """An enrolled pod served by the workers: each binds its own listeners in the pod (the parent
    keeps the netns fd to hand to a worker that starts again). The workload manager's view of it."""

    def __init__(self, pool: WorkerPool, info: PodInfo, netns_fd: int, ctx: NodeContext) -> None:
        self.info = info
        self.identity = WorkloadIdentity(ctx.trust_domain, info.namespace, info.service_account or "default")
        self.active = 0
        self._pool = pool
        self._ctx = ctx
        self._netns_fd = netns_fd

    def serves_namespace_of(self, netns_fd: int) -> bool:
        """Whether ``netns_fd`` is this pod's network namespace."""
        return same_namespace(netns_fd, self._netns_fd)

    async def start(self) -> None:
        """Has every live worker bind the pod's listeners; raises (after undoing the others) if one
        cannot, or if no worker runs, so the node agent's add fails closed."""
        self._ctx.certs.prefetch([self.identity])
        links = self._pool.live_links()
        if not links:
            raise WorkerGoneError(
                "no ztunnel worker is running to serve the pod",
                hint="the workers are starting again; the node agent retries the pod",
            )
        self._pool.pods[self.info.uid] = self
        results = await asyncio.gather(*(self.add_to(link) for link in links), return_exceptions=True)
        served = [r for r in results if r == ""]
        errors = [
            f"worker {link.index}: {r}"
            for link, r in zip(links, results, strict=True)
            if r and not isinstance(r, WorkerGoneError)  # a worker that died gets the pod again
        ]
        if errors or not served:
            del self._pool.pods[self.info.uid]
            await self._remove_from(links)
            raise MeshError(
                "; ".join(errors) or "every ztunnel worker went away while taking the pod",
                hint="see the workers' proxy.start_failed logs; the node agent retries the pod",
            )

    def close_revoked(self, revocation: Revocation) -> int:
        """Nothing here: the workers hold the pod's connections, and each applies the CRL file itself
        (``--crl-file`` is passed on to them)."""
        return 0

    async def add_to(self, link: WorkerLink) -> str:
        """Hands the pod to one worker; returns its error ("" when it serves the pod)."""
        request = zds_pb2.WorkloadRequest(
            add=zds_pb2.AddWorkload(
                uid=self.info.uid,
                workload_info=zds_pb2.WorkloadInfo(
                    name=self.info.name,
                    namespace=self.info.namespace,
                    service_account=self.info.service_account,
                ),
            )
        )
        message = Message("pod", body=request.SerializeToString(), fd=os.dup(self._netns_fd))
        reply = await link.request(message)
        return str(reply.fields.get("error", ""))

    async def stop(self, *, deadline: float = 5.0) -> int:
        """Has the workers drop the pod (at once, as a deleted pod is) and releases the netns fd.
        While the pool drains, the workers drain their pods themselves (see :meth:`WorkerPool.drain`)."""
        if self._pool.pods.get(self.info.uid) is self:
            del self._pool.pods[self.info.uid]
        try:
            if not self._pool.draining:
                await self._remove_from(self._pool.live_links())
        finally:
            with contextlib.suppress(OSError):
                os.close(self._netns_fd)
        return 0

    async def _remove_from(self, links: Sequence[WorkerLink]) -> None:
        request = zds_pb2.WorkloadRequest()
        getattr(request, "del").uid = self.info.uid  # "del" is a Python keyword
        body = request.SerializeToString()
        removals = (link.request(Message("pod", body=body)) for link in links)
        await asyncio.gather(*removals, return_exceptions=True)


def worker_command(
    *, node: str, trust_domain: str, log_format: str, log_level: str, drain_deadline: float,
    max_connections: int | None, workers: int, local_config: str | None, crl_file: str | None,
) -> list[str]:  # fmt: skip
    """The argv of a worker process for ztunnel's settings. ``max_connections`` is the node's limit:
    each of the ``workers`` serves its share (:func:`worker_share`)."""
    command = [
        sys.executable, "-m", "ztunnel.workers", "--node", node, "--trust-domain", trust_domain,
        "--log-format", log_format, "--log-level", log_level, "--drain-deadline", str(drain_deadline),
    ]  # fmt: skip
    if max_connections is not None:
        command += ["--max-connections", str(worker_share(max_connections, workers))]
    if local_config is not None:
        command += ["--local-config", local_config]
    if crl_file is not None:
        command += ["--crl-file", crl_file]
    return command


def worker_share(limit: int, workers: int) -> int:
    """Each worker's part of a node-wide connection limit, rounded up: the kernel spreads new
    connections over the workers' SO_REUSEPORT listeners by hash, so each worker enforces its part,
    and the node serves at most ``limit`` plus ``workers - 1``."""
    return -(-limit // workers)
