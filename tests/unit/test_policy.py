"""L4 authorization: ztunnel's RBAC semantics, table-driven."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest

from mesh.model import (
    Action,
    Authorization,
    Match,
    Scope,
    ServiceAccountMatch,
    StringMatch,
    Workload,
)
from mesh.policy import ConnectionAttributes, applicable_policies, authorize

CLIENT = ConnectionAttributes(
    source_ip=ip_address("10.244.1.5"),
    destination_ip=ip_address("10.244.2.7"),
    destination_port=8080,
    source_trust_domain="cluster.local",
    source_namespace="demo",
    source_service_account="client",
)
PLAINTEXT = ConnectionAttributes(
    source_ip=ip_address("10.244.1.9"), destination_ip=ip_address("10.244.2.7"), destination_port=8080
)


def policy(
    action: Action, *matches: Match, scope: Scope = Scope.NAMESPACE, dry_run: bool = False
) -> Authorization:
    rules = ((tuple(matches),),) if matches else ()
    return Authorization(f"p-{action.value}-{len(matches)}", "demo", scope, action, rules, dry_run)


def exact(value: str) -> StringMatch:
    return StringMatch.exact(value)


ALLOW_CLIENT = policy(Action.ALLOW, Match(principals=(exact("cluster.local/ns/demo/sa/client"),)))
DENY_PORT = policy(Action.DENY, Match(destination_ports=(8080,)))
STRICT = Authorization(
    "istio_converted_static_strict",
    "istio-system",
    Scope.WORKLOAD_SELECTOR,
    Action.DENY,
    ((((Match(not_principals=(StringMatch.presence(),))),),),),
)


@pytest.mark.parametrize(
    ("policies", "conn", "allowed"),
    [
        ((), CLIENT, True),
        ((ALLOW_CLIENT,), CLIENT, True),
        ((ALLOW_CLIENT,), PLAINTEXT, False),
        ((DENY_PORT,), CLIENT, False),
        ((ALLOW_CLIENT, DENY_PORT), CLIENT, False),
        ((STRICT,), PLAINTEXT, False),
        ((STRICT,), CLIENT, True),
        # An ALLOW policy with no rules matches nothing: everything is denied.
        ((policy(Action.ALLOW),), CLIENT, False),
        # A DENY policy with no rules never matches.
        ((policy(Action.DENY),), CLIENT, True),
        # A dry-run DENY is logged, not enforced.
        ((policy(Action.DENY, Match(destination_ports=(8080,)), dry_run=True),), CLIENT, True),
        # An empty Match matches everything.
        ((policy(Action.ALLOW, Match()),), PLAINTEXT, True),
        ((policy(Action.ALLOW, Match(not_source_ips=(ip_network("10.244.1.0/24"),))),), CLIENT, False),
        ((policy(Action.ALLOW, Match(source_ips=(ip_network("10.244.1.0/24"),))),), CLIENT, True),
        ((policy(Action.ALLOW, Match(destination_ips=(ip_network("10.244.2.7/32"),))),), CLIENT, True),
        ((policy(Action.ALLOW, Match(not_destination_ports=(8080,))),), CLIENT, False),
        ((policy(Action.ALLOW, Match(namespaces=(exact("demo"),))),), CLIENT, True),
        ((policy(Action.ALLOW, Match(namespaces=(exact("demo"),))),), PLAINTEXT, False),
        ((policy(Action.ALLOW, Match(not_namespaces=(exact("demo"),))),), CLIENT, False),
        (
            (policy(Action.ALLOW, Match(service_accounts=(ServiceAccountMatch("demo", "client"),))),),
            CLIENT,
            True,
        ),
        (
            (policy(Action.ALLOW, Match(service_accounts=(ServiceAccountMatch("demo", "client"),))),),
            PLAINTEXT,
            False,
        ),
        (
            (policy(Action.ALLOW, Match(not_service_accounts=(ServiceAccountMatch("demo", "client"),))),),
            CLIENT,
            False,
        ),
        # Fields AND'ed: principal right but port wrong.
        (
            (
                policy(
                    Action.ALLOW,
                    Match(principals=(exact("cluster.local/ns/demo/sa/client"),), destination_ports=(9090,)),
                ),
            ),
            CLIENT,
            False,
        ),
        # Values OR'ed inside a field.
        ((policy(Action.ALLOW, Match(destination_ports=(9090, 8080))),), CLIENT, True),
    ],
)
def test_authorize(policies: tuple[Authorization, ...], conn: ConnectionAttributes, allowed: bool) -> None:
    assert authorize(policies, conn).allowed is allowed


@pytest.mark.parametrize(
    ("pattern", "allowed"),
    [
        (exact("cluster.local/ns/demo/sa/client"), True),
        (exact("cluster.local/ns/demo/sa/clien"), False),
        (exact("cluster.local/ns/demo/sa/client/x"), False),
        (exact("cluster.local/ns/demo/sa/cl.ent"), False),  # no regex: '.' is literal
        (StringMatch.prefix("cluster.local/ns/demo/"), True),
        (StringMatch.suffix("/sa/client"), True),
        (StringMatch.suffix("/sa/clientx"), False),
        (StringMatch.presence(), True),
    ],
)
def test_principal_matching_is_literal(pattern: StringMatch, allowed: bool) -> None:
    decision = authorize((policy(Action.ALLOW, Match(principals=(pattern,))),), CLIENT)
    assert decision.allowed is allowed


def test_clauses_and_rules() -> None:
    port = Match(destination_ports=(8080,))
    other_port = Match(destination_ports=(1,))
    ns = Match(namespaces=(exact("demo"),))
    both_clauses = Authorization("a", "demo", Scope.NAMESPACE, Action.ALLOW, (((port,), (ns,)),))
    failing_clause = Authorization("a", "demo", Scope.NAMESPACE, Action.ALLOW, (((port,), (other_port,)),))
    second_rule = Authorization("a", "demo", Scope.NAMESPACE, Action.ALLOW, (((other_port,),), ((port,),)))
    empty_clause = Authorization("a", "demo", Scope.NAMESPACE, Action.ALLOW, (((),),))
    assert authorize((both_clauses,), CLIENT).allowed
    assert not authorize((failing_clause,), CLIENT).allowed
    assert authorize((second_rule,), CLIENT).allowed
    assert not authorize((empty_clause,), CLIENT).allowed


def test_decision_names_the_policy() -> None:
    decision = authorize((DENY_PORT,), CLIENT)
    assert decision.policy == "demo/p-Deny-1"
    dry = policy(Action.DENY, Match(destination_ports=(8080,)), dry_run=True)
    assert authorize((dry,), CLIENT).dry_run_denials == ("demo/p-Deny-1",)


def test_applicable_policies_by_scope() -> None:
    workload = Workload(
        uid="Kubernetes//Pod/demo/server",
        name="server",
        namespace="demo",
        addresses=(ip_address("10.244.2.7"),),
        authorization_policies=("demo/selected",),
    )
    policies = {
        "istio-system/global": Authorization("global", "istio-system", Scope.GLOBAL, Action.DENY),
        "demo/ns": Authorization("ns", "demo", Scope.NAMESPACE, Action.DENY),
        "other/ns": Authorization("ns", "other", Scope.NAMESPACE, Action.DENY),
        "demo/selected": Authorization("selected", "demo", Scope.WORKLOAD_SELECTOR, Action.DENY),
        "demo/unselected": Authorization("unselected", "demo", Scope.WORKLOAD_SELECTOR, Action.DENY),
    }
    keys = [p.key for p in applicable_policies(workload, policies)]
    assert keys == ["demo/ns", "demo/selected", "istio-system/global"]
