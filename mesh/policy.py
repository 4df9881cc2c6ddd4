"""L4 authorization with ztunnel's RBAC semantics (istio-ambient-facts.md section 5).

1. The policies that apply to a workload: GLOBAL ones, NAMESPACE ones of its namespace, and the
   WORKLOAD_SELECTOR ones it names in ``authorization_policies``.
2. Any matching DENY denies. 3. No ALLOW policy allows. 4. Otherwise one ALLOW must match.
Dry-run policies are evaluated for the log only. Principals compare without ``spiffe://``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from mesh.model import (
    Action,
    Authorization,
    IpAddress,
    IpNetwork,
    Match,
    Scope,
    ServiceAccountMatch,
    StringMatch,
    Workload,
)

__all__ = ["ConnectionAttributes", "Decision", "applicable_policies", "authorize"]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ConnectionAttributes:
    """What L4 policy can see of a connection. ``source_*`` identity fields are empty for plaintext."""

    source_ip: IpAddress
    destination_ip: IpAddress
    destination_port: int
    source_trust_domain: str = ""
    source_namespace: str = ""
    source_service_account: str = ""

    @property
    def principal(self) -> str:
        """``td/ns/x/sa/y`` for mTLS peers, empty for plaintext."""
        if not self.source_trust_domain:
            return ""
        return f"{self.source_trust_domain}/ns/{self.source_namespace}/sa/{self.source_service_account}"


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome and the policy that decided it (empty when no policy did)."""

    allowed: bool
    policy: str = ""
    reason: str = ""
    dry_run_denials: tuple[str, ...] = ()


def applicable_policies(workload: Workload, policies: Mapping[str, Authorization]) -> list[Authorization]:
    """The policies that apply to ``workload``, in a stable order (by key)."""
    selected = set(workload.authorization_policies)
    chosen = []
    for key in sorted(policies):
        policy = policies[key]
        if (
            policy.scope is Scope.GLOBAL
            or (policy.scope is Scope.NAMESPACE and policy.namespace == workload.namespace)
            or (policy.scope is Scope.WORKLOAD_SELECTOR and key in selected)
        ):
            chosen.append(policy)
    return chosen


def authorize(policies: Iterable[Authorization], conn: ConnectionAttributes) -> Decision:
    """Decides a connection against the applicable ``policies``."""
    allows: list[Authorization] = []
    dry_run_denials: list[str] = []
    for policy in policies:
        if policy.action is Action.DENY:
            if _policy_matches(policy, conn):
                if policy.dry_run:
                    dry_run_denials.append(policy.key)
                    continue
                return Decision(False, policy.key, "denied by a DENY policy", tuple(dry_run_denials))
        elif policy.dry_run:
            continue
        else:
            allows.append(policy)
    if not allows:
        return Decision(True, "", "no ALLOW policy applies", tuple(dry_run_denials))
    for policy in allows:
        if _policy_matches(policy, conn):
            return Decision(True, policy.key, "allowed by an ALLOW policy", tuple(dry_run_denials))
    return Decision(False, "", "no ALLOW policy matched", tuple(dry_run_denials))


def _policy_matches(policy: Authorization, conn: ConnectionAttributes) -> bool:
    # Rules OR'ed (none: no match); clauses AND'ed (none: match); matches OR'ed (none: no match).
    return any(all(any(_match(m, conn) for m in clause) for clause in rule) for rule in policy.rules)


def _match(match: Match, conn: ConnectionAttributes) -> bool:
    principal = conn.principal
    namespace = conn.source_namespace if principal else ""
    return (
        _positive(match.namespaces, lambda s: _named(s, namespace))
        and _negative(match.not_namespaces, lambda s: _named(s, namespace))
        and _positive(match.principals, lambda s: _named(s, principal))
        and _negative(match.not_principals, lambda s: _named(s, principal))
        and _positive(match.service_accounts, lambda s: _sa_matches(s, conn))
        and _negative(match.not_service_accounts, lambda s: _sa_matches(s, conn))
        and _positive(match.source_ips, lambda n: _in(conn.source_ip, n))
        and _negative(match.not_source_ips, lambda n: _in(conn.source_ip, n))
        and _positive(match.destination_ips, lambda n: _in(conn.destination_ip, n))
        and _negative(match.not_destination_ips, lambda n: _in(conn.destination_ip, n))
        and _positive(match.destination_ports, lambda p: p == conn.destination_port)
        and _negative(match.not_destination_ports, lambda p: p == conn.destination_port)
    )


def _positive(values: tuple[_T, ...], test: Callable[[_T], bool]) -> bool:
    return not values or any(test(v) for v in values)


def _negative(values: tuple[_T, ...], test: Callable[[_T], bool]) -> bool:
    return not any(test(v) for v in values)


def _named(pattern: StringMatch, value: str) -> bool:
    """A connection without a peer identity (empty value) matches no principal or namespace pattern."""
    return bool(value) and pattern.matches(value)


def _sa_matches(match: ServiceAccountMatch, conn: ConnectionAttributes) -> bool:
    return bool(conn.principal) and (
        match.namespace == conn.source_namespace and match.service_account == conn.source_service_account
    )


def _in(address: IpAddress, network: IpNetwork) -> bool:
    return address.version == network.version and address in network
