"""Catalogue 7: identity and source address come from the certificate and the socket, never from headers.

A mesh client (certificate ``demo/sa/client``) opens CONNECT streams to the server pod's 15008 with
every header a proxy might be tempted to trust claiming another identity and another address. The
policy allows only that other identity or that other address, so the streams are refused; the
access log and the metrics name the certificate's identity and the socket's address. The same
headers under a policy that allows the real identity pass, so the refusal is the policy's.
"""

from __future__ import annotations

from ipaddress import ip_network
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from mesh.model import Action, Authorization, Match, Scope, StringMatch
from tests.netns.ztunnel_support import (
    Mesh,
    Pod,
    client_hbone_pool,
    local_state,
    metric_total,
    running_mesh,
    tcp_echo,
)
from ztunnel.state import ProxyState

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

CLIENT = "spiffe://cluster.local/ns/demo/sa/client"
TRUSTED = "spiffe://cluster.local/ns/demo/sa/trusted"
SPOOFED_IP = "10.244.9.9"
CLAIMS = (
    ("forwarded", f"for={SPOOFED_IP};host=trusted.demo.svc.cluster.local"),
    ("x-forwarded-for", SPOOFED_IP),
    ("x-real-ip", SPOOFED_IP),
    ("x-forwarded-client-cert", f"By=spiffe://cluster.local/ns/demo/sa/server;URI={TRUSTED}"),
    ("x-spiffe-id", TRUSTED),
    (
        "baggage",
        "k8s.namespace.name=demo,k8s.deployment.name=trusted,service.name=trusted,service.version=v1",
    ),
)


def _allow(name: str, match: Match) -> Authorization:
    return Authorization(name, "demo", Scope.NAMESPACE, Action.ALLOW, (((match,),),))


def _principal(uri: str) -> StringMatch:
    return StringMatch.exact(uri.removeprefix("spiffe://"))


def _apply(mesh: Mesh, pods: list[Pod], *policies: Authorization) -> None:
    state = local_state(pods)
    mesh.ctx.apply_state(ProxyState.build(workloads=state.workloads.values(), policies=policies))


async def test_headers_claiming_another_identity_or_address_change_nothing(
    pods: list[Pod], tmp_path: Path
) -> None:
    client, server = pods
    async with (
        running_mesh(pods, tmp_path) as mesh,
        tcp_echo(server),
        client_hbone_pool(mesh, client, server) as (pool, key),
    ):
        trusted_only = _allow(
            "trusted-only", Match(principals=(StringMatch.exact(TRUSTED.removeprefix("spiffe://")),))
        )
        spoofed_ip_only = _allow("spoofed-ip-only", Match(source_ips=(ip_network(f"{SPOOFED_IP}/32"),)))
        for policy in (trusted_only, spoofed_ip_only):
            _apply(mesh, pods, policy)
            with capture_logs() as logs:
                status, _ = await pool.open_stream(key, f"{server.ip}:9000", CLAIMS)
            assert status == 401, policy.name
            (refused,) = [e for e in logs if e.get("event") == "connection complete" and e.get("error")]
            assert refused["src.identity"] == CLIENT
            assert refused["src.addr"].startswith(f"{client.ip}:")
            assert refused.get("src.workload") == client.name
        assert metric_total(mesh.registry, "istio_tcp_connections_closed_total", response_flags="DENY") == 2
        assert (
            metric_total(
                mesh.registry,
                "istio_tcp_connections_closed_total",
                response_flags="DENY",
                source_principal=CLIENT,
                source_workload=client.name,
            )
            == 2
        )

        _apply(
            mesh,
            pods,
            _allow("real-client", Match(principals=(StringMatch.exact("cluster.local/ns/demo/sa/client"),))),
        )
        status, stream = await pool.open_stream(key, f"{server.ip}:9000", CLAIMS)
        assert (
            status == 200
        )  # the same headers, a policy for the real identity: the refusals above were the policy's
        stream.abort()
