"""The relay steps a pod's outbound (:mod:`ztunnel.proxy`) and inbound (:mod:`ztunnel.inbound`) paths
share: a counting relay end on a connected socket, the socket under an accepted end, refusing with a
TCP RST, and the one report when both ends have closed. One copy here, used by both directions.
"""

from __future__ import annotations

import asyncio
import socket

from mesh.rt.net.relay import RelayEnd, reset_transport
from mesh.telemetry import ConnectionRecord
from ztunnel.connections import PolicyHold
from ztunnel.context import NodeContext

__all__ = ["refuse", "relay_end", "report_when_closed", "reset_end", "socket_of"]


async def relay_end(sock: socket.socket) -> RelayEnd:
    """A byte-counting relay end on the connected ``sock``."""
    loop = asyncio.get_running_loop()
    _, end = await loop.create_connection(lambda: RelayEnd(count_bytes=True), sock=sock)
    return end


async def report_when_closed(
    record: ConnectionRecord,
    ctx: NodeContext,
    started: float,
    client_end: RelayEnd,
    server_end: RelayEnd,
    *,
    policy: PolicyHold | None = None,
) -> None:
    """Lists the connection as live (inbound ones with their ``policy`` hold) until both ends have
    closed, then writes its metrics and access-log line."""
    conn_id = ctx.registry.add(record, client_end, server_end, policy=policy)
    try:
        results = await asyncio.gather(client_end.closed, server_end.closed, return_exceptions=True)
    finally:
        ctx.registry.remove(conn_id)
    failed = next((r for r in results if isinstance(r, BaseException)), None)
    ctx.connection_done(
        record,
        bytes_from_client=client_end.bytes_in,
        bytes_to_client=server_end.bytes_in,
        started=started,
        error=str(failed) if failed else "",
    )


def socket_of(end: RelayEnd) -> socket.socket:
    """The accepted socket under ``end`` (the loop's view of it: getsockopt and addresses work)."""
    assert end.transport is not None, "an accepted end has its transport"
    sock: socket.socket = end.transport.get_extra_info("socket")
    return sock


def reset_end(end: RelayEnd) -> None:
    """Refuses an accepted connection with a TCP RST."""
    if end.transport is not None and not end.transport.is_closing():
        reset_transport(end.transport)


def refuse(
    ctx: NodeContext, client_end: RelayEnd, record: ConnectionRecord, *, started: float, flag: str, error: str
) -> None:
    """Resets the client's connection and reports it refused with ``flag`` and ``error``."""
    reset_end(client_end)
    ctx.connection_refused(record, started=started, flags=flag, error=error)
