"""The CA Secret in the lab mode (``--auth lab``: the lab's state directory is the cluster's API).
Two replicas with a state directory each (as the manifests run them, emptyDir) create one
istio-ca-secret between them and sign with its root; the Secret's file is readable by its owner
only; the lab's rule for using it (``--ca-secret``, or the Secret being there) keeps the lab's
replicas that share one ``--state-dir`` as they were."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import signal
import stat
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from istiod_lite.app import _ca_secret_store, parse_args
from istiod_lite.ca.authority import create_root
from istiod_lite.ca.lab_secret import LabCaSecretStore
from istiod_lite.ca.secret import CA_SECRET, SharedRoot, ca_secret, load_or_create_ca_secret
from mesh.rt.labstate import LabState
from mesh.testing.clock import FakeClock
from mesh.testing.polling import wait_until
from tests.component.test_istiod_leader_lab import Istiod, start
from tests.unit.test_ca_secret import signs_for

pytestmark = pytest.mark.timeout(60)

TD = "cluster.local"
NOW = FakeClock().now()
KEY = ("Secret", "istio-system", CA_SECRET)


class RacingStore(LabCaSecretStore):
    """Both replicas read (and find nothing) before either creates."""

    def __init__(self, state: Path, barrier: threading.Barrier) -> None:
        super().__init__(state, namespace="istio-system")
        self._barrier = barrier

    def read(self) -> Mapping[str, Any] | None:
        found = super().read()
        if found is None:
            self._barrier.wait(timeout=10)
        return found


async def test_two_replicas_race_for_the_lab_secret_and_share_one_root(tmp_path: Path) -> None:
    barrier = threading.Barrier(2)

    def start() -> SharedRoot:
        return load_or_create_ca_secret(RacingStore(tmp_path, barrier), trust_domain=TD, now=NOW)

    a, b = await asyncio.gather(asyncio.to_thread(start), asyncio.to_thread(start))
    assert sorted([a.outcome, b.outcome]) == ["created", "loaded"]
    assert a.authority.cert == b.authority.cert and signs_for(a.authority, b.authority)
    state = LabState(tmp_path)
    path = state.object_path(KEY)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the key: readable by its owner only
    assert [p.name for p in path.parent.iterdir()] == [f"{CA_SECRET}.yaml"]  # no temp file left
    stored = state.read(KEY)
    assert stored is not None and stored["metadata"]["uid"] and stored["type"] == "istio.io/ca-root"


@pytest.mark.parametrize(
    ("flags", "secret_there", "uses_secret"),
    [
        ([], False, False),  # the lab today: replicas share --state-dir; nothing changes
        ([], True, True),  # the Secret is there: every replica uses it
        (["--ca-secret"], False, True),  # the manifests: create it when absent
        (["--no-ca-secret"], True, False),
        (["--ca-secret", "--cacerts", "/etc/cacerts"], True, False),  # a plugged-in CA wins
    ],
)
def test_the_lab_rule_for_using_the_secret(
    tmp_path: Path, flags: list[str], secret_there: bool, uses_secret: bool
) -> None:
    if secret_there:
        secret = ca_secret(create_root(trust_domain=TD, now=NOW), namespace="istio-system")
        with LabState(tmp_path).transaction() as txn:
            txn.create(secret)
    args = parse_args(["--auth", "lab", "--lab-state", str(tmp_path), *flags])
    store = _ca_secret_store(args, None)
    assert (store is not None) == uses_secret
    assert LabState(tmp_path).object_path(KEY).exists() == secret_there  # deciding writes nothing


async def stop(istiod: Istiod) -> None:
    with contextlib.suppress(ProcessLookupError):
        istiod.proc.send_signal(signal.SIGTERM)
    await istiod.proc.wait()
    if istiod.reader is not None:
        await istiod.reader


async def test_two_istiod_processes_with_their_own_state_share_the_secrets_root(tmp_path: Path) -> None:
    lab = LabState(tmp_path / "lab")
    with lab.transaction() as txn:
        txn.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    running = await asyncio.gather(*(start(tmp_path, name, "--ca-secret") for name in ("a", "b")))
    try:
        roots = [istiod.logged("ca.root") or {} for istiod in running]
        assert len({r.get("ca.root_sha256") for r in roots}) == 1, roots
        assert sorted(str(r["ca.source"]).rsplit(" ", 1)[-1] for r in roots) == ["(created)", "(loaded)"]
        secret = lab.read(KEY)
        assert secret is not None
        root_pem = base64.b64decode(secret["data"]["root-cert.pem"]).decode()
        # the leader puts the root into every namespace (the ztunnels and waypoints mount it)
        configmap = ("ConfigMap", "shop", "istio-ca-root-cert")
        await wait_until(lambda: (lab.read(configmap) or {}).get("data"), what="the root ConfigMap")
        assert (lab.read(configmap) or {})["data"] == {"root-cert.pem": root_pem}
        leftovers = await asyncio.to_thread(lambda: [p for p in tmp_path.glob("[ab]/**/*") if p.is_file()])
        assert not leftovers, "no key in the state directories"
    finally:
        for istiod in running:
            await stop(istiod)


async def test_a_lab_istiod_without_the_secret_keeps_its_root_in_the_state_dir(tmp_path: Path) -> None:
    istiod = await start(tmp_path, "shared")
    try:
        root = istiod.logged("ca.root")
        assert root is not None and root["ca.source"] == f"state directory {tmp_path / 'shared'}"
        assert (tmp_path / "shared" / "ca" / "root-key.pem").exists()
        assert not LabState(tmp_path / "lab").object_path(KEY).exists()
    finally:
        await stop(istiod)
