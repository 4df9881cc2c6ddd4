"""PeerAuthentication -> Istio's deny-when-no-principal policies: precedence, age, port exceptions."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from istiod_lite.translate import TranslatedResources
from tests.unit.test_translate_scenarios import allowed, namespace, peer_auth, pod, translate, workload

STATIC = "istio-system/istio_converted_static_strict"
WEB = {"app": "web"}


def cluster(*policies: dict[str, Any]) -> TranslatedResources:
    return translate([namespace("demo"), pod("web", labels={"app": "web"}), *policies])


def plaintext_ok(res: TranslatedResources, port: int = 8080) -> bool:
    return allowed(res, "web", port=port, peer=None)


def keys(res: TranslatedResources) -> list[str]:
    return list(workload(res, "web").authorization_policies)


def test_no_peer_authentication_no_policies() -> None:
    res = cluster()
    assert res.authorizations == {} and keys(res) == [] and plaintext_ok(res)


def test_static_strict_policy_sent_when_any_exists() -> None:
    res = cluster(peer_auth("default", "istio-system", mode="PERMISSIVE"))
    policy = res.authorizations[STATIC]
    assert json_format.MessageToDict(policy) == {
        "name": "istio_converted_static_strict",
        "namespace": "istio-system",
        "scope": "WORKLOAD_SELECTOR",
        "action": "DENY",
        "rules": [{"clauses": [{"matches": [{"notPrincipals": [{"presence": {}}]}]}]}],
    }
    assert keys(res) == [] and plaintext_ok(res)


@pytest.mark.parametrize(
    ("root", "ns", "wl", "strict"),
    [
        ("STRICT", None, None, True),
        ("STRICT", "PERMISSIVE", None, False),
        ("STRICT", "UNSET", None, True),
        ("STRICT", "DISABLE", None, False),
        ("PERMISSIVE", "STRICT", None, True),
        (None, "STRICT", "PERMISSIVE", False),
        (None, "STRICT", "DISABLE", False),
        (None, "STRICT", "UNSET", True),
        ("PERMISSIVE", "PERMISSIVE", "STRICT", True),
        ("STRICT", None, "UNSET", True),
    ],
)
def test_workload_over_namespace_over_root(
    root: str | None, ns: str | None, wl: str | None, strict: bool
) -> None:
    policies = []
    if root:
        policies.append(peer_auth("mesh", "istio-system", mode=root))
    if ns:
        policies.append(peer_auth("ns", mode=ns))
    if wl:
        policies.append(peer_auth("wl", mode=wl, selector=WEB))
    res = cluster(*policies)
    assert keys(res) == ([STATIC] if strict else [])
    assert plaintext_ok(res) is not strict and allowed(res, "web")


def test_workload_policy_must_select_the_pod() -> None:
    res = cluster(peer_auth("ns", mode="PERMISSIVE"), peer_auth("db", mode="STRICT", selector={"app": "db"}))
    assert keys(res) == [] and plaintext_ok(res)


@pytest.mark.parametrize(("older", "strict"), [("permissive", False), ("strict", True)])
@pytest.mark.parametrize("level", ["namespace", "workload", "root"])
def test_oldest_wins_a_conflict(older: str, strict: bool, level: str) -> None:
    ns, selector = {"namespace": ("demo", None), "workload": ("demo", WEB), "root": ("istio-system", None)}[
        level
    ]
    stamps = {"permissive": "2023-01-01T00:00:00Z", "strict": "2024-01-01T00:00:00Z"}
    if older == "strict":
        stamps = {"permissive": "2024-01-01T00:00:00Z", "strict": "2023-01-01T00:00:00Z"}
    res = cluster(
        peer_auth("a-permissive", ns, mode="PERMISSIVE", selector=selector, created=stamps["permissive"]),
        peer_auth("b-strict", ns, mode="STRICT", selector=selector, created=stamps["strict"]),
    )
    assert plaintext_ok(res) is not strict


def test_root_namespace_policy_with_selector_is_ignored() -> None:
    res = cluster(peer_auth("wl", "istio-system", mode="STRICT", selector=WEB))
    assert keys(res) == [] and plaintext_ok(res)


CONVERTED = "demo/converted_peer_authentication_wl"


@pytest.mark.parametrize(
    ("parents", "mode", "ports", "plaintext_8080", "plaintext_9090"),
    [
        ([], "STRICT", {9090: "PERMISSIVE"}, False, True),
        ([], "STRICT", {9090: "DISABLE"}, False, True),
        ([], "PERMISSIVE", {8080: "STRICT"}, False, True),
        ([], "DISABLE", {8080: "STRICT"}, False, True),
        ([peer_auth("ns", mode="STRICT")], None, {9090: "PERMISSIVE"}, False, True),
        ([peer_auth("ns", mode="STRICT")], None, {9090: "DISABLE"}, False, True),
        ([peer_auth("mesh", "istio-system", mode="STRICT")], None, {9090: "PERMISSIVE"}, False, True),
        ([peer_auth("ns", mode="PERMISSIVE")], None, {8080: "STRICT"}, False, True),
        ([], None, {8080: "STRICT"}, False, True),
        ([peer_auth("mesh", "istio-system", mode="STRICT")], "PERMISSIVE", {8080: "STRICT"}, False, True),
    ],
)
def test_port_level_exceptions_become_a_converted_policy(
    parents: list[dict[str, Any]],
    mode: str | None,
    ports: dict[int, str],
    plaintext_8080: bool,
    plaintext_9090: bool,
) -> None:
    res = cluster(*parents, peer_auth("wl", mode=mode, selector=WEB, ports=ports))
    assert keys(res) == [CONVERTED] and CONVERTED in res.authorizations
    assert (plaintext_ok(res, 8080), plaintext_ok(res, 9090)) == (plaintext_8080, plaintext_9090)
    assert allowed(res, "web", port=8080) and allowed(res, "web", port=9090)


def test_converted_policies_have_istios_shape() -> None:
    strict = cluster(
        peer_auth("wl", mode="STRICT", selector=WEB, ports={9090: "PERMISSIVE", 9091: "PERMISSIVE"})
    )
    assert json_format.MessageToDict(strict.authorizations[CONVERTED]) == {
        "name": "converted_peer_authentication_wl",
        "namespace": "demo",
        "scope": "WORKLOAD_SELECTOR",
        "action": "DENY",
        "rules": [
            {
                "clauses": [
                    {"matches": [{"notPrincipals": [{"presence": {}}]}]},
                    {"matches": [{"notDestinationPorts": [9090]}]},
                    {"matches": [{"notDestinationPorts": [9091]}]},
                ]
            }
        ],
    }
    permissive = cluster(
        peer_auth("wl", mode="PERMISSIVE", selector=WEB, ports={8080: "STRICT", 9090: "STRICT"})
    )
    assert [json_format.MessageToDict(r) for r in permissive.authorizations[CONVERTED].rules] == [
        {"clauses": [{"matches": [{"notPrincipals": [{"presence": {}}], "destinationPorts": [port]}]}]}
        for port in (8080, 9090)
    ]


@pytest.mark.parametrize(
    ("mode", "ports", "expected"),
    [
        ("STRICT", {9090: "STRICT"}, [STATIC]),
        ("PERMISSIVE", {9090: "PERMISSIVE"}, []),
        ("STRICT", {9090: "UNSET"}, [STATIC]),
    ],
)
def test_port_levels_that_agree_need_no_converted_policy(
    mode: str, ports: dict[int, str], expected: list[str]
) -> None:
    res = cluster(peer_auth("wl", mode=mode, selector=WEB, ports=ports))
    assert keys(res) == expected and CONVERTED not in res.authorizations


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"mtls": {"mode": "STRICTER"}}, "spec.mtls.mode"),
        ({"mtls": {"mode": "STRICT"}, "mtl": {}}, "spec.mtl"),
        (
            {"selector": {"matchLabels": WEB}, "portLevelMtls": {"http": {"mode": "STRICT"}}},
            "spec.portLevelMtls.http",
        ),
        (
            {"selector": {"matchLabels": WEB}, "portLevelMtls": {"70000": {"mode": "STRICT"}}},
            "spec.portLevelMtls.70000",
        ),
        ({"portLevelMtls": {"8080": {"mode": "STRICT"}}}, "spec.portLevelMtls"),
        (
            {"selector": {"matchLabels": {"app": 1}}, "mtls": {"mode": "STRICT"}},
            "spec.selector.matchLabels.app",
        ),
    ],
)
def test_invalid_peer_authentication_skipped_with_warning(spec: dict[str, Any], field: str) -> None:
    bad = peer_auth("bad")
    bad["spec"] = spec
    res = cluster(bad, peer_auth("mesh", "istio-system", mode="PERMISSIVE"))
    assert [(w.kind, w.name, w.field) for w in res.warnings] == [("PeerAuthentication", "bad", field)]
    assert keys(res) == [] and plaintext_ok(res)
