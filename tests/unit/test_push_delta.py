"""Subscriptions and delta computation (pure)."""

from __future__ import annotations

import pytest

from istiod_lite.push.delta import DiffCache, Subscription, delta_from_versions, diff_sets
from istiod_lite.push.snapshot import ResourceSet, version_resources
from mesh.api.istio.security import authorization_pb2
from mesh.rt.xds import AUTHORIZATION_TYPE_URL


def policies(**rules: int) -> ResourceSet:
    """Resources named by keyword; the value changes the content (and the version)."""
    return version_resources(
        AUTHORIZATION_TYPE_URL,
        {
            f"ns/{name}": authorization_pb2.Authorization(name=name, namespace="ns", dry_run=bool(v % 2))
            for name, v in rules.items()
        },
    )


@pytest.mark.parametrize(
    ("subscribe", "wildcard", "names"),
    [((), True, set()), (("*",), True, set()), (("*", "ns/a"), True, {"ns/a"}), (("ns/a",), False, {"ns/a"})],
)
def test_initial_subscription(subscribe: tuple[str, ...], wildcard: bool, names: set[str]) -> None:
    sub = Subscription.initial(subscribe)
    assert (sub.wildcard, set(sub.names)) == (wildcard, names)


@pytest.mark.parametrize(
    ("start", "subscribe", "unsubscribe", "wildcard", "names"),
    [
        (Subscription(True), (), ("*",), False, set()),
        (Subscription(False, frozenset({"a"})), ("*",), (), True, {"a"}),
        (Subscription(False, frozenset({"a"})), ("b",), ("a",), False, {"b"}),
        (Subscription(True), ("a",), (), True, {"a"}),
    ],
)
def test_changed_subscription(
    start: Subscription,
    subscribe: tuple[str, ...],
    unsubscribe: tuple[str, ...],
    wildcard: bool,
    names: set[str],
) -> None:
    sub = start.changed(subscribe=subscribe, unsubscribe=unsubscribe)
    assert (sub.wildcard, set(sub.names)) == (wildcard, names)


def test_select_keeps_only_subscribed_names() -> None:
    resources = policies(a=0, b=0, c=0)
    assert Subscription(True).select(resources) is resources
    assert set(Subscription(False, frozenset({"ns/a", "ns/zz"})).select(resources)) == {"ns/a"}


def test_diff_sends_changed_and_new_and_removes_gone() -> None:
    old = policies(a=0, b=0, c=0)
    new = policies(a=0, b=1, d=0)
    delta = diff_sets(old, new)
    assert sorted(r.name for r in delta.upserts) == ["ns/b", "ns/d"]
    assert delta.removed == ("ns/c",)
    assert diff_sets(new, new).empty


def test_delta_from_reported_versions_skips_what_the_client_has() -> None:
    new = policies(a=0, b=1, c=0)
    known = {"ns/a": new["ns/a"].version, "ns/b": "stale", "ns/old": "x"}
    delta = delta_from_versions(known, new)
    assert sorted(r.name for r in delta.upserts) == ["ns/b", "ns/c"]
    assert delta.removed == ("ns/old",)


def test_diff_cache_computes_once_per_pair() -> None:
    cache = DiffCache(size=2)
    old, new = policies(a=0), policies(a=1)
    first = cache.diff(old, new)
    assert cache.diff(old, new) is first
    cache.diff(new, old)
    cache.diff(old, old)  # evicts (old, new)
    assert cache.diff(old, new) is not first
    assert cache.diff(old, new) == first
