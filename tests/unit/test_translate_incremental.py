"""``Translator`` over a stream of views gives exactly what a fresh translation gives, reusing the rest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from istiod_lite.translate import TranslatedResources, Translator, build_resources
from istiod_lite.view import ENDPOINT_SLICE, POD, REPLICA_SET, Informers, parse_object
from tests.unit.test_translate_scenarios import (
    authz,
    endpoint_slice,
    namespace,
    peer_auth,
    pod,
    replica_set,
    service,
)

WEB = {"matchLabels": {"app": "web"}}
Sink = Any


def start() -> list[dict[str, Any]]:
    return [
        namespace("demo"),
        replica_set("web-1a", deployment="web"),
        pod("web-1a-x", labels={"app": "web"}, owner=("ReplicaSet", "web-1a"), ports={"http": 8080}),
        pod("db-0", ip="10.244.1.9", labels={"app": "db"}),
        service("web", ports=[{"name": "http", "port": 80, "targetPort": "http"}]),
        endpoint_slice("web", endpoints=[("web-1a-x", "10.244.1.5", True)]),
    ]


def up(sink: Sink, obj: dict[str, Any]) -> None:
    sink.upsert(parse_object(obj))


STEPS: list[tuple[str, Callable[[Sink], None]]] = [
    ("nothing", lambda s: None),
    ("policy-selects-pod", lambda s: up(s, authz("allow-web", selector=WEB, rules=[{}]))),
    ("second-policy-change", lambda s: up(s, authz("allow-web", selector={"matchLabels": {"app": "db"}}))),
    ("peer-auth-strict", lambda s: up(s, peer_auth("default", mode="STRICT"))),
    (
        "peer-auth-port",
        lambda s: up(s, peer_auth("web", selector={"app": "web"}, ports={8080: "PERMISSIVE"})),
    ),
    ("pod-relabelled", lambda s: up(s, pod("db-0", ip="10.244.1.9", labels={"app": "web"}))),
    (
        "service-port-renamed",
        lambda s: up(s, service("web", ports=[{"name": "h", "port": 81, "targetPort": "http"}])),
    ),
    (
        "endpoint-not-ready",
        lambda s: up(s, endpoint_slice("web", endpoints=[("web-1a-x", "10.244.1.5", False)])),
    ),
    ("replica-set-gone", lambda s: s.delete(REPLICA_SET, "demo", "web-1a")),
    ("invalid-policy", lambda s: up(s, authz("bad", action="DENY", rules=[{"form": []}]))),
    ("invalid-pod", lambda s: up(s, pod("db-0", ip="not-an-ip"))),
    ("pod-fixed", lambda s: up(s, pod("db-0", ip="10.244.1.9"))),
    ("slice-gone", lambda s: s.delete(ENDPOINT_SLICE, "demo", "web-abcde")),
    ("pod-gone", lambda s: s.delete(POD, "demo", "web-1a-x")),
]


def same(a: TranslatedResources, b: TranslatedResources) -> bool:
    return (
        list(a.addresses) == list(b.addresses)
        and all(a.addresses[k] == b.addresses[k] for k in a.addresses)
        and dict(a.authorizations) == dict(b.authorizations)
        and a.warnings == b.warnings
    )


def test_every_step_equals_a_fresh_translation() -> None:
    informers = Informers()
    sink = informers.sink("test")
    for obj in start():
        up(sink, obj)
    translator = Translator()
    for name, change in STEPS:
        change(sink)
        view = informers.view()
        assert same(translator.build(view), build_resources(view)), f"after step {name!r}"


@pytest.mark.parametrize(
    ("change", "reused"),
    [
        (lambda s: up(s, pod("db-0", ip="10.244.1.9", labels={"app": "db", "v": "2"})), True),
        (lambda s: up(s, authz("allow-web", selector=WEB, rules=[{}])), False),
        (lambda s: up(s, authz("allow-db", selector={"matchLabels": {"app": "db"}}, rules=[{}])), True),
    ],
    ids=["other-pod-changed", "policy-selecting-it-added", "unrelated-policy-added"],
)
def test_unchanged_workloads_are_reused(change: Callable[[Sink], None], reused: bool) -> None:
    informers = Informers()
    sink = informers.sink("test")
    for obj in start():
        up(sink, obj)
    translator = Translator()
    key = "Kubernetes//Pod/demo/web-1a-x"
    before = translator.build(informers.view()).addresses[key]
    change(sink)
    after = translator.build(informers.view()).addresses[key]
    if reused:
        assert after is before
    else:
        assert after != before and list(after.workload.authorization_policies) == ["demo/allow-web"]


POD_ONLY_STEPS: list[tuple[str, Callable[[Sink], None]]] = [
    (
        "new-pod",
        lambda s: up(
            s, pod("web-1a-y", ip="10.244.1.6", labels={"app": "web"}, owner=("ReplicaSet", "web-1a"))
        ),
    ),
    ("pod-relabelled", lambda s: up(s, pod("db-0", ip="10.244.1.9", labels={"app": "web"}))),
    ("pod-invalid", lambda s: up(s, pod("db-0", ip="not-an-ip"))),
    ("pod-fixed", lambda s: up(s, pod("db-0", ip="10.244.1.9", labels={"app": "db"}))),
    ("pod-gone", lambda s: s.delete(POD, "demo", "web-1a-y")),
    ("pod-back", lambda s: up(s, pod("web-1a-y", ip="10.244.1.7", labels={"app": "web"}))),
    (
        "then-a-service-changes",
        lambda s: up(s, service("web", ports=[{"name": "h", "port": 82, "targetPort": 8080}])),
    ),
    ("and-pods-again", lambda s: s.delete(POD, "demo", "db-0")),
]


def test_pod_only_changes_take_the_short_path_and_still_equal_a_fresh_translation() -> None:
    informers = Informers()
    sink = informers.sink("test")
    for obj in [*start(), authz("allow-web", selector=WEB, rules=[{}]), peer_auth("default", mode="STRICT")]:
        up(sink, obj)
    translator = Translator()
    translator.build(informers.view())
    for name, change in POD_ONLY_STEPS:
        change(sink)
        view = informers.view()
        assert same(translator.build(view), build_resources(view)), f"after step {name!r}"
