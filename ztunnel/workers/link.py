"""One worker process of ``--workers N`` and its channel, as the parent runs it.

On the worker's hello it gets the config first (everything published so far), then every enrolled
pod (with a duplicate of the pod's netns fd), and from then on what the pool sends it. A worker
that dies, or stops answering pings, is started again (backoff 0.1 s doubling to 5 s) and gets the
whole state again. A certificate it asks for is the parent's: one CA fetch per identity.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING

from mesh.errors import MeshError
from mesh.identity.errors import InvalidSpiffeId
from mesh.identity.spiffe import WorkloadIdentity
from mesh.rt.certs import NoValidCertificate
from ztunnel.workers.certs import certificate_fields
from ztunnel.workers.channel import Message, WorkerChannel, WorkerChannelError

if TYPE_CHECKING:
    from ztunnel.workers.pool import WorkerPool

__all__ = ["QUESTION_TIMEOUT", "WorkerGoneError", "WorkerLink"]

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
QUESTION_TIMEOUT = 2.0
"""For the HTTP pages' questions: the page answers with the workers that replied within its 5 s."""


class WorkerGoneError(MeshError):
    """The worker a request was for is not running (it died, or is starting again)."""


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
            async with asyncio.timeout(within):
                return await reply
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
            async with asyncio.timeout(deadline + 5.0):
                return await asyncio.shield(self._drained)
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
                async with asyncio.timeout(_HELLO_WITHIN):
                    hello = await channel.recv()
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
            self._pool.link_live()
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
            async with asyncio.timeout(5.0):
                return await process.wait()
        except TimeoutError:
            process.kill()
            return await process.wait()
