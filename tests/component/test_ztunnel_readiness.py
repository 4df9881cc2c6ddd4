"""ztunnel's readiness (15021) names what it still waits for: config, the node agent, certificates
(catalogue 21: never ready before config and certificates are in)."""

from __future__ import annotations

from pathlib import Path

from mesh.identity import WorkloadIdentity
from mesh.testing.pki import TestPki
from ztunnel.app import Ztunnel, _parser
from ztunnel.proxy import PodInfo, PodProxy


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
