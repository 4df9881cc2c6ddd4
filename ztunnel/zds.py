"""The ZDS node protocol: one protobuf per SEQPACKET message, the netns fd as SCM_RIGHTS.

ztunnel connects to the node agent's socket and says ``ZdsHello{V1}``; the agent then sends
``WorkloadRequest``s (add with the pod's netns fd, keep, del, snapshot_sent), each answered by one
``WorkloadResponse{ack}`` before the next (strict request/ack). Both ends use ``ZdsChannel``.
"""

from __future__ import annotations

import array
import asyncio
import os
import socket

from google.protobuf.message import DecodeError

from mesh.api.istio.workload.zds import zds_pb2
from mesh.errors import MeshError

__all__ = ["MAX_MESSAGE", "ZdsChannel", "ZdsError", "connect", "decode_request", "decode_response"]

MAX_MESSAGE = 1024
_FD_SPACE = socket.CMSG_SPACE(array.array("i", [0]).itemsize)


class ZdsError(MeshError):
    """The peer broke the ZDS protocol or went away."""


class ZdsChannel:
    """A connected SEQPACKET socket carrying ZDS messages, driven by the running event loop."""

    def __init__(
        self, sock: socket.socket, *, max_message: int = MAX_MESSAGE, peer: str = "ZDS peer"
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._max = max_message
        self._peer = peer

    async def send(self, message: bytes, *, fd: int | None = None) -> None:
        """Sends one message, with ``fd`` attached as SCM_RIGHTS when given."""
        if len(message) > self._max:
            raise ZdsError(f"message of {len(message)} bytes to the {self._peer} exceeds {self._max}")
        ancillary = [] if fd is None else [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
        while True:
            try:
                self._sock.sendmsg([message], ancillary)
                return
            except BlockingIOError:
                await self._wait(writable=True)
            except OSError as exc:
                raise ZdsError(f"{self._peer} went away while sending: {exc}") from None

    async def recv(self) -> tuple[bytes, int | None]:
        """Receives one message and the fd that came with it (the caller owns and closes it)."""
        while True:
            try:
                data, ancdata, flags, _ = self._sock.recvmsg(self._max, _FD_SPACE)
                break
            except BlockingIOError:
                await self._wait(writable=False)
            except OSError as exc:
                raise ZdsError(f"{self._peer} went away while receiving: {exc}") from None
        fds = _fds(ancdata)
        if not data and not fds:
            raise ZdsError(f"{self._peer} closed the connection")
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            for extra in fds:
                os.close(extra)
            raise ZdsError(
                f"message from the {self._peer} larger than {self._max} bytes or with more than one fd"
            )
        if len(fds) > 1:
            for extra in fds:
                os.close(extra)
            raise ZdsError(f"a message from the {self._peer} carries at most one file descriptor")
        return data, (fds[0] if fds else None)

    def close(self) -> None:
        """Closes the socket."""
        self._sock.close()

    async def _wait(self, *, writable: bool) -> None:
        future: asyncio.Future[None] = self._loop.create_future()
        fileno = self._sock.fileno()

        def ready() -> None:
            if not future.done():
                future.set_result(None)

        if writable:
            self._loop.add_writer(fileno, ready)
        else:
            self._loop.add_reader(fileno, ready)
        try:
            await future
        finally:
            if writable:
                self._loop.remove_writer(fileno)
            else:
                self._loop.remove_reader(fileno)


async def connect(path: str) -> ZdsChannel:
    """Connects to the node agent's SEQPACKET socket at ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, path)
    except OSError as exc:
        sock.close()
        raise ZdsError(
            f"cannot reach the node agent at {path}: {exc}", hint="is the node agent (ztunnel-cni) running?"
        ) from None
    return ZdsChannel(sock)


def decode_request(data: bytes) -> zds_pb2.WorkloadRequest:
    """Parses a WorkloadRequest; raises ZdsError for garbage or an empty payload."""
    try:
        request = zds_pb2.WorkloadRequest.FromString(data)
    except DecodeError as exc:
        raise ZdsError(f"undecodable ZDS request: {exc}") from None
    if request.WhichOneof("payload") is None:
        raise ZdsError("ZDS request without a payload")
    return request


def decode_response(data: bytes) -> zds_pb2.WorkloadResponse:
    """Parses a WorkloadResponse; raises ZdsError for garbage or a missing ack."""
    try:
        response = zds_pb2.WorkloadResponse.FromString(data)
    except DecodeError as exc:
        raise ZdsError(f"undecodable ZDS response: {exc}") from None
    if not response.HasField("ack"):
        raise ZdsError("ZDS response without an ack")
    return response


def _fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            usable = len(payload) - (len(payload) % received.itemsize)
            received.frombytes(payload[:usable])
            fds.extend(received)
    return fds
