"""The agent's ZDS server against fake ztunnels over the real SEQPACKET socket: snapshot replay,
netns fds, adds to the newest connection, dels to all, NACKs, timeouts, disconnects."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from mesh.api.istio.workload.zds import zds_pb2
from mesh.testing.polling import wait_until
from tests.component.node_agent_fakes import FakeZtunnel
from ztunnel.cni.zds_server import ZdsRejectedError, ZdsServer, ZdsUnavailableError, ZdsWorkload


class Snapshot(list[ZdsWorkload]):
    def __call__(self) -> list[ZdsWorkload]:
        return list(self)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[ZdsServer, Snapshot, list[str]]]:
    snapshot, ready = Snapshot(), []
    zds = ZdsServer(
        str(tmp_path / "ztunnel.sock"),
        snapshot=snapshot,
        on_ready=lambda: ready.append("ready"),
        ack_timeout=0.5,
        hello_timeout=0.5,
        log=structlog.get_logger(),
    )
    await zds.start()
    try:
        yield zds, snapshot, ready
    finally:
        await zds.close()
    assert not _exists(zds.path)


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _workload(tmp_path: Path, name: str) -> ZdsWorkload:
    netns = tmp_path / f"netns-{name}"
    netns.write_text("")
    return ZdsWorkload(f"Kubernetes//Pod/demo/{name}", name, "demo", "web", str(netns))


def _ino(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


async def test_connect_replays_snapshot_with_fresh_fds_and_keep_for_missing_namespaces(
    server: tuple[ZdsServer, Snapshot, list[str]], tmp_path: Path
) -> None:
    zds, snapshot, ready = server
    present, missing = _workload(tmp_path, "a"), _workload(tmp_path, "b")
    os.unlink(missing.netns)
    snapshot += [present, missing]
    ztunnel = await FakeZtunnel(zds.path).start()
    try:
        await wait_until(lambda: ztunnel.kinds() == ["add", "keep", "snapshot_sent"], what="snapshot")
        add, keep = ztunnel.seen[0], ztunnel.seen[1]
        assert (add.uid, add.workload, add.netns) == (present.uid, ("a", "demo", "web"), _ino(present.netns))
        assert keep.uid == missing.uid
        await wait_until(lambda: ready == ["ready"], what="on_ready")
    finally:
        await ztunnel.close()


async def test_add_goes_to_the_newest_ztunnel_and_del_to_all(
    server: tuple[ZdsServer, Snapshot, list[str]], tmp_path: Path
) -> None:
    zds, _, ready = server
    old = await FakeZtunnel(zds.path).start()
    await wait_until(lambda: len(ready) == 1)
    new = await FakeZtunnel(zds.path).start()
    await wait_until(lambda: len(ready) == 2)
    try:
        workload = _workload(tmp_path, "a")
        await zds.add(workload)
        assert old.kinds() == ["snapshot_sent"]
        assert new.kinds() == ["snapshot_sent", "add"] and new.seen[1].netns == _ino(workload.netns)
        assert await zds.delete(workload.uid) == 2
        assert old.kinds()[-1] == new.kinds()[-1] == "del"
    finally:
        await old.close()
        await new.close()


async def test_without_ztunnel_add_fails_at_once(
    server: tuple[ZdsServer, Snapshot, list[str]], tmp_path: Path
) -> None:
    zds, _, _ = server
    with pytest.raises(ZdsUnavailableError, match="no ztunnel is connected"):
        await zds.add(_workload(tmp_path, "a"))
    assert await zds.delete("Kubernetes//Pod/demo/a") == 0


async def test_nack_is_a_rejection(server: tuple[ZdsServer, Snapshot, list[str]], tmp_path: Path) -> None:
    zds, _, ready = server
    ztunnel = await FakeZtunnel(zds.path).start()
    await wait_until(lambda: bool(ready))
    ztunnel.mode = "nack"
    try:
        with pytest.raises(ZdsRejectedError, match="fake ztunnel refuses"):
            await zds.add(_workload(tmp_path, "a"))
        assert zds.connected  # a NACK is an answer: the connection stays
    finally:
        await ztunnel.close()


async def test_silent_ztunnel_times_out_and_is_dropped(
    server: tuple[ZdsServer, Snapshot, list[str]], tmp_path: Path
) -> None:
    zds, _, ready = server
    ztunnel = await FakeZtunnel(zds.path).start()
    await wait_until(lambda: bool(ready))
    ztunnel.mode = "silent"
    try:
        async with asyncio.timeout(3):
            with pytest.raises(ZdsUnavailableError, match="did not ack"):
                await zds.add(_workload(tmp_path, "a"))
        assert not zds.connected
        await wait_until(ztunnel.gone.is_set, what="the agent closing the connection")
    finally:
        await ztunnel.close()


async def test_disconnect_is_noticed_while_idle(server: tuple[ZdsServer, Snapshot, list[str]]) -> None:
    zds, _, ready = server
    ztunnel = await FakeZtunnel(zds.path).start()
    await wait_until(lambda: bool(ready))
    assert zds.connected
    await ztunnel.close()
    await wait_until(lambda: not zds.connected, within=2, what="disconnect detection")


@pytest.mark.parametrize(
    "hello",
    [zds_pb2.ZdsHello(version=zds_pb2.NOT_USED).SerializeToString(), b"\xff\xff", None],
    ids=["wrong-version", "garbage", "no-hello"],
)
async def test_bad_or_missing_hello_is_refused(
    server: tuple[ZdsServer, Snapshot, list[str]], hello: bytes | None
) -> None:
    zds, _, ready = server
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(3)
    try:
        await asyncio.to_thread(sock.connect, zds.path)
        if hello is not None:
            sock.send(hello)
        assert await asyncio.to_thread(sock.recv, 1024) == b""  # the agent hung up
    finally:
        sock.close()
    assert not zds.connected and ready == []


async def test_unsolicited_message_drops_the_connection(
    server: tuple[ZdsServer, Snapshot, list[str]],
) -> None:
    zds, _, _ = server
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(3)
    try:
        await asyncio.to_thread(sock.connect, zds.path)
        sock.send(zds_pb2.ZdsHello(version=zds_pb2.V1).SerializeToString())
        snapshot_sent = await asyncio.to_thread(sock.recv, 1024)
        assert zds_pb2.WorkloadRequest.FromString(snapshot_sent).HasField("snapshot_sent")
        sock.send(zds_pb2.WorkloadResponse(ack=zds_pb2.Ack()).SerializeToString())
        await wait_until(lambda: zds.connected)
        sock.send(b"\x0a\x00")  # nobody asked
        await wait_until(lambda: not zds.connected, within=2, what="protocol violation handling")
    finally:
        sock.close()
