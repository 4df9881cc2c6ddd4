"""A pod runner waits for its volumes before its sandbox (no root: the sandbox is never reached)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from mesh.testing.clock import FakeClock
from meshctl.lab.cni import CniRunner
from meshctl.lab.objects import ObjKey, key_of
from meshctl.lab.pods import PodRunner, RuntimeContext
from meshctl.lab.settings import build_settings
from meshctl.lab.store import StateDir

POD: dict[str, Any] = {
    "metadata": {"name": "late", "namespace": "apps", "uid": "0a1b2c3d-uid"},
    "spec": {
        "nodeName": "node1",
        "serviceAccountName": "late",
        "containers": [
            {"name": "main", "command": ["true"], "volumeMounts": [{"name": "c", "mountPath": "/c"}]}
        ],
        "volumes": [{"name": "c", "configMap": {"name": "late-cfg"}}],
    },
}
SA = {"kind": "ServiceAccount", "metadata": {"name": "late", "namespace": "apps"}}
CFG = {"kind": "ConfigMap", "metadata": {"name": "late-cfg", "namespace": "apps"}, "data": {"k": "v"}}


def objects(*objs: dict[str, Any]) -> dict[ObjKey, dict[str, Any]]:
    return {key_of(o): o for o in objs}


def runner(tmp_path: Path, statuses: list[dict[str, Any]], published: asyncio.Event) -> PodRunner:
    def write_status(pod: dict[str, Any], status: dict[str, Any]) -> None:
        statuses.append(status)
        published.set()

    paths = StateDir(tmp_path / "state")
    ctx = RuntimeContext(
        settings=build_settings(lab_id="t1"),
        paths=paths,
        clock=FakeClock(),
        cni=CniRunner(cni_dir=paths.cni, bin_dirs=()),
        allocate_ip=lambda node: "10.244.1.5",
        release_ip=lambda node, ip: None,
        hosts_for=lambda pod, ip: "",
        write_status=write_status,
        bin_dirs=(),
        tokens_file=paths.root / "mesh" / "tokens.yaml",
    )
    return PodRunner(POD, ctx=ctx)


@pytest.mark.parametrize(
    ("first", "reason", "message"),
    [
        (
            objects(),
            "FailedCreate",
            'error looking up service account apps/late: serviceaccount "late" not found',
        ),
        (
            objects(SA),
            "FailedMount",
            'MountVolume.SetUp failed for volume "c": configmap "late-cfg" not found in namespace "apps"',
        ),
    ],
)
async def test_the_pod_waits_pending_until_its_objects_appear(
    tmp_path: Path, first: dict[ObjKey, dict[str, Any]], reason: str, message: str
) -> None:
    statuses: list[dict[str, Any]] = []
    published = asyncio.Event()
    pod = runner(tmp_path, statuses, published)
    pod.sync_objects(first)
    waiting = asyncio.ensure_future(pod.wait_for_volumes())
    async with asyncio.timeout(5):
        while not statuses or statuses[-1].get("reason") != reason:
            await published.wait()
            published.clear()
    status = statuses[-1]
    assert (status["phase"], status["message"]) == ("Pending", message)
    assert status["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}
    assert "podIP" not in status  # no sandbox yet
    assert not waiting.done()
    pod.sync_objects(objects(SA, CFG))
    async with asyncio.timeout(5):
        await waiting
    volume = tmp_path / "state" / "run" / "pods" / "0a1b2c3d-uid" / "volumes" / "c"
    assert (volume / "k").read_text() == "v"
    assert message in (tmp_path / "state" / "logs" / "apps_late.log").read_text()


@pytest.mark.parametrize("turns", range(5))
async def test_a_waiting_pod_deleted_as_an_object_arrives_stops_waiting(tmp_path: Path, turns: int) -> None:
    """An object arrives (the ConfigMap is still missing) and the pod is deleted within a few loop
    turns: the wait ends cancelled, whichever turn the cancel lands on. Python 3.11's wait_for lost
    the cancel when it came just after the wait had finished, and a deleted pod went on waiting
    (and then started its containers)."""
    pod = runner(tmp_path, [], asyncio.Event())
    pod.sync_objects(objects())
    waiting = asyncio.ensure_future(pod.wait_for_volumes())
    await asyncio.sleep(0.05)  # waiting for the ServiceAccount
    pod.sync_objects(objects(SA))
    for _ in range(turns):
        await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.wait({waiting}, timeout=2)
    assert waiting.cancelled()
