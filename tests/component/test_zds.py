"""The ZDS channel over a real SEQPACKET socket pair: messages, fd passing, bad input."""

from __future__ import annotations

import os
import socket

import pytest

from mesh.api.istio.workload.zds import zds_pb2
from ztunnel.zds import ZdsChannel, ZdsError, decode_request, decode_response


async def test_add_carries_the_netns_fd_and_gets_an_ack() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    agent, ztunnel = ZdsChannel(left), ZdsChannel(right)
    read_end, write_end = os.pipe()
    try:
        add = zds_pb2.WorkloadRequest(
            add=zds_pb2.AddWorkload(uid="u1", workload_info=zds_pb2.WorkloadInfo(name="p", namespace="demo"))
        )
        await agent.send(add.SerializeToString(), fd=read_end)
        data, fd = await ztunnel.recv()
        assert fd is not None and fd not in (read_end, write_end)
        os.write(write_end, b"x")
        assert os.read(fd, 1) == b"x"  # the same pipe arrived through SCM_RIGHTS
        os.close(fd)
        assert decode_request(data).add.uid == "u1"
        ack = zds_pb2.WorkloadResponse(ack=zds_pb2.Ack(error=""))
        await ztunnel.send(ack.SerializeToString())
        reply, no_fd = await agent.recv()
        assert no_fd is None and decode_response(reply).ack.error == ""
    finally:
        os.close(read_end)
        os.close(write_end)
        agent.close()
        ztunnel.close()


async def test_closed_peer_is_an_error() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    channel = ZdsChannel(left)
    right.close()
    with pytest.raises(ZdsError, match="closed"):
        await channel.recv()
    channel.close()


@pytest.mark.parametrize("data", [b"\xff\xff\xff", b"", b"\x0a\x02\x0a"])
def test_garbage_requests_are_rejected(data: bytes) -> None:
    with pytest.raises(ZdsError):
        decode_request(data)


async def test_oversized_message_is_refused() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    channel = ZdsChannel(left)
    try:
        with pytest.raises(ZdsError, match="exceeds"):
            await channel.send(b"x" * 2000)
    finally:
        channel.close()
        right.close()
