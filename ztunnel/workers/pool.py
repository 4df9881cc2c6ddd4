"""The parent's side of ``--workers N``: starting, feeding, restarting and draining the workers.

Each :class:`WorkerLink` runs one worker process and its channel. On the worker's hello it gets
the config first (everything published so far), then every enrolled pod (with a duplicate of the
pod's netns fd), and from then on every config change, pod change and certificate renewal. A
worker that dies is started again (backoff 0.1 s doubling to 5 s) and gets the whole state again;
meanwhile the other workers' listeners in each pod keep serving. A certificate a worker asks for
is the parent's :class:`CertificateManager`'s: one CA fetch per identity, whatever the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import sys
from collections.abc import Awaitable, Sequence

import structlog

from mesh.api.istio.workload.zds import zds_pb2
from mesh.certs import IssuedCertificate
from mesh.errors import MeshError
from mesh.identity.errors import InvalidSpiffeId
from mesh.identity.spiffe import WorkloadIdentity
from mesh.revocation import Revocation
from mesh.rt.certs import NoValidCertificate
from mesh.rt.xds import XdsState
from ztunnel.context import Certificates, NodeContext
from ztunnel.proxy import PodInfo, same_namespace
from ztunnel.workers.certs import certificate_fields
from ztunnel.workers.channel import Message, WorkerChannel, WorkerChannelError
from ztunnel.workers.mirror import ResourceMirror

__all__ = ["WorkerGoneError", "WorkerLink", "WorkerPool", "WorkerServedPod", "worker_command"]

_RESTART_FIRST = 0.1
_RESTART_CAP = 5.0
_STABLE_AFTER = 10.0
"""A worker that ran this long before dying restarts after the first delay again."""
_REQUEST_TIMEOUT = 10.0
_PING_EVERY = 5.0
_PING_WITHIN = 10.0
"""A worker that answers no ping for this long is killed (and started again): while it is stuck,
the kernel still hands its listeners their share of new connections, which nobody accepts."""
_HELLO_WITHIN = 30.0
_QUESTION_TIMEOUT = 2.0
"""For the HTTP pages' questions: the page answers with the workers that replied within its 5 s."""


class WorkerGoneError(MeshError):
    """The worker a request was for is not running (it died, or is starting again)."""


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
            await asyncio.wait_for(self._draining.wait(), within)

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
        asked = (link.request(Message(kind), within=_QUESTION_TIMEOUT) for link in links)
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

    def _link_live(self) -> None:
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


class WorkerLink:
    """One worker process and its channel, started again when it dies."""

    def __init__(self, pool: WorkerPool, index: int, command: Sequence[str]) -> None:
        self.index = index
        self.starts = 0
        self.pid: int | None = None
        self.live = False
        """Has the config; takes pods, changes and certificates."""
        self.ready = False
        """Live and serving every enrolled pod."""
        self.wanted: set[WorkloadIdentity] = set()
        """The identities this worker asked for (their renewals are pushed to it)."""
        self._pool = pool
        self._command = list(command)
        self._channel: WorkerChannel | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._drained: asyncio.Future[int] | None = None
        self._log = pool.log.bind(worker=index)

    def post(self, message: Message) -> None:
        """Sends without waiting (dropped if the worker is not running: it gets everything again)."""
        if self._channel is not None:
            self._channel.post(message)
        elif message.fd is not None:
            os.close(message.fd)

    async def request(self, message: Message, *, within: float = _REQUEST_TIMEOUT) -> Message:
        """Sends ``message`` and waits for the worker's reply; raises WorkerGoneError if it dies or
        does not answer ``within`` seconds."""
        if self._channel is None:
            if message.fd is not None:
                os.close(message.fd)
            raise WorkerGoneError(f"worker {self.index} is not running")
        ident = next(self._ids)
        reply: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[ident] = reply
        self._channel.post(Message(message.kind, {"id": ident, **message.fields}, message.body, message.fd))
        try:
            return await asyncio.wait_for(reply, within)
        except TimeoutError:
            gone = f"worker {self.index} did not answer {message.kind} within {within} s"
            raise WorkerGoneError(gone) from None
        finally:
            self._pending.pop(ident, None)

    async def supervise(self) -> None:
        """Runs the worker, and again each time it dies, until the pool drains."""
        loop = asyncio.get_running_loop()
        delay = _RESTART_FIRST
        while not self._pool.draining:
            started = loop.time()
            try:
                code = await self._run_once()
            except Exception as exc:  # a bug here must not leave the node one worker short for good
                self._log.error("worker.supervision_failed", error=repr(exc))
                code = None
            if self._pool.draining:
                return
            if loop.time() - started > _STABLE_AFTER:
                delay = _RESTART_FIRST
            self._log.warning("worker.exited", pid=self.pid, exit_code=code, restart_in=delay)
            await self._pool.wait_draining(within=delay)  # a drain ends the wait at once
            delay = min(delay * 2, _RESTART_CAP)

    async def drain(self, deadline: float) -> int:
        """Tells the worker to drain and waits until it exits; the connections it cut."""
        if self._channel is None or self._drained is None:
            return 0
        self._channel.post(Message("drain", {"deadline": deadline}))
        try:
            return await asyncio.wait_for(asyncio.shield(self._drained), deadline + 5.0)
        except TimeoutError:
            self._log.warning("worker.drain_timeout", pid=self.pid)
            self._kill()
            return 0

    async def _run_once(self) -> int | None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = await asyncio.create_subprocess_exec(
                *self._command,
                "--channel-fd",
                str(theirs.fileno()),
                "--index",
                str(self.index),
                pass_fds=(theirs.fileno(),),
            )
        except OSError as exc:
            ours.close()
            self._log.warning("worker.start_failed", error=str(exc))
            return None
        finally:
            theirs.close()
        self._process, self.pid = process, process.pid
        self.starts += 1
        self._drained = asyncio.get_running_loop().create_future()
        channel = self._channel = WorkerChannel(ours, peer=f"worker {self.index}")
        channel.start()
        try:
            await self._serve(channel)
        finally:
            self.live = self.ready = False
            self._channel = None
            self.wanted.clear()
            for reply in self._pending.values():
                if not reply.done():
                    reply.set_exception(WorkerGoneError(f"worker {self.index} went away"))
            for task in self._tasks:
                task.cancel()
            await channel.close()
            code = await self._reap(process)
            if not self._drained.done():
                self._drained.set_result(0)
        return code

    async def _serve(self, channel: WorkerChannel) -> None:
        try:
            try:
                hello = await asyncio.wait_for(channel.recv(), _HELLO_WITHIN)
            except TimeoutError:
                self._log.error("worker.no_hello", pid=self.pid, within=_HELLO_WITHIN)
                self._kill()
                return
            if hello.kind != "hello":
                raise WorkerChannelError(f"worker {self.index} began with {hello.kind!r}, not hello")
            if self._pool.draining:  # started while the pool began draining: it serves nothing
                channel.post(Message("drain", {"deadline": 0.0}))
                while True:
                    self._dispatch(await channel.recv())
            for response in self._pool.mirror.snapshot():  # the config before any pod
                channel.post(Message("config", body=response.SerializeToString()))
            self.live = True
            self._pool._link_live()
            self._log.info("worker.started", pid=self.pid, starts=self.starts)
            self._spawn(self._replay_pods())
            self._spawn(self._watch())
            while True:
                self._dispatch(await channel.recv())
        except WorkerChannelError as exc:
            if not self._pool.draining:
                self._log.warning("worker.channel_closed", error=exc.message)

    def _dispatch(self, message: Message) -> None:
        if message.kind == "reply":
            reply = self._pending.get(message.fields.get("id", -1))
            if reply is not None and not reply.done():
                reply.set_result(message)
        elif message.kind == "certificate_request":
            self._spawn(self._answer_certificate(str(message.fields.get("identity"))))
        elif message.kind == "drained":
            if self._drained is not None and not self._drained.done():
                self._drained.set_result(int(message.fields.get("cut", 0)))
        else:
            self._log.warning("worker.unknown_message", kind=message.kind)
        if message.fd is not None:
            os.close(message.fd)

    async def _watch(self) -> None:
        """Pings the worker every 5 s; kills it when it does not answer within 10 s."""
        while True:
            await asyncio.sleep(_PING_EVERY)
            try:
                await self.request(Message("ping"), within=_PING_WITHIN)
            except WorkerGoneError as exc:
                if not self._pool.draining:  # a draining worker stops reading; it exits by itself
                    self._log.error("worker.unresponsive", pid=self.pid, error=exc.message)
                    self._kill()
                return

    def _kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()

    async def _replay_pods(self) -> None:
        """Hands every enrolled pod to a worker that just started; then it is ready."""
        for pod in list(self._pool.pods.values()):
            try:
                error = await pod.add_to(self)
            except WorkerGoneError:
                return
            if error:
                self._log.warning("worker.pod_failed", uid=pod.info.uid, error=error)
        self.ready = self.live

    async def _answer_certificate(self, uri: str) -> None:
        try:
            identity = WorkloadIdentity.parse(uri)
        except InvalidSpiffeId as exc:
            self._log.warning("worker.bad_certificate_request", identity=uri, error=str(exc))
            return
        self.wanted.add(identity)
        try:
            cert = await self._pool.certs.get(identity)
        except NoValidCertificate as exc:
            self.post(Message("certificate_failed", {"identity": uri, "error": exc.message}))
        else:
            self.post(Message("certificate", certificate_fields(cert)))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reap(self, process: asyncio.subprocess.Process) -> int | None:
        try:
            return await asyncio.wait_for(process.wait(), 5.0)
        except TimeoutError:
            process.kill()
            return await process.wait()


def worker_command(
    *, node: str, trust_domain: str, log_format: str, log_level: str, drain_deadline: float,
    max_connections: int | None, local_config: str | None, crl_file: str | None,
) -> list[str]:  # fmt: skip
    """The argv of a worker process for ztunnel's settings."""
    command = [
        sys.executable, "-m", "ztunnel.workers", "--node", node, "--trust-domain", trust_domain,
        "--log-format", log_format, "--log-level", log_level, "--drain-deadline", str(drain_deadline),
    ]  # fmt: skip
    if max_connections is not None:
        command += ["--max-connections", str(max_connections)]
    if local_config is not None:
        command += ["--local-config", local_config]
    if crl_file is not None:
        command += ["--crl-file", crl_file]
    return command
