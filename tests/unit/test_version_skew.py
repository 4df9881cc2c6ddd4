"""Version skew with a newer istiod (catalogue test 22, docs/mixed-version-mesh.md).

A newer istiod sends fields this build does not know. Workload and Service apply without them;
in authorization, an ALLOW clause with anything we do not understand never matches (it admits
nobody extra) and a DENY clause with it matches as if it were absent (it denies at least as much).
Every such field is reported once per resource conversion to ``on_ignored``.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import ip_address

import pytest
import structlog

from mesh.api.istio.security import authorization_pb2 as authz_pb
from mesh.api.istio.workload import workload_pb2 as wl_pb
from mesh.convert import address_from_proto, authorization_from_proto
from mesh.model import Service, Workload
from mesh.policy import ConnectionAttributes, authorize
from mesh.rt.logs import get_logger
from mesh.rt.metrics import Registry, render
from ztunnel.skew import IgnoredFields

UNKNOWN_FIELD_99 = b"\x98\x06\x01"  # field 99, varint 1: what a newer istiod could add anywhere
CLIENT = "cluster.local/ns/demo/sa/client"
INTRUDER = "cluster.local/ns/other/sa/intruder"


def with_unknown(message: wl_pb.Workload | authz_pb.Match | authz_pb.Clause | authz_pb.Rule) -> None:
    """Appends field 99 to ``message`` in place, as decoding a newer istiod's bytes would."""
    message.ParseFromString(message.SerializeToString() + UNKNOWN_FIELD_99)


def connection(principal: str) -> ConnectionAttributes:
    td, _, ns, _, sa = principal.split("/")
    return ConnectionAttributes(
        source_ip=ip_address("10.244.1.5"),
        destination_ip=ip_address("10.244.2.7"),
        destination_port=8080,
        source_trust_domain=td,
        source_namespace=ns,
        source_service_account=sa,
    )


def policy(
    action: authz_pb.Action.ValueType, principals: list[str], change: Callable[[authz_pb.Rule], None]
) -> authz_pb.Authorization:
    p = authz_pb.Authorization(name="p", namespace="demo", scope=authz_pb.NAMESPACE, action=action)
    rule = p.rules.add()
    match = rule.clauses.add().matches.add()
    match.principals.extend(authz_pb.StringMatch(exact=x) for x in principals)
    change(rule)
    return p


def unchanged(rule: authz_pb.Rule) -> None:
    del rule


def unknown_in_match(rule: authz_pb.Rule) -> None:
    with_unknown(rule.clauses[0].matches[0])


def extension_in_match(rule: authz_pb.Rule) -> None:
    rule.clauses[0].matches[0].extensions.add(name="io.istio.future")


def unknown_in_clause(rule: authz_pb.Rule) -> None:
    with_unknown(rule.clauses[0])


def unknown_in_rule(rule: authz_pb.Rule) -> None:
    with_unknown(rule)


def unknown_only_match(rule: authz_pb.Rule) -> None:
    rule.clauses[0].matches[0].ClearField("principals")
    with_unknown(rule.clauses[0].matches[0])


def unknown_only_clause(rule: authz_pb.Rule) -> None:
    rule.clauses[0].ClearField("matches")
    with_unknown(rule.clauses[0])


# (action, principals in the match, change, allowed for CLIENT, allowed for INTRUDER)
CASES = [
    ("ALLOW as sent by istiod today", authz_pb.ALLOW, [CLIENT], unchanged, True, False),
    ("ALLOW, unknown field in the match", authz_pb.ALLOW, [CLIENT], unknown_in_match, False, False),
    ("ALLOW, Match.extensions", authz_pb.ALLOW, [CLIENT], extension_in_match, False, False),
    ("ALLOW, unknown field in the clause", authz_pb.ALLOW, [CLIENT], unknown_in_clause, False, False),
    ("ALLOW, unknown field in the rule", authz_pb.ALLOW, [CLIENT], unknown_in_rule, False, False),
    ("ALLOW, match of unknown fields only", authz_pb.ALLOW, [], unknown_only_match, False, False),
    ("DENY as sent by istiod today", authz_pb.DENY, [INTRUDER], unchanged, True, False),
    ("DENY, unknown field beside a principal", authz_pb.DENY, [INTRUDER], unknown_in_match, True, False),
    ("DENY, Match.extensions beside a principal", authz_pb.DENY, [INTRUDER], extension_in_match, True, False),
    ("DENY, unknown field in the clause", authz_pb.DENY, [INTRUDER], unknown_in_clause, True, False),
    ("DENY, unknown field in the rule", authz_pb.DENY, [INTRUDER], unknown_in_rule, True, False),
    ("DENY, match of unknown fields only", authz_pb.DENY, [], unknown_only_match, False, False),
    ("DENY, clause of unknown fields only", authz_pb.DENY, [], unknown_only_clause, False, False),
]


@pytest.mark.parametrize(
    ("action", "principals", "change", "client_allowed", "intruder_allowed"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_authorization_with_what_we_do_not_understand_fails_safe(
    action: authz_pb.Action.ValueType,
    principals: list[str],
    change: Callable[[authz_pb.Rule], None],
    client_allowed: bool,
    intruder_allowed: bool,
) -> None:
    ignored: list[tuple[str, str]] = []
    converted = authorization_from_proto(
        "demo/p", policy(action, principals, change), on_ignored=lambda t, f: ignored.append((t, f))
    )
    assert authorize([converted], connection(CLIENT)).allowed is client_allowed
    assert authorize([converted], connection(INTRUDER)).allowed is intruder_allowed
    assert bool(ignored) is (change is not unchanged)
    assert all(t == "istio.security.Authorization" for t, _ in ignored)


def test_the_ignored_authorization_fields_are_named_without_indices() -> None:
    ignored: list[tuple[str, str]] = []
    p = policy(authz_pb.ALLOW, [CLIENT], extension_in_match)
    p.rules.add().clauses.add().matches.add(destination_ports=[80])
    with_unknown(p.rules[1].clauses[0].matches[0])
    p.extensions.add(name="io.istio.future")
    authorization_from_proto("demo/p", p, on_ignored=lambda t, f: ignored.append((t, f)))
    assert sorted(f for _, f in ignored) == [
        "extensions",
        "rules.clauses.matches.#99",
        "rules.clauses.matches.extensions",
    ]


def test_policy_level_extensions_and_unknown_fields_change_nothing() -> None:
    p = policy(authz_pb.ALLOW, [CLIENT], unchanged)
    p.extensions.add(name="io.istio.future")
    p.ParseFromString(p.SerializeToString() + UNKNOWN_FIELD_99)
    converted = authorization_from_proto("demo/p", p)
    assert authorize([converted], connection(CLIENT)).allowed
    assert not authorize([converted], connection(INTRUDER)).allowed


def test_a_workload_with_an_unknown_field_is_applied_and_reported() -> None:
    w = wl_pb.Workload(
        uid="Kubernetes//Pod/demo/a", name="a", namespace="demo", addresses=[bytes([10, 244, 2, 7])]
    )
    w.services["demo/a.demo.svc.cluster.local"].ports.add(service_port=80, target_port=8080)
    with_unknown(w)
    with_unknown(w.services["demo/a.demo.svc.cluster.local"].ports[0])  # type: ignore[arg-type]
    ignored: list[tuple[str, str]] = []
    converted = address_from_proto(
        "a", wl_pb.Address(workload=w), on_ignored=lambda t, f: ignored.append((t, f))
    )
    assert isinstance(converted, Workload)
    assert converted.target_port("demo/a.demo.svc.cluster.local", 80) == 8080
    assert sorted(ignored) == [
        ("istio.workload.Workload", "#99"),
        ("istio.workload.Workload", "services.ports.#99"),
    ]


def test_a_service_with_newer_fields_is_applied() -> None:
    s = wl_pb.Service(
        name="a",
        namespace="demo",
        hostname="a.demo.svc.cluster.local",
        visibility=wl_pb.Service.NAMESPACE,
        weighted_waypoints=[wl_pb.WeightedWaypoint(weight=1)],
    )
    s.ParseFromString(s.SerializeToString() + UNKNOWN_FIELD_99)
    ignored: list[tuple[str, str]] = []
    converted = address_from_proto(
        "a", wl_pb.Address(service=s), on_ignored=lambda t, f: ignored.append((t, f))
    )
    assert isinstance(converted, Service)
    assert ignored == [("istio.workload.Service", "#99")]


def test_ztunnel_counts_every_ignored_field_and_logs_each_once() -> None:
    registry = Registry()
    reporter = IgnoredFields(registry, get_logger("test"))
    with structlog.testing.capture_logs() as logs:
        reporter("istio.workload.Workload", "#99")
        reporter("istio.workload.Workload", "#99")
        reporter("istio.security.Authorization", "rules.clauses.matches.extensions")
    text = render(registry).decode()
    assert 'ztunnel_xds_ignored_fields_total{field="#99",type="istio.workload.Workload"} 2.0' in text
    assert (
        'ztunnel_xds_ignored_fields_total{field="rules.clauses.matches.extensions",'
        'type="istio.security.Authorization"} 1.0'
    ) in text
    assert [(e["event"], e["field"]) for e in logs] == [
        ("xds.field_ignored", "#99"),
        ("xds.field_ignored", "rules.clauses.matches.extensions"),
    ]
