"""Authorization decisions: own identity, node agents impersonate only on their node, all else denied."""

from __future__ import annotations

import pytest

from istiod_lite.ca.auth import Caller
from istiod_lite.ca.authz import DEFAULT_TRUSTED_NODE_ACCOUNTS, NodeAccount, authorize, parse_node_accounts
from istiod_lite.ca.pods import InMemoryPodIndex, PodPlacement
from mesh.identity import WorkloadIdentity

TD = "cluster.local"
ZTUNNEL = WorkloadIdentity(TD, "istio-system", "ztunnel")
SLEEP = WorkloadIdentity(TD, "default", "sleep")
WEB = WorkloadIdentity(TD, "default", "web")
PODS = InMemoryPodIndex(
    [
        PodPlacement("default", "sleep", "n1"),
        PodPlacement("default", "web", "n2"),
        PodPlacement("other", "sleep", "n2"),
    ]
)


class _BareIndex:
    """A pod index offering only the required method (no PodLocator), like a minimal config plane."""

    def service_account_on_node(self, namespace: str, service_account: str, node: str) -> bool:
        return PODS.service_account_on_node(namespace, service_account, node)


CASES = [
    # caller, requested, allowed, reason fragment
    (Caller(SLEEP, node="n1"), SLEEP, True, "own identity"),
    (Caller(SLEEP), SLEEP, True, "own identity"),
    (Caller(ZTUNNEL, node="n1"), ZTUNNEL, True, "own identity"),
    (Caller(ZTUNNEL, node="n1"), SLEEP, True, "pod with service account default/sleep on node n1"),
    (
        Caller(ZTUNNEL, node="n1"),
        WEB,
        False,
        "no pod with service account default/web on node n1 (it runs on n2)",
    ),
    (
        Caller(ZTUNNEL, node="n1"),
        WorkloadIdentity(TD, "default", "ghost"),
        False,
        "unknown service account default/ghost",
    ),
    (Caller(ZTUNNEL, node="n1"), WorkloadIdentity(TD, "other", "sleep"), False, "on node n1 (it runs on n2)"),
    (Caller(ZTUNNEL), SLEEP, False, "has no node in its credential"),
    (Caller(SLEEP, node="n1"), WEB, False, "is not a trusted node agent"),
    (
        Caller(WorkloadIdentity(TD, "default", "ztunnel"), node="n1"),
        SLEEP,
        False,
        "is not a trusted node agent",
    ),
    (
        Caller(WorkloadIdentity(TD, "istio-system", "other"), node="n1"),
        SLEEP,
        False,
        "is not a trusted node agent",
    ),
    (
        Caller(ZTUNNEL, node="n1"),
        WorkloadIdentity("evil.local", "default", "sleep"),
        False,
        "only serves trust",
    ),
    (
        Caller(WorkloadIdentity("evil.local", "a", "b")),
        WorkloadIdentity("evil.local", "a", "b"),
        False,
        "only serves",
    ),
]


@pytest.mark.parametrize(("caller", "requested", "allowed", "reason"), CASES)
def test_authorize(caller: Caller, requested: WorkloadIdentity, allowed: bool, reason: str) -> None:
    decision = authorize(
        caller, requested, trust_domain=TD, node_accounts=DEFAULT_TRUSTED_NODE_ACCOUNTS, pods=PODS
    )
    assert decision.allowed is allowed
    assert decision.identity == requested
    assert reason in decision.reason


def test_index_without_locator_still_says_why() -> None:
    decision = authorize(
        Caller(ZTUNNEL, node="n1"),
        WEB,
        trust_domain=TD,
        node_accounts=DEFAULT_TRUSTED_NODE_ACCOUNTS,
        pods=_BareIndex(),
    )
    assert not decision.allowed
    assert decision.reason == "no pod with service account default/web on node n1"


def test_configured_node_accounts_replace_the_default() -> None:
    accounts = parse_node_accounts(["kube-system/agent"])
    agent = Caller(WorkloadIdentity(TD, "kube-system", "agent"), node="n1")
    assert authorize(agent, SLEEP, trust_domain=TD, node_accounts=accounts, pods=PODS).allowed
    ztunnel = Caller(ZTUNNEL, node="n1")
    assert not authorize(ztunnel, SLEEP, trust_domain=TD, node_accounts=accounts, pods=PODS).allowed


def test_pod_index_replace_takes_effect() -> None:
    index = InMemoryPodIndex([PodPlacement("default", "sleep", "n1")])
    caller = Caller(ZTUNNEL, node="n1")
    nodes = DEFAULT_TRUSTED_NODE_ACCOUNTS
    assert authorize(caller, SLEEP, trust_domain=TD, node_accounts=nodes, pods=index).allowed
    index.replace([PodPlacement("default", "sleep", "n2")])
    assert not authorize(caller, SLEEP, trust_domain=TD, node_accounts=nodes, pods=index).allowed


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["istio-system/ztunnel"], (NodeAccount("istio-system", "ztunnel"),)),
        ([" a/b ", "c/d"], (NodeAccount("a", "b"), NodeAccount("c", "d"))),
    ],
)
def test_parse_node_accounts(values: list[str], expected: tuple[NodeAccount, ...]) -> None:
    assert parse_node_accounts(values) == expected


@pytest.mark.parametrize("value", ["ztunnel", "/ztunnel", "istio-system/", "a/b/c"])
def test_parse_node_accounts_refuses_malformed(value: str) -> None:
    with pytest.raises(ValueError, match="is not '<namespace>/<service-account>'"):
        parse_node_accounts([value])
