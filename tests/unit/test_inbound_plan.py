"""Inbound decisions: HBONE answers (200/400/401/503) and plaintext under STRICT, table-driven."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from mesh.identity import WorkloadIdentity
from mesh.model import Action, Authorization, Match, Scope, StringMatch, TunnelProtocol, Workload
from ztunnel.inbound_plan import (
    Admit,
    InboundRefusal,
    parse_authority,
    plan_inbound_hbone,
    plan_inbound_plaintext,
)
from ztunnel.state import ProxyState

SERVER_IP = ip_address("10.244.2.7")
CLIENT_IP = ip_address("10.244.1.5")
CLIENT = WorkloadIdentity("cluster.local", "demo", "client")
INTRUDER = WorkloadIdentity("cluster.local", "other", "intruder")
STRICT = Authorization(
    "istio_converted_static_strict",
    "istio-system",
    Scope.WORKLOAD_SELECTOR,
    Action.DENY,
    (((Match(not_principals=(StringMatch.presence(),)),),),),
)
ONLY_DEMO = Authorization(
    "only-demo",
    "demo",
    Scope.NAMESPACE,
    Action.ALLOW,
    (((Match(namespaces=(StringMatch.exact("demo"),)),),),),
)


def server(*policies: str) -> Workload:
    return Workload(
        uid="Kubernetes//Pod/demo/server",
        name="server",
        namespace="demo",
        addresses=(SERVER_IP,),
        protocol=TunnelProtocol.HBONE,
        authorization_policies=policies,
    )


def hbone(state: ProxyState, authority: str, peer: WorkloadIdentity = CLIENT) -> Admit | InboundRefusal:
    return plan_inbound_hbone(
        state, authority=authority, arrived_on=SERVER_IP, source_ip=CLIENT_IP, peer=peer
    )


@pytest.mark.parametrize(
    ("authority", "status"),
    [
        ("10.244.2.7:8080", 200),
        ("10.244.2.8:8080", 400),  # IP mismatch
        ("server.demo:8080", 400),  # not ip:port
        ("10.244.2.7", 400),
        ("10.244.2.7:0", 400),
        ("10.244.2.7:99999", 400),
        ("10.244.2.7:15008", 400),  # ztunnel ports are never targets
        ("10.244.2.7:15006", 400),
        ("[::1]:8080", 400),
    ],
)
def test_hbone_authority(authority: str, status: int) -> None:
    state = ProxyState.build(workloads=[server()])
    result = hbone(state, authority)
    assert (result.status if isinstance(result, InboundRefusal) else 200) == status


def test_unknown_local_workload_is_503() -> None:
    result = hbone(ProxyState.build(), "10.244.2.7:8080")
    assert isinstance(result, InboundRefusal) and result.status == 503


def test_policy_denial_is_401_with_the_deny_flag() -> None:
    state = ProxyState.build(workloads=[server()], policies=[ONLY_DEMO])
    assert isinstance(hbone(state, "10.244.2.7:8080"), Admit)
    denied = hbone(state, "10.244.2.7:8080", peer=INTRUDER)
    assert isinstance(denied, InboundRefusal)
    assert (denied.status, denied.flag) == (401, "DENY")
    assert "no ALLOW policy matched" in denied.reason


def test_plaintext_is_refused_only_under_strict() -> None:
    permissive = ProxyState.build(workloads=[server()], policies=[STRICT])
    strict = ProxyState.build(
        workloads=[server("istio-system/istio_converted_static_strict")], policies=[STRICT]
    )
    admitted = plan_inbound_plaintext(permissive, destination=SERVER_IP, port=8080, source_ip=CLIENT_IP)
    refused = plan_inbound_plaintext(strict, destination=SERVER_IP, port=8080, source_ip=CLIENT_IP)
    assert isinstance(admitted, Admit)
    assert isinstance(refused, InboundRefusal) and refused.flag == "DENY"
    # mTLS peers still get through a STRICT workload.
    assert isinstance(hbone(strict, "10.244.2.7:8080"), Admit)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("1.2.3.4:80", (ip_address("1.2.3.4"), 80)),
        ("[fd00::1]:443", (ip_address("fd00::1"), 443)),
        ("fd00::1:443", None),
        ("1.2.3.4:+80", None),
        (":80", None),
        ("1.2.3.4:", None),
        ("1.2.3.4:0080800", None),
    ],
)
def test_parse_authority(text: str, parsed: object) -> None:
    assert parse_authority(text) == parsed
