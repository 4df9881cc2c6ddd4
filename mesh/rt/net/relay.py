"""Byte relays between two transports (a TCP socket and an HBONE stream, or two TCP sockets).

Each side gets a :class:`RelayEnd` protocol; :func:`link` joins two of them. There is no task and no
copy in between: ``data_received`` on one side is a ``write`` on the other, and backpressure is the
transports' own: when one side's write buffer passes its high-water mark (``pause_writing``), the other
side stops reading until it drains (``resume_writing``). For an HBONE stream "stop reading" means "stop
giving the peer HTTP/2 window back", so the bound holds end to end.

Bytes that arrive before the other side exists (calibration trap 9: uvloop may deliver data even after
``pause_reading`` in ``connection_made``) wait in a small backlog; :func:`link` flushes it before
anything else can be written, in one synchronous step, so bytes never overtake each other (trap 10).

Half-close: EOF on one side is ``write_eof`` on the other (END_STREAM for a stream). When both
directions ended, both transports close. A reset travels as a reset: a TCP RST becomes RST_STREAM
CONNECT_ERROR (RFC 9113 section 8.5) and a stream reset becomes a TCP RST.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import cast

__all__ = ["RelayEnd", "StreamTransport", "link", "reset_transport", "splice"]

_LINGER_RST = struct.pack("ii", 1, 0)


class StreamTransport(asyncio.Transport):
    """A transport that is one stream of a multiplexed connection (an HBONE CONNECT stream): it
    finishes by itself once both directions ended, hands data to the protocol :meth:`attach` gave
    it (no ``set_protocol``), and ends abruptly with a stream reset rather than a TCP RST."""

    def attach(self, protocol: asyncio.Protocol) -> None:
        """Connects ``protocol`` and hands it anything already received."""
        raise NotImplementedError

    def reset_stream(self) -> None:
        """Ends the stream abruptly (what a TCP RST is to a socket)."""
        raise NotImplementedError


class RelayEnd(asyncio.Protocol):
    """One side of a relay; forwards what its transport receives to the linked peer's transport."""

    accepts_memoryview = True
    """An HBONE stream may hand this protocol views of the TLS read buffer instead of copies."""

    def __init__(self, *, backlog_cap: int = 256 * 1024, count_bytes: bool = False) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: RelayEnd | None = None
        self.count_bytes = count_bytes
        self.bytes_in = 0
        """Bytes this end's transport read (kept only with ``count_bytes``, for telemetry)."""
        self._backlog: list[bytes] = []
        self._backlog_bytes = 0
        self._backlog_cap = backlog_cap
        self._eof = False
        self._write_paused = False
        self._lost = False
        self._lost_exc: BaseException | None = None
        self.closed: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remembers the transport."""
        transport = cast(asyncio.Transport, transport)  # uvloop transports are not subclasses
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        """Keeps the bytes until :func:`link` (which then replaces this with the peer's ``write``)."""
        if self.count_bytes:
            self.bytes_in += len(data)
        peer = self.peer
        if peer is not None:
            assert peer.transport is not None
            peer.transport.write(data)
            return
        self._backlog.append(bytes(data))
        self._backlog_bytes += len(data)
        if self._backlog_bytes >= self._backlog_cap and self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        """Half-close: the peer's transport writes EOF; stays open for the other direction. Once both
        directions ended, two TCP transports are closed (an HBONE stream ends by itself)."""
        self._eof = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer._lost:
            _write_eof(peer.transport)
            if peer._eof and _both_tcp(self, peer):
                peer.transport.close()  # after what it still has to write
                return False  # and this one closes too
        # keep the other direction open; a TLS transport has no half-close (trap 11) and closes
        return self.transport is None or self.transport.can_write_eof()

    def pause_writing(self) -> None:
        """Our transport is full: the peer stops reading."""
        self._write_paused = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer._lost:
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        """Our transport drained: the peer reads again."""
        self._write_paused = False
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer._lost:
            peer.transport.resume_reading()

    def connection_lost(self, exc: BaseException | None) -> None:
        """Ends the peer the same way: closed after a clean end, reset after an error."""
        if self._lost:
            return
        self._lost = True
        self._lost_exc = exc
        self.__dict__.pop("data_received", None)  # undo the short circuit of link()
        self._backlog.clear()
        peer = self.peer
        if peer is not None:
            _end_peer(peer, exc)
        if not self.closed.done():
            self.closed.set_result(exc)


def _both_tcp(a: RelayEnd, b: RelayEnd) -> bool:
    """Neither side is a stream (a stream finishes by itself once both directions ended)."""
    return not isinstance(a.transport, StreamTransport) and not isinstance(b.transport, StreamTransport)


def _end_peer(peer: RelayEnd, exc: BaseException | None) -> None:
    if peer._lost or peer.transport is None:
        return
    if exc is None:
        peer.transport.close()  # after what it still has to write
    else:
        reset_transport(peer.transport)


def link(a: RelayEnd, b: RelayEnd) -> None:
    """Joins two ends whose transports exist, flushing what either received before, in order."""
    assert a.transport is not None and b.transport is not None, "link ends after connection_made"
    a.peer, b.peer = b, a
    for src, dst in ((a, b), (b, a)):
        if src._lost:
            _end_peer(dst, src._lost_exc)
            continue
        assert dst.transport is not None
        if src._backlog:
            backlog, src._backlog, src._backlog_bytes = src._backlog, [], 0
            for chunk in backlog:
                dst.transport.write(chunk)
            src.transport.resume_reading()  # type: ignore[union-attr]
        if src._eof:
            _write_eof(dst.transport)
        if src._write_paused:
            dst.transport.pause_reading()
    if a._eof and b._eof and _both_tcp(a, b):
        for end in (a, b):  # both directions ended before the link: nothing more can flow
            if not end._lost and end.transport is not None:
                end.transport.close()
        return
    _short_circuit(a, b)
    _short_circuit(b, a)


def _write_eof(transport: asyncio.Transport) -> None:
    """Half-closes, or closes (after pending writes) a transport without half-close, such as TLS."""
    if transport.can_write_eof():
        transport.write_eof()
    else:
        transport.close()


def _short_circuit(src: RelayEnd, dst: RelayEnd) -> None:
    """From now on bytes ``src``'s transport reads go straight to ``dst``'s transport ``write``.

    No Python frame in between: the instance attribute shadows :meth:`RelayEnd.data_received`
    (uvloop caches ``data_received`` when a protocol is set, so the protocol is set again).
    """
    if src._lost or dst._lost or src.transport is None or dst.transport is None:
        return
    write = dst.transport.write
    if src.count_bytes:  # one small frame per read, so telemetry sees every byte

        def counted(data: bytes) -> None:
            src.bytes_in += len(data)
            write(data)

        src.data_received = counted  # type: ignore[method-assign]
    else:
        src.data_received = write  # type: ignore[method-assign]
    if not isinstance(src.transport, StreamTransport):
        src.transport.set_protocol(src)


def splice(end: RelayEnd, stream: StreamTransport) -> RelayEnd:
    """Relays the transport behind ``end`` (e.g. an accepted TCP connection) through ``stream``.

    The stream's end counts bytes when ``end`` does."""
    stream_end = RelayEnd(count_bytes=end.count_bytes)
    stream.attach(stream_end)
    link(end, stream_end)
    return stream_end


def reset_transport(transport: asyncio.BaseTransport) -> None:
    """Ends ``transport`` abruptly: RST_STREAM CONNECT_ERROR for a stream, a TCP RST for a socket."""
    if isinstance(transport, StreamTransport):
        transport.reset_stream()
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    transport = cast(asyncio.Transport, transport)  # uvloop transports are not subclasses
    transport.abort()
