"""The istio-ca-root-cert ConfigMap of every namespace in the lab mode: the lab's state directory
is the cluster's API (namespaces read by istiod_lite's file source, ConfigMaps polled and written
in locked transactions). Every namespace gets it, one created later too; a changed or deleted one is
put back, other keys in it stay; only the leader writes, and the next leader repairs what happened
meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog

from istiod_lite.root_cert import (
    ROOT_CONFIGMAP,
    LabRootCertStore,
    RootCertController,
    RootWrite,
    WriteOutcome,
)
from istiod_lite.sources.file import FileSource
from istiod_lite.view import Informers
from mesh.rt.election import Leadership, run_while_leading
from mesh.rt.labstate import LabState
from mesh.testing.polling import wait_until

pytestmark = pytest.mark.timeout(30)

ROOT = "-----BEGIN CERTIFICATE-----\nTHE ROOT\n-----END CERTIFICATE-----\n"


class CountingStore(LabRootCertStore):
    """The lab store, counting the ConfigMaps each replica wrote."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir, poll_every=0.05)
        self.written: list[str] = []

    def write(
        self, writes: Sequence[RootWrite], root_pem: str, *, may_write: Callable[[], bool]
    ) -> WriteOutcome:
        outcome = super().write(writes, root_pem, may_write=may_write)
        self.written += sorted(outcome.written)
        return outcome


@dataclass
class Replica:
    """One istiod_lite's namespace controller: its informers, store, leadership and tasks."""

    name: str
    store: CountingStore
    leadership: Leadership
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[tuple[LabState, list[Replica]]]:
    state = LabState(tmp_path)
    for name in ("istio-system", "shop"):
        put_namespace(state, name)
    replicas = []
    for name in ("a", "b"):
        informers = Informers()
        store = CountingStore(tmp_path)
        leadership = Leadership(lease="istiod-lite-leader", identity=name, logger=structlog.get_logger())
        controller = RootCertController(
            store,
            ROOT,
            namespaces=lambda i=informers: i.current("Namespace").values(),  # type: ignore[misc]
            may_write=lambda ls=leadership: ls.is_leader,  # type: ignore[misc]
        )
        informers.on_change(controller.poke)
        source = FileSource(tmp_path, informers.sink("lab"))
        replica = Replica(name, store, leadership)
        replica.tasks = [
            asyncio.create_task(source.run()),
            asyncio.create_task(run_while_leading(leadership, controller.run)),
        ]
        replicas.append(replica)
    yield state, replicas
    for replica in replicas:
        for task in replica.tasks:
            task.cancel()
        await asyncio.gather(*replica.tasks, return_exceptions=True)


def put_namespace(state: LabState, name: str) -> None:
    with state.transaction() as txn:
        txn.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def root_of(state: LabState, namespace: str) -> Any:
    found = state.read(("ConfigMap", namespace, ROOT_CONFIGMAP))
    return (found or {}).get("data", {}).get("root-cert.pem")


async def test_every_namespace_gets_the_root_and_keeps_it(lab: tuple[LabState, list[Replica]]) -> None:
    state, (leader, follower) = lab
    leader.leadership.acquired()
    await wait_until(lambda: root_of(state, "istio-system") == root_of(state, "shop") == ROOT, what="both")
    stored = state.read(("ConfigMap", "shop", ROOT_CONFIGMAP)) or {}
    assert stored["metadata"]["labels"] == {"istio.io/config": "true"} and stored["metadata"]["uid"]

    put_namespace(state, "late")  # a namespace created later
    await wait_until(lambda: root_of(state, "late") == ROOT, what="the new namespace gets it")

    def edit(obj: dict[str, Any]) -> bool:  # by hand: another root, and a key of the user's
        obj["data"] = {"root-cert.pem": "NOT THE ROOT", "mine": "kept"}
        return True

    with state.transaction() as txn:
        txn.update(("ConfigMap", "shop", ROOT_CONFIGMAP), edit)
    await wait_until(lambda: root_of(state, "shop") == ROOT, what="the changed one is put back")
    assert (state.read(("ConfigMap", "shop", ROOT_CONFIGMAP)) or {})["data"]["mine"] == "kept"

    with state.transaction() as txn:
        txn.remove(("ConfigMap", "late", ROOT_CONFIGMAP))
    await wait_until(lambda: root_of(state, "late") == ROOT, what="the deleted one is put back")
    assert sorted(leader.store.written) == ["istio-system", "late", "late", "shop", "shop"]
    assert follower.store.written == []  # a follower never writes


async def test_the_next_leader_repairs_what_happened_meanwhile(lab: tuple[LabState, list[Replica]]) -> None:
    state, (first, second) = lab
    first.leadership.acquired()
    await wait_until(lambda: root_of(state, "shop") == ROOT, what="the first leader writes")
    first.leadership.lost("stopping")
    with state.transaction() as txn:  # while no one leads
        txn.remove(("ConfigMap", "shop", ROOT_CONFIGMAP))
    await asyncio.sleep(0.3)
    assert root_of(state, "shop") is None  # nobody writes without leading
    second.leadership.acquired()
    await wait_until(lambda: root_of(state, "shop") == ROOT, what="the next leader puts it back")
    assert second.store.written == ["shop"]
    assert sorted(first.store.written) == ["istio-system", "shop"]
