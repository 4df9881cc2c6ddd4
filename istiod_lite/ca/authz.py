"""May this caller have a certificate for that identity? (pure)

A caller may always have its own identity. A trusted node agent (default istio-system/ztunnel)
may have another identity only when a pod running as that service account is scheduled on the
agent's own node, as Istio's node authorizer does. Everything else is denied with a reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from istiod_lite.ca.auth import Caller
from istiod_lite.ca.pods import PodIndex, PodLocator
from mesh.identity import WorkloadIdentity

__all__ = ["DEFAULT_TRUSTED_NODE_ACCOUNTS", "Decision", "NodeAccount", "authorize", "parse_node_accounts"]


@dataclass(frozen=True, slots=True)
class NodeAccount:
    """A service account trusted to act for the pods on its node."""

    namespace: str
    service_account: str

    def matches(self, identity: WorkloadIdentity) -> bool:
        """True when ``identity`` is this account (in any trust domain check done by the caller)."""
        return identity.namespace == self.namespace and identity.service_account == self.service_account


DEFAULT_TRUSTED_NODE_ACCOUNTS = (NodeAccount("istio-system", "ztunnel"),)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome: ``allowed``, for which identity, and why (stable text for the audit log)."""

    allowed: bool
    identity: WorkloadIdentity
    reason: str


def parse_node_accounts(values: Iterable[str]) -> tuple[NodeAccount, ...]:
    """``["istio-system/ztunnel", ...]`` as node accounts; raises ValueError on a malformed entry."""
    accounts = []
    for value in values:
        namespace, slash, service_account = value.strip().partition("/")
        if not slash or not namespace or not service_account or "/" in service_account:
            raise ValueError(f"trusted node account {value!r} is not '<namespace>/<service-account>'")
        accounts.append(NodeAccount(namespace, service_account))
    return tuple(accounts)


def authorize(
    caller: Caller,
    requested: WorkloadIdentity,
    *,
    trust_domain: str,
    node_accounts: tuple[NodeAccount, ...],
    pods: PodIndex,
) -> Decision:
    """Decides whether ``caller`` may be issued a certificate for ``requested``."""
    if requested.trust_domain != trust_domain or caller.identity.trust_domain != trust_domain:
        return Decision(False, requested, f"this CA only serves trust domain {trust_domain!r}")
    if requested == caller.identity:
        return Decision(True, requested, "own identity")
    if not any(account.matches(caller.identity) for account in node_accounts):
        trusted = ", ".join(f"{a.namespace}/{a.service_account}" for a in node_accounts) or "none"
        return Decision(
            False,
            requested,
            f"caller {caller.identity.principal} is not a trusted node agent (trusted: {trusted}) "
            "and may only request its own identity",
        )
    if not caller.node:
        return Decision(
            False, requested, f"node agent {caller.identity.principal} has no node in its credential"
        )
    ns, sa, node = requested.namespace, requested.service_account, caller.node
    if pods.service_account_on_node(ns, sa, node):
        return Decision(True, requested, f"pod with service account {ns}/{sa} on node {node}")
    return Decision(False, requested, _why_not_on_node(pods, ns, sa, node))


def _why_not_on_node(pods: PodIndex, namespace: str, service_account: str, node: str) -> str:
    if isinstance(pods, PodLocator):
        nodes = pods.nodes_for_service_account(namespace, service_account)
        if not nodes:
            return f"unknown service account {namespace}/{service_account}: no pod runs it on any node"
        return (
            f"no pod with service account {namespace}/{service_account} on node {node} "
            f"(it runs on {', '.join(sorted(nodes))})"
        )
    return f"no pod with service account {namespace}/{service_account} on node {node}"
