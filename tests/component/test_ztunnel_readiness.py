"""ztunnel's readiness (15021) names what it still waits for: config, the node agent, certificates
(catalogue 21: never ready before config and certificates are in)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import grpc
import pytest

from istiod_lite.ca.auth import Caller, LabTokenAuthenticator
from mesh.errors import MeshError
from mesh.identity import WorkloadIdentity
from mesh.rt.clock import SystemClock
from mesh.testing.pki import TestPki
from mesh.testing.ports import free_port
from tests.component.test_xds_push import Plane, Source, start_plane
from ztunnel.app import Ztunnel, _parser
from ztunnel.proxy import PodInfo, PodProxy

pytestmark = pytest.mark.timeout(60)

ISTIOD = "istiod.istio-system.svc"


def _args(tmp_path: Path, *extra: str) -> list[str]:
    roots = tmp_path / "root.pem"
    roots.write_bytes(TestPki.create().root_pem)
    token = tmp_path / "token"
    token.write_text("tok\n")
    return ["--node", "n1", "--root-cert", str(roots), "--token-file", str(token), *extra]


async def test_not_ready_until_config_node_agent_and_certificates(tmp_path: Path) -> None:
    args = _parser().parse_args(
        _args(tmp_path, "--xds-address", "127.0.0.1:9", "--zds-socket", str(tmp_path / "z"))
    )
    ztunnel = Ztunnel(args)
    try:
        assert ztunnel.missing() == ["config not received from istiod yet", "not connected to the node agent"]
        ztunnel.manager.connected = ztunnel.manager.snapshot_received = True
        ztunnel.manager.proxies["u1"] = PodProxy(PodInfo("u1", "p", "demo", "client"), -1, ztunnel.ctx)
        missing = ztunnel.missing()
        assert "not connected to the node agent" not in missing
        assert f"no certificate for {WorkloadIdentity('cluster.local', 'demo', 'client').uri}" in missing
    finally:
        ztunnel.manager.proxies.clear()
        await ztunnel.ctx.certs.close()
        await ztunnel.ca.close()


async def test_once_ready_it_stays_ready_when_the_node_agent_goes_away(tmp_path: Path) -> None:
    config = tmp_path / "local.yaml"
    config.write_text("workloads: []\n")
    args = _parser().parse_args(_args(tmp_path, "--local-config", str(config), "--ca-address", "127.0.0.1:9"))
    ztunnel = Ztunnel(args)
    try:
        ztunnel.manager.connected = ztunnel.manager.snapshot_received = True
        assert ztunnel.missing() == []
        ztunnel.manager.connected = False  # the node agent restarts: ztunnel keeps serving its pods
        assert ztunnel.missing() == []
    finally:
        ztunnel.manager.proxies.clear()
        await ztunnel.ctx.certs.close()
        await ztunnel.ca.close()


async def test_local_config_needs_no_istiod(tmp_path: Path) -> None:
    config = tmp_path / "local.yaml"
    config.write_text("workloads: []\n")
    args = _parser().parse_args(_args(tmp_path, "--local-config", str(config), "--ca-address", "127.0.0.1:9"))
    ztunnel = Ztunnel(args)
    try:
        assert ztunnel.missing() == ["not connected to the node agent"]
    finally:
        await ztunnel.ctx.certs.close()
        await ztunnel.ca.close()


async def test_pods_are_taken_from_the_node_agent_only_once_the_config_is_in(tmp_path: Path) -> None:
    """Catalogue 21: before istiod's config arrives no pod gets listeners (a connection planned on an
    empty state would go out as plain TCP to a destination outside the mesh), so ztunnel does not
    even connect to the node agent; once the config is in, it does."""
    pki = TestPki.create()
    roots, token = tmp_path / "root.pem", tmp_path / "token"
    roots.write_bytes(pki.root_pem)
    token.write_text("tok-n1\n")
    port = free_port()
    node_agent = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    node_agent.bind(str(tmp_path / "zds.sock"))
    node_agent.listen()
    node_agent.setblocking(False)
    args = _parser().parse_args(
        ["--node", "n1", "--node-ip", "10.244.1.2", "--root-cert", str(roots), "--token-file", str(token),
         "--xds-address", f"127.0.0.1:{port}", "--zds-socket", str(tmp_path / "zds.sock")]
    )  # fmt: skip
    ztunnel = Ztunnel(args)
    serving = asyncio.create_task(ztunnel.serve())
    plane: Plane | None = None
    try:
        await asyncio.sleep(1.0)
        with pytest.raises(BlockingIOError):
            node_agent.accept()  # istiod is not there yet: ztunnel has not come to take pods
        leaf = pki.issue_leaf(
            uri_sans=["spiffe://cluster.local/ns/istio-system/sa/istiod"], dns_sans=[ISTIOD]
        )
        authenticator = LabTokenAuthenticator(
            {"tok-n1": Caller(WorkloadIdentity("cluster.local", "istio-system", "ztunnel"), node="n1")},
            clock=SystemClock(),
        )
        plane = await start_plane(
            Source(),
            port=port,
            credentials=grpc.ssl_server_credentials([(leaf.key_pem, leaf.cert_pem)]),
            authenticator=authenticator,
        )
        conn, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_accept(node_agent), 15)
        conn.close()
        assert ztunnel.xds is not None and ztunnel.xds.synced
    finally:
        ztunnel.drain.trigger()
        await asyncio.wait_for(serving, 10)
        node_agent.close()
        if plane is not None:
            await plane.stop()


@pytest.mark.parametrize(
    ("extra", "message", "hint"),
    [
        ((), "still needs a CA", "--ca-address"),
        (("--ca-address", "127.0.0.1:9", "--max-connections", "0"), "at least 1, not 0", "--max-connections"),
    ],
)
def test_unusable_settings_say_what_to_pass(
    tmp_path: Path, extra: tuple[str, ...], message: str, hint: str
) -> None:
    config = tmp_path / "local.yaml"
    config.write_text("workloads: []\n")
    args = _parser().parse_args(_args(tmp_path, "--local-config", str(config), *extra))
    with pytest.raises(MeshError, match=message) as caught:
        Ztunnel(args)
    assert hint in caught.value.hint


@pytest.mark.parametrize("value", ["0", "-1", "two", ""])
def test_workers_takes_a_count_or_auto(tmp_path: Path, value: str) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(_args(tmp_path, "--workers", value))


def test_workers_auto_is_at_most_two_and_one_by_default(tmp_path: Path) -> None:
    assert _parser().parse_args(_args(tmp_path)).workers == 1
    assert 1 <= _parser().parse_args(_args(tmp_path, "--workers", "auto")).workers <= 2
