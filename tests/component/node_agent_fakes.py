"""Test doubles for the node agent's tests: a fake ztunnel (a real ZDS client over the real
SEQPACKET socket that acks, nacks or stays silent), a recording rules applier, and a lab-style state
directory with a namespace and pods."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.api.istio.workload.zds import zds_pb2
from mesh.rt.labstate import LabState
from ztunnel.cni.apply import RuleChange
from ztunnel.cni.rules import CapturePlan
from ztunnel.zds import ZdsChannel, ZdsError, connect, decode_request

__all__ = [
    "FakeZtunnel",
    "RecordingProbes",
    "RecordingRules",
    "Seen",
    "add_pod",
    "make_lab",
    "set_namespace_labels",
]

AMBIENT = {"istio.io/dataplane-mode": "ambient"}


@dataclass(frozen=True, slots=True)
class Seen:
    """One request the fake ztunnel received."""

    kind: str
    uid: str = ""
    workload: tuple[str, str, str] | None = None
    netns: tuple[int, int] | None = None
    """(st_dev, st_ino) of the fd that came with an add: which namespace (or file) it is."""


class FakeZtunnel:
    """Connects, says hello, records every request and answers per ``mode`` (ack/nack/silent)."""

    def __init__(
        self, path: str, *, mode: str = "ack", on_add: Callable[[str, int], None] | None = None
    ) -> None:
        self.path = path
        self.mode = mode
        self.on_add = on_add
        self.seen: list[Seen] = []
        self.gone = asyncio.Event()
        self._channel: ZdsChannel | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, *, deadline: float = 5.0) -> FakeZtunnel:
        """Connects (retrying until the agent listens) and starts answering."""
        end = time.monotonic() + deadline
        while True:
            try:
                self._channel = await connect(self.path)
                break
            except ZdsError:
                if time.monotonic() > end:
                    raise
                await asyncio.sleep(0.02)
        await self._channel.send(zds_pb2.ZdsHello(version=zds_pb2.V1).SerializeToString())
        self._task = asyncio.get_running_loop().create_task(self._serve(self._channel))
        return self

    async def _serve(self, channel: ZdsChannel) -> None:
        try:
            while True:
                data, fd = await channel.recv()
                self._record(data, fd)
                if self.mode == "silent":
                    continue
                error = "fake ztunnel refuses" if self.mode == "nack" else ""
                await channel.send(zds_pb2.WorkloadResponse(ack=zds_pb2.Ack(error=error)).SerializeToString())
        except ZdsError:
            self.gone.set()

    def _record(self, data: bytes, fd: int | None) -> None:
        request = decode_request(data)
        kind = request.WhichOneof("payload") or ""
        try:
            if kind == "add":
                info = request.add.workload_info
                st = os.fstat(fd) if fd is not None else None
                self.seen.append(
                    Seen(
                        kind,
                        request.add.uid,
                        (info.name, info.namespace, info.service_account),
                        (st.st_dev, st.st_ino) if st else None,
                    )
                )
                if self.on_add is not None and fd is not None:
                    self.on_add(request.add.uid, fd)
            elif kind in ("keep", "del"):
                self.seen.append(Seen(kind, getattr(request, kind).uid))
            else:
                self.seen.append(Seen(kind))
        finally:
            if fd is not None:
                os.close(fd)

    def kinds(self) -> list[str]:
        """The request kinds seen so far."""
        return [s.kind for s in self.seen]

    async def close(self) -> None:
        """Disconnects."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._channel is not None:
            self._channel.close()


class RecordingRules:
    """Stands in for ``NetnsRules`` where there is no root: remembers which namespaces are captured."""

    def __init__(self) -> None:
        self.captured: set[str] = set()
        self.calls: list[tuple[str, str]] = []

    async def ensure_capture(
        self, netns: str, plan: CapturePlan | None = None, *, fresh: bool = False
    ) -> RuleChange:
        self.calls.append(("ensure", netns))
        changed = netns not in self.captured
        self.captured.add(netns)
        return RuleChange(iptables=changed, ip_rule=changed)

    async def release(self, netns: str) -> RuleChange:
        self.calls.append(("release", netns))
        self.captured.discard(netns)
        return RuleChange(iptables=True, ip_rule=True)


class RecordingProbes:
    """Stands in for ``HostProbeSnat``: remembers every address set the agent asked for."""

    def __init__(self) -> None:
        self.sets: list[tuple[str, ...]] = []

    async def ensure(self, pod_ips: Iterable[str]) -> bool:
        self.sets.append(tuple(pod_ips))
        return True

    @property
    def current(self) -> tuple[str, ...] | None:
        """The last set applied (None before the first)."""
        return self.sets[-1] if self.sets else None


def make_lab(root: Path, *, namespace: str = "demo", ambient: bool = True) -> LabState:
    """A state directory with lab.yaml and one namespace (labelled ambient or not)."""
    state = LabState(root)
    root.mkdir(parents=True, exist_ok=True)
    state.settings_file.write_text("labId: mtest\nclusterId: Kubernetes\n")
    with state.transaction() as txn:
        meta: dict[str, Any] = {"name": namespace, "uid": f"ns-{namespace}"}
        if ambient:
            meta["labels"] = dict(AMBIENT)
        txn.put({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
    return state


def add_pod(state: LabState, name: str, *, namespace: str = "demo", node: str = "n1", sa: str = "web") -> str:
    """Writes a Pod on ``node``; returns its uid."""
    uid = f"uid-{namespace}-{name}"
    with state.transaction() as txn:
        txn.put(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "uid": uid},
                "spec": {"nodeName": node, "serviceAccountName": sa, "containers": [{"name": "app"}]},
                "status": {"phase": "Pending"},
            }
        )
    return uid


def set_namespace_labels(state: LabState, namespace: str, labels: dict[str, str]) -> None:
    """Relabels a namespace, as ``kubectl label ns`` would."""

    def change(obj: dict[str, Any]) -> bool:
        obj["metadata"]["labels"] = dict(labels)
        return True

    with state.transaction() as txn:
        txn.update(("Namespace", "", namespace), change)
