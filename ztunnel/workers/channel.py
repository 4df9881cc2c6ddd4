"""The channel between ztunnel and one of its worker processes: a SEQPACKET socketpair.

A message is a kind, a small JSON header, an optional binary body (serialized protobuf) and at
most one file descriptor (a pod's netns, as SCM_RIGHTS). Messages larger than one packet are cut
into chunks, each led by one byte saying whether more follow; the fd rides on the first chunk.
Sending goes through a queue and one writer task, so callers on the data path (a certificate
request from inside a TLS handshake) post without waiting and messages never interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from ztunnel.zds import ZdsChannel, ZdsError

__all__ = ["CHUNK", "Message", "WorkerChannel", "WorkerChannelError"]

CHUNK = 60 * 1024
"""Payload bytes per packet: well under the default socket buffer a SEQPACKET message must fit in."""
_MORE, _LAST = b"\x01", b"\x00"
_HEADER_LEN = struct.Struct(">I")
MAX_MESSAGE = 256 * 1024 * 1024
"""A whole message (a full config snapshot of a large mesh is the largest)."""


class WorkerChannelError(ZdsError):
    """The other end broke the framing, sent nonsense, or went away."""


@dataclass(frozen=True, slots=True)
class Message:
    """One message: ``kind`` says what it is, ``fields`` carries its JSON values."""

    kind: str
    fields: dict[str, Any] = field(default_factory=dict)
    body: bytes = b""
    fd: int | None = None

    def encode(self) -> bytes:
        """The header length, the JSON header (kind and fields) and the body."""
        header = json.dumps({"kind": self.kind, **self.fields}, separators=(",", ":")).encode()
        return _HEADER_LEN.pack(len(header)) + header + self.body

    @classmethod
    def decode(cls, data: bytes, fd: int | None) -> Message:
        """The message in ``data``; raises WorkerChannelError when it is not one."""
        if len(data) < _HEADER_LEN.size:
            raise WorkerChannelError(f"a worker message of {len(data)} bytes has no header")
        (length,) = _HEADER_LEN.unpack_from(data)
        try:
            header = json.loads(data[_HEADER_LEN.size : _HEADER_LEN.size + length])
        except ValueError as exc:
            raise WorkerChannelError(f"undecodable worker message header: {exc}") from None
        if not isinstance(header, dict) or not isinstance(header.get("kind"), str):
            raise WorkerChannelError("a worker message header is not an object with a kind")
        kind = header.pop("kind")
        return cls(kind, header, data[_HEADER_LEN.size + length :], fd)


class WorkerChannel:
    """One end of the socketpair. ``peer`` names the other end in errors ("worker 1", "ztunnel")."""

    def __init__(self, sock: socket.socket, *, peer: str) -> None:
        self._packets = ZdsChannel(sock, max_message=CHUNK + 1, peer=peer)
        self._peer = peer
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self.error = ""
        """Why sending stopped (empty while it works)."""

    def start(self) -> None:
        """Starts the writer task (once)."""
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    def post(self, message: Message) -> None:
        """Queues ``message`` for sending; the channel owns (and closes) its fd once sent."""
        self._queue.put_nowait(message)

    async def recv(self) -> Message:
        """The next whole message; raises WorkerChannelError when the peer is gone or misbehaves."""
        parts: list[bytes] = []
        size = 0
        fd: int | None = None
        while True:
            try:
                packet, packet_fd = await self._packets.recv()
            except WorkerChannelError:
                raise
            except ZdsError as exc:
                _close(fd)
                raise WorkerChannelError(exc.message) from None
            if packet_fd is not None:
                if fd is not None or parts:
                    os.close(packet_fd)
                    _close(fd)
                    raise WorkerChannelError(f"the {self._peer} sent an fd on a continuation chunk")
                fd = packet_fd
            size += len(packet) - 1
            if size > MAX_MESSAGE:
                _close(fd)
                raise WorkerChannelError(f"a message from the {self._peer} exceeds {MAX_MESSAGE} bytes")
            parts.append(packet[1:])
            if packet[:1] != _MORE:
                try:
                    return Message.decode(b"".join(parts), fd)
                except WorkerChannelError:
                    _close(fd)
                    raise

    async def close(self) -> None:
        """Flushes what is queued (briefly), stops the writer and closes the socket."""
        if self._writer is not None:
            self._queue.put_nowait(None)
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(1.0):
                    await asyncio.shield(self._writer)
            self._writer.cancel()
        while not self._queue.empty():
            leftover = self._queue.get_nowait()
            if leftover is not None:
                _close(leftover.fd)
        self._packets.close()

    async def _write_loop(self) -> None:
        while (message := await self._queue.get()) is not None:
            try:
                await self._send(message)
            except ZdsError as exc:
                self.error = exc.message
                return
            finally:
                _close(message.fd)

    async def _send(self, message: Message) -> None:
        data = message.encode()
        offsets = range(0, max(len(data), 1), CHUNK)
        for offset in offsets:
            more = _MORE if offset + CHUNK < len(data) else _LAST
            fd = message.fd if offset == 0 else None
            await self._packets.send(more + data[offset : offset + CHUNK], fd=fd)


def _close(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
