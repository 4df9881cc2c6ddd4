"""The node agent's end of ZDS: a SEQPACKET listener that ztunnel connects to.

On each connection ztunnel says ``ZdsHello{V1}``; the agent replays its whole enrolled set (``add``
with a freshly opened netns fd, or ``keep`` when the namespace cannot be opened) and then
``snapshot_sent``. Requests are strict request/ack, one in flight per connection. New pods are
added on the newest connection only, deletes go to every connection (so an upgrading ztunnel and
its successor both let go). Between requests the agent watches each connection for readability:
ztunnel sends nothing unsolicited, so readable means it went away (or broke the protocol), and the
connection is dropped at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog
from google.protobuf.message import DecodeError

from mesh.api.istio.workload.zds import zds_pb2
from mesh.errors import MeshError
from ztunnel.zds import MAX_MESSAGE, ZdsChannel, ZdsError, decode_response

__all__ = [
    "ZdsRejectedError",
    "ZdsServer",
    "ZdsUnavailableError",
    "ZdsWorkload",
    "add_message",
    "del_message",
    "keep_message",
    "snapshot_message",
]

Logger = structlog.typing.FilteringBoundLogger


class ZdsUnavailableError(MeshError):
    """No ztunnel is connected, or it went away or did not answer in time."""


class ZdsRejectedError(MeshError):
    """ztunnel answered a request with an error (a NACK)."""


@dataclass(frozen=True, slots=True)
class ZdsWorkload:
    """What ztunnel is told about one enrolled pod."""

    uid: str
    name: str
    namespace: str
    service_account: str
    netns: str


def add_message(workload: ZdsWorkload) -> bytes:
    """``WorkloadRequest{add{uid, workload_info}}`` (the netns fd travels beside it)."""
    info = zds_pb2.WorkloadInfo(
        name=workload.name, namespace=workload.namespace, service_account=workload.service_account
    )
    request = zds_pb2.WorkloadRequest(add=zds_pb2.AddWorkload(uid=workload.uid, workload_info=info))
    return request.SerializeToString()


def keep_message(uid: str) -> bytes:
    """``WorkloadRequest{keep{uid}}``."""
    return zds_pb2.WorkloadRequest(keep=zds_pb2.KeepWorkload(uid=uid)).SerializeToString()


def del_message(uid: str) -> bytes:
    """``WorkloadRequest{del{uid}}``."""
    request = zds_pb2.WorkloadRequest()
    payload = getattr(request, "del")  # "del" is a Python keyword
    payload.SetInParent()
    payload.uid = uid
    return request.SerializeToString()


def snapshot_message() -> bytes:
    """``WorkloadRequest{snapshot_sent{}}``."""
    return zds_pb2.WorkloadRequest(snapshot_sent=zds_pb2.SnapshotSent()).SerializeToString()


class _Connection:
    """One connected ztunnel: strict request/ack under a lock, idle watch between requests."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        ident: int,
        ack_timeout: float,
        on_lost: Callable[[_Connection], None],
        log: Logger,
    ) -> None:
        self.ident = ident
        self.lock = asyncio.Lock()
        self.closed = False
        self._sock = sock
        self._channel = ZdsChannel(sock)
        self._fileno = sock.fileno()
        self._loop = asyncio.get_running_loop()
        self._timeout = ack_timeout
        self._on_lost = on_lost
        self._log = log.bind(**{"zds.conn": ident})

    async def hello(self) -> None:
        """Waits for ``ZdsHello{V1}`` (bound it with ``asyncio.timeout``)."""
        data, fd = await self._channel.recv()
        if fd is not None:
            os.close(fd)
        try:
            hello = zds_pb2.ZdsHello.FromString(data)
        except DecodeError as exc:
            raise ZdsError(f"undecodable ZdsHello: {exc}") from None
        if hello.version != zds_pb2.V1:
            raise ZdsError(f"ztunnel speaks ZDS version {hello.version}, this agent speaks V1 (1)")

    async def request(self, message: bytes, *, fd: int | None = None) -> str:
        """Sends one request and returns the ack's error text ("" = success); holds ``lock``."""
        if self.closed:
            raise ZdsError("the ztunnel connection is closed")
        self.unwatch()
        try:
            await self._channel.send(message, fd=fd)
            async with asyncio.timeout(self._timeout):
                data, extra = await self._channel.recv()
        except TimeoutError:
            self.lose(f"no ack within {self._timeout:g} s")
            raise ZdsError(f"ztunnel did not ack within {self._timeout:g} s") from None
        except ZdsError as exc:
            self.lose(exc.message)
            raise
        if extra is not None:
            os.close(extra)
        try:
            ack = decode_response(data).ack
        except ZdsError as exc:
            self.lose(exc.message)
            raise
        self.watch()
        return ack.error

    def watch(self) -> None:
        """Starts watching for readability while idle."""
        if not self.closed:
            self._loop.add_reader(self._fileno, self._idle_readable)

    def unwatch(self) -> None:
        """Stops the idle watch (a request is about to read)."""
        if not self.closed:
            self._loop.remove_reader(self._fileno)

    def _idle_readable(self) -> None:
        try:
            data = self._sock.recv(MAX_MESSAGE, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self.lose("unsolicited message from ztunnel" if data else "ztunnel closed the connection")

    def lose(self, reason: str) -> None:
        """Drops the connection (idempotent)."""
        if self.closed:
            return
        self.unwatch()
        self.closed = True
        self._channel.close()
        self._log.info("zds.disconnected", reason=reason)
        self._on_lost(self)


class ZdsServer:
    """Listens on ``path`` for ztunnel; ``snapshot`` gives the enrolled set to replay."""

    def __init__(
        self,
        path: str,
        *,
        snapshot: Callable[[], Iterable[ZdsWorkload]],
        log: Logger,
        on_ready: Callable[[], None] | None = None,
        ack_timeout: float = 5.0,
        hello_timeout: float = 5.0,
    ) -> None:
        self.path = path
        self._snapshot = snapshot
        self._log = log
        self._on_ready = on_ready
        self._ack_timeout = ack_timeout
        self._hello_timeout = hello_timeout
        self._conns: list[_Connection] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        """Whether a ztunnel is connected (and has said hello)."""
        return bool(self._conns)

    async def start(self) -> None:
        """Binds the socket (replacing a stale one) and starts accepting."""
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            listener.bind(self.path)
            listener.listen(16)
        except OSError as exc:
            listener.close()
            raise ZdsUnavailableError(f"cannot listen on the ZDS socket {self.path}: {exc}") from None
        listener.setblocking(False)
        self._listener = listener
        self._accepting = asyncio.get_running_loop().create_task(self._accept_loop(listener))

    async def close(self) -> None:
        """Stops accepting, drops every connection and removes the socket file."""
        tasks = [t for t in (self._accepting, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for conn in list(self._conns):
            conn.lose("the node agent is stopping")
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(listener)
            task = loop.create_task(self._serve(sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, sock: socket.socket) -> None:
        conn = _Connection(
            sock, ident=next(self._ids), ack_timeout=self._ack_timeout, on_lost=self._lost, log=self._log
        )
        try:
            async with asyncio.timeout(self._hello_timeout):
                await conn.hello()
        except TimeoutError:
            self._log.warning("zds.hello_failed", **{"zds.conn": conn.ident, "error": "no ZdsHello in time"})
            conn.closed = True
            sock.close()
            return
        except ZdsError as exc:
            self._log.warning("zds.hello_failed", **{"zds.conn": conn.ident, "error": exc.message})
            conn.closed = True
            sock.close()
            return
        async with conn.lock:
            self._conns.append(conn)
            self._log.info("zds.connected", **{"zds.conn": conn.ident, "zds.connections": len(self._conns)})
            try:
                await self._replay(conn)
            except ZdsError as exc:
                self._log.warning("zds.snapshot_failed", **{"zds.conn": conn.ident, "error": exc.message})
                return
        if self._on_ready is not None:
            self._on_ready()

    async def _replay(self, conn: _Connection) -> None:
        adds = keeps = 0
        for workload in list(self._snapshot()):
            try:
                fd = os.open(workload.netns, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                error = await conn.request(keep_message(workload.uid))
                keeps += 1
            else:
                try:
                    error = await conn.request(add_message(workload), fd=fd)
                finally:
                    os.close(fd)
                adds += 1
            if error:
                self._log.warning(
                    "zds.snapshot_nack", **{"zds.conn": conn.ident, "zds.uid": workload.uid, "error": error}
                )
        error = await conn.request(snapshot_message())
        if error:
            self._log.warning("zds.snapshot_nack", **{"zds.conn": conn.ident, "error": error})
        self._log.info("zds.snapshot_sent", **{"zds.conn": conn.ident, "zds.adds": adds, "zds.keeps": keeps})

    def _lost(self, conn: _Connection) -> None:
        if conn in self._conns:
            self._conns.remove(conn)

    async def add(self, workload: ZdsWorkload) -> None:
        """Hands the pod's netns to the newest ztunnel and waits for its ack.

        Raises ZdsUnavailableError (no ztunnel, it went away, no ack in time) or ZdsRejectedError (NACK).
        """
        if not self._conns:
            raise ZdsUnavailableError(
                f"no ztunnel is connected to {self.path}",
                hint="start ztunnel on this node; the pod is retried",
            )
        conn = self._conns[-1]
        try:
            fd = os.open(workload.netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise ZdsUnavailableError(
                f"cannot open the pod's network namespace {workload.netns}: {exc.strerror}"
            ) from None
        try:
            async with conn.lock:
                error = await conn.request(add_message(workload), fd=fd)
        except ZdsError as exc:
            raise ZdsUnavailableError(f"ztunnel connection lost during add: {exc.message}") from None
        finally:
            os.close(fd)
        if error:
            raise ZdsRejectedError(f"ztunnel refused pod {workload.uid}: {error}", hint="see ztunnel's log")

    async def delete(self, uid: str) -> int:
        """Tells every connected ztunnel to drop the pod; returns how many acked it."""
        acked = 0
        for conn in list(self._conns):
            try:
                async with conn.lock:
                    error = await conn.request(del_message(uid))
            except ZdsError as exc:
                self._log.warning(
                    "zds.del_failed", **{"zds.conn": conn.ident, "zds.uid": uid, "error": exc.message}
                )
                continue
            if error:
                self._log.warning("zds.del_nack", **{"zds.conn": conn.ident, "zds.uid": uid, "error": error})
            else:
                acked += 1
        return acked
