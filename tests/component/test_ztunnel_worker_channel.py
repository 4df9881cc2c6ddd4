"""The parent/worker channel over a real SEQPACKET socketpair, and a worker's certificates."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from mesh.certs import IssuedCertificate
from mesh.identity.spiffe import WorkloadIdentity
from mesh.rt.certs import NoValidCertificate
from mesh.testing.clock import FakeClock
from ztunnel.workers.certs import ParentCertificates, certificate_fields, certificate_from_fields
from ztunnel.workers.channel import CHUNK, Message, WorkerChannel, WorkerChannelError

pytestmark = pytest.mark.timeout(30)

CLIENT = WorkloadIdentity("cluster.local", "demo", "client")


@pytest.mark.parametrize("size", [0, 100, CHUNK - 10, CHUNK * 3 + 7])
async def test_messages_of_any_size_arrive_whole_in_order_with_their_fd(size: int) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    parent, worker = WorkerChannel(ours, peer="worker 0"), WorkerChannel(theirs, peer="ztunnel")
    parent.start()
    read, write = os.pipe()
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    parent.post(Message("pod", {"id": 1}, body, fd=read))
    parent.post(Message("stats", {"id": 2}))
    first = await worker.recv()
    second = await worker.recv()
    assert (first.kind, first.fields, first.body) == ("pod", {"id": 1}, body)
    assert first.fd is not None  # the sender's copy is closed once sent; this one reads the pipe
    os.write(write, b"through")
    assert os.read(first.fd, 16) == b"through"
    assert (second.kind, second.fields, second.fd) == ("stats", {"id": 2}, None)
    for fd in (first.fd, write):
        os.close(fd)
    await parent.close()
    await worker.close()


async def test_the_other_end_going_away_is_a_channel_error() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    worker = WorkerChannel(theirs, peer="ztunnel")
    ours.close()
    with pytest.raises(WorkerChannelError, match="ztunnel closed the connection"):
        await worker.recv()
    await worker.close()


def _cert(not_after: float) -> IssuedCertificate:
    return IssuedCertificate(CLIENT, b"KEY", b"CHAIN", b"ROOTS", 7, not_after - 3600, not_after)


async def test_a_worker_asks_once_and_every_caller_gets_the_pushed_certificate() -> None:
    asked: list[WorkloadIdentity] = []
    clock = FakeClock()
    certs = ParentCertificates(ask=asked.append, clock=clock)
    with pytest.raises(NoValidCertificate, match="in this worker yet"):
        certs.current(CLIENT)
    waiters = [asyncio.ensure_future(certs.get(CLIENT)) for _ in range(3)]
    await asyncio.sleep(0)
    assert asked == [CLIENT]  # one request, whoever needs it
    pushed = certificate_from_fields(certificate_fields(_cert(clock.now() + 3600)))
    certs.install(pushed)
    assert [await w for w in waiters] == [pushed] * 3
    assert certs.current(CLIENT) == pushed and certs.usable(CLIENT)
    clock.advance(3601)  # expired and not renewed: never presented
    assert not certs.usable(CLIENT)
    with pytest.raises(NoValidCertificate):
        certs.current(CLIENT)
    assert asked == [CLIENT, CLIENT]


async def test_a_failed_fetch_fails_the_waiting_callers_closed() -> None:
    certs = ParentCertificates(ask=lambda identity: None, clock=FakeClock())
    waiting = asyncio.ensure_future(certs.get(CLIENT))
    await asyncio.sleep(0)
    certs.failed(CLIENT, "the CA said no")
    with pytest.raises(NoValidCertificate, match="the CA said no"):
        await waiting
    await certs.close()
    with pytest.raises(NoValidCertificate, match="shutting down"):
        await certs.get(CLIENT)
