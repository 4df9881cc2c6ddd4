"""AuthorizationPolicy -> istio.security.Authorization (L4), one rule per table.

Outcomes are checked the way ztunnel sees them: the translated resources are converted with
``mesh.convert`` and connections decided with ``mesh.policy``.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from istiod_lite.translate import TranslatedResources
from istiod_lite.translate.authz import string_match
from mesh.api.istio.security import authorization_pb2 as pb
from tests.unit.test_translate_scenarios import allowed, authz, namespace, pod, translate

WEB = {"matchLabels": {"app": "web"}}
CLIENT = "cluster.local/ns/demo/sa/client"
OTHER = "cluster.local/ns/other/sa/x"


def with_web(*policies: dict[str, Any]) -> TranslatedResources:
    return translate([namespace("demo"), pod("web", labels={"app": "web"}), *policies])


def only(res: TranslatedResources) -> pb.Authorization:
    (policy,) = res.authorizations.values()
    return policy


def rules_json(policy: pb.Authorization) -> list[Any]:
    return [json_format.MessageToDict(r) for r in policy.rules]


@pytest.mark.parametrize(
    ("ns", "spec", "scope"),
    [
        ("demo", {"selector": WEB}, pb.WORKLOAD_SELECTOR),
        ("demo", {"selector": {}}, pb.WORKLOAD_SELECTOR),
        ("demo", {}, pb.NAMESPACE),
        ("istio-system", {}, pb.GLOBAL),
        ("istio-system", {"selector": WEB}, pb.WORKLOAD_SELECTOR),
    ],
)
def test_scope(ns: str, spec: dict[str, Any], scope: int) -> None:
    policy = only(translate([authz("p", ns, **spec)]))
    assert (policy.name, policy.namespace, policy.scope) == ("p", ns, scope)


def test_root_namespace_option_decides_global() -> None:
    res = translate([authz("p", "mesh-root")], root_namespace="mesh-root")
    assert only(res).scope == pb.GLOBAL


@pytest.mark.parametrize(("action", "expected"), [(None, pb.ALLOW), ("ALLOW", pb.ALLOW), ("DENY", pb.DENY)])
def test_action(action: str | None, expected: int) -> None:
    spec = {"action": action} if action else {}
    assert only(translate([authz("p", **spec)])).action == expected


@pytest.mark.parametrize("action", ["AUDIT", "CUSTOM", "LOG"])
def test_unsupported_actions_skipped_with_warning(action: str) -> None:
    res = translate([authz("p", action=action, rules=[{}]), authz("q")])
    assert list(res.authorizations) == ["demo/q"]
    assert [(w.name, w.field) for w in res.warnings] == [("p", "spec.action")]


def test_target_ref_policies_belong_to_waypoints() -> None:
    ref = {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}
    res = translate([authz("a", targetRefs=[ref], rules=[{}]), authz("b", targetRef=ref)])
    assert res.authorizations == {} and res.warnings == ()


def test_dry_run_annotation() -> None:
    obj = authz("p", rules=[{}])
    obj["metadata"]["annotations"] = {"istio.io/dry-run": "true"}
    assert only(translate([obj])).dry_run


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("*", {"presence": {}}),
        ("*.example.com", {"suffix": ".example.com"}),
        ("cluster.local/ns/demo/*", {"prefix": "cluster.local/ns/demo/"}),
        ("cluster.local/ns/demo/sa/web", {"exact": "cluster.local/ns/demo/sa/web"}),
    ],
)
def test_istio_string_matching(value: str, expected: dict[str, Any]) -> None:
    assert json_format.MessageToDict(string_match(value)) == expected


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ({"principals": ["a/*"]}, {"principals": [{"prefix": "a/"}]}),
        ({"notPrincipals": ["*"]}, {"notPrincipals": [{"presence": {}}]}),
        ({"namespaces": ["demo"]}, {"namespaces": [{"exact": "demo"}]}),
        ({"notNamespaces": ["*-test"]}, {"notNamespaces": [{"suffix": "-test"}]}),
        (
            {"ipBlocks": ["10.1.2.3", "10.0.0.0/8"]},
            {"sourceIps": [{"address": "CgECAw==", "length": 32}, {"address": "CgAAAA==", "length": 8}]},
        ),
        (
            {"notIpBlocks": ["fd00::/64"]},
            {"notSourceIps": [{"address": "/QAAAAAAAAAAAAAAAAAAAA==", "length": 64}]},
        ),
        (
            {"serviceAccounts": ["web", "other/x"]},
            {
                "serviceAccounts": [
                    {"namespace": "demo", "serviceAccount": "web"},
                    {"namespace": "other", "serviceAccount": "x"},
                ]
            },
        ),
    ],
)
def test_from_fields(source: dict[str, Any], match: dict[str, Any]) -> None:
    policy = only(translate([authz("p", rules=[{"from": [{"source": source}]}])]))
    assert rules_json(policy) == [{"clauses": [{"matches": [match]}]}]


def test_to_ports_and_rule_structure() -> None:
    rule = {
        "to": [{"operation": {"ports": ["80", "443"]}}, {"operation": {"notPorts": ["22"]}}],
        "from": [{"source": {"namespaces": ["a"]}}, {"source": {"namespaces": ["b"]}}],
        "when": [
            {"key": "destination.ip", "values": ["10.0.0.1"]},
            {"key": "source.principal", "notValues": ["x"]},
        ],
    }
    policy = only(translate([authz("p", rules=[rule, {}])]))
    assert rules_json(policy) == [
        {
            "clauses": [
                {"matches": [{"destinationPorts": [80, 443]}, {"notDestinationPorts": [22]}]},
                {"matches": [{"namespaces": [{"exact": "a"}]}, {"namespaces": [{"exact": "b"}]}]},
                {"matches": [{"destinationIps": [{"address": "CgAAAQ==", "length": 32}]}]},
                {"matches": [{"notPrincipals": [{"exact": "x"}]}]},
            ]
        },
        {},
    ]


@pytest.mark.parametrize(
    ("key", "values", "not_values", "match"),
    [
        ("source.ip", ["10.0.0.0/24"], [], {"sourceIps": [{"address": "CgAAAA==", "length": 24}]}),
        (
            "source.namespace",
            ["demo"],
            ["kube-*"],
            {"namespaces": [{"exact": "demo"}], "notNamespaces": [{"prefix": "kube-"}]},
        ),
        ("source.principal", [], ["*"], {"notPrincipals": [{"presence": {}}]}),
        ("destination.port", ["8080"], ["9090"], {"destinationPorts": [8080], "notDestinationPorts": [9090]}),
    ],
)
def test_l4_when_keys(key: str, values: list[str], not_values: list[str], match: dict[str, Any]) -> None:
    cond: dict[str, Any] = {"key": key}
    cond.update({"values": values} if values else {})
    cond.update({"notValues": not_values} if not_values else {})
    policy = only(translate([authz("p", rules=[{"when": [cond]}])]))
    assert rules_json(policy) == [{"clauses": [{"matches": [match]}]}]


@pytest.mark.parametrize(
    ("action", "rules", "client", "other", "plaintext"),
    [
        ("ALLOW", None, False, False, False),
        ("ALLOW", [{}], True, True, True),
        ("DENY", None, True, True, True),
        ("DENY", [{}], False, False, False),
        ("ALLOW", [{"from": [{"source": {"principals": [CLIENT]}}]}], True, False, False),
        ("DENY", [{"from": [{"source": {"notNamespaces": ["demo"]}}]}], True, False, False),
    ],
    ids=[
        "allow-no-rules",
        "allow-empty-rule",
        "deny-no-rules",
        "deny-empty-rule",
        "allow-client",
        "deny-outsiders",
    ],
)
def test_rules_semantics(
    action: str, rules: list[Any] | None, client: bool, other: bool, plaintext: bool
) -> None:
    spec: dict[str, Any] = {"selector": WEB, "action": action}
    if rules is not None:
        spec["rules"] = rules
    res = with_web(authz("p", **spec))
    assert (allowed(res, "web"), allowed(res, "web", peer=OTHER), allowed(res, "web", peer=None)) == (
        client,
        other,
        plaintext,
    )


L7_FROM = {"source": {"principals": [CLIENT], "requestPrincipals": ["*"]}}
L7_TO = {"operation": {"ports": ["8080"], "methods": ["GET"]}}
L7_WHEN = {"key": "request.headers[x-user]", "values": ["admin"]}


@pytest.mark.parametrize(
    ("rule", "fields"),
    [
        ({"from": [L7_FROM]}, "requestPrincipals"),
        ({"to": [L7_TO]}, "methods"),
        ({"when": [L7_WHEN]}, "request.headers[x-user]"),
        ({"to": [{"operation": {"hosts": ["a"], "notPaths": ["/x"]}}]}, "hosts, notPaths"),
    ],
)
def test_allow_rule_with_l7_dropped_whole_other_rules_kept(rule: dict[str, Any], fields: str) -> None:
    plain = {"from": [{"source": {"principals": [OTHER]}}]}
    res = with_web(authz("p", selector=WEB, rules=[rule, plain]))
    assert len(only(res).rules) == 1
    assert not allowed(res, "web") and allowed(res, "web", peer=OTHER)
    (warning,) = res.warnings
    assert (warning.field, f"({fields})" in warning.message) == ("spec.rules[0]", True)


def test_allow_with_every_rule_dropped_still_denies_by_default() -> None:
    res = with_web(authz("p", selector=WEB, rules=[{"to": [L7_TO]}, {"when": [L7_WHEN]}]))
    assert list(only(res).rules) == [] and len(res.warnings) == 2
    assert not allowed(res, "web") and not allowed(res, "web", peer=None)


@pytest.mark.parametrize(
    ("rule", "denied"),
    [
        # L4 parts kept: only the client is denied, on any method.
        ({"from": [L7_FROM], "to": [{"operation": {"methods": ["DELETE"]}}]}, (True, False)),
        # An OR'ed entry that was only L7 is always true: the whole `to` clause goes.
        (
            {
                "from": [{"source": {"principals": [CLIENT]}}],
                "to": [{"operation": {"ports": ["9999"]}}, {"operation": {"paths": ["/admin"]}}],
            },
            (True, False),
        ),
        ({"from": [{"source": {"principals": [CLIENT]}}], "when": [L7_WHEN]}, (True, False)),
        # Only L7 conditions left: the decision -- deny every connection.
        ({"to": [{"operation": {"methods": ["DELETE"]}}], "when": [L7_WHEN]}, (True, True)),
        ({"from": [{"source": {"requestPrincipals": ["*"]}}]}, (True, True)),
    ],
    ids=["l4-kept", "l7-entry-in-or-list", "l7-when", "only-l7", "only-request-principals"],
)
def test_deny_with_l7_keeps_l4_parts_and_only_l7_denies_all(
    rule: dict[str, Any], denied: tuple[bool, bool]
) -> None:
    res = with_web(authz("p", selector=WEB, action="DENY", rules=[rule]))
    assert (not allowed(res, "web"), not allowed(res, "web", peer=OTHER)) == denied
    assert len(res.warnings) == 1 and res.warnings[0].field == "spec.rules[0]"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"rule": [{}]}, "spec.rule"),
        ({"rules": [{"form": []}]}, "spec.rules[0].form"),
        ({"rules": [{"from": [{"source": {"principal": ["x"]}}]}]}, "spec.rules[0].from[0].source.principal"),
        ({"rules": [{"from": [{"source": {}}]}]}, "spec.rules[0].from[0].source"),
        (
            {"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/40"]}}]}]},
            "spec.rules[0].from[0].source.ipBlocks[0]",
        ),
        ({"rules": [{"to": [{"operation": {"ports": ["http"]}}]}]}, "spec.rules[0].to[0].operation.ports[0]"),
        ({"rules": [{"to": [{"operation": {"ports": ["0"]}}]}]}, "spec.rules[0].to[0].operation.ports[0]"),
        ({"rules": [{"when": [{"key": "source.ip"}]}]}, "spec.rules[0].when[0]"),
        ({"rules": [{"when": [{"key": "source.princpal", "values": ["x"]}]}]}, "spec.rules[0].when[0].key"),
        (
            {"rules": [{"when": [{"key": "destination.port", "values": ["x"]}]}]},
            "spec.rules[0].when[0].values[0]",
        ),
        ({"rules": {"from": []}}, "spec.rules"),
    ],
)
@pytest.mark.parametrize("action", ["ALLOW", "DENY"])
def test_invalid_policy_fails_closed_with_warning_naming_the_field(
    spec: dict[str, Any], field: str, action: str
) -> None:
    res = with_web(authz("bad", selector=WEB, action=action, **spec), authz("fine", "other"))
    assert [(w.kind, w.namespace, w.name, w.field) for w in res.warnings] == [
        ("AuthorizationPolicy", "demo", "bad", field)
    ]
    assert "other/fine" in res.authorizations
    policy = res.authorizations["demo/bad"]
    assert [r.ByteSize() for r in policy.rules] == ([] if action == "ALLOW" else [0])
    assert not allowed(res, "web") and not allowed(res, "web", peer=None)


@pytest.mark.parametrize(
    "selector",
    [
        {"matchLabels": {"app": ["web"]}},
        {"matchExpressions": []},
        {"matchLabels": {"bad key!": "x"}},
        "app=web",
    ],
)
def test_policy_with_invalid_selector_is_skipped(selector: Any) -> None:
    res = with_web(authz("bad", selector=selector, rules=[{}]), authz("fine"))
    assert list(res.authorizations) == ["demo/fine"]
    assert [(w.name, w.field.startswith("spec.selector")) for w in res.warnings] == [("bad", True)]
