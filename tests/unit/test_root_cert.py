"""The istio-ca-root-cert ConfigMap of every namespace, decided as data: which namespaces get a
create or a repair, which are left alone."""

from __future__ import annotations

from typing import Any

import pytest

from istiod_lite.root_cert import (
    RootConfigMap,
    RootWrite,
    plan_root_configmaps,
    root_configmap,
)
from istiod_lite.sources.objects import parse_object

ROOT = "-----BEGIN CERTIFICATE-----\nROOT\n-----END CERTIFICATE-----\n"


def namespace(name: str, **extra: Any) -> Any:
    return parse_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}, **extra})


def right(ns: str) -> RootConfigMap:
    return RootConfigMap.of(root_configmap(ns, ROOT))


CASES: list[tuple[str, list[Any], dict[str, RootConfigMap], list[RootWrite]]] = [
    ("none yet", [namespace("shop"), namespace("istio-system")], {},
     [RootWrite("istio-system", create=True), RootWrite("shop", create=True)]),
    ("all right", [namespace("shop")], {"shop": right("shop")}, []),
    ("another root", [namespace("shop")], {"shop": RootConfigMap("shop", "OLD", labelled=True)},
     [RootWrite("shop", create=False)]),
    ("no root key", [namespace("shop")], {"shop": RootConfigMap("shop", None, labelled=True)},
     [RootWrite("shop", create=False)]),
    ("label gone", [namespace("shop")], {"shop": RootConfigMap("shop", ROOT, labelled=False)},
     [RootWrite("shop", create=False)]),
    ("kube-system gets it, Kubernetes' own others do not",
     [namespace(n) for n in ("kube-system", "kube-public", "kube-node-lease", "local-path-storage")], {},
     [RootWrite("kube-system", create=True)]),
    ("a namespace being deleted", [namespace("old", status={"phase": "Terminating"}),
     namespace("gone", metadata={"name": "gone", "deletionTimestamp": "2026-12-06T00:00:00Z"})], {}, []),
    ("a ConfigMap left in a namespace that is gone", [], {"gone": right("gone")}, []),
]  # fmt: skip


@pytest.mark.parametrize(("name", "namespaces", "current", "writes"), CASES, ids=[c[0] for c in CASES])
def test_the_writes_every_namespace_needs(
    name: str, namespaces: list[Any], current: dict[str, RootConfigMap], writes: list[RootWrite]
) -> None:
    assert plan_root_configmaps(namespaces, current, ROOT) == writes


def test_the_configmap_as_istio_writes_it() -> None:
    made = root_configmap("shop", ROOT)
    assert made["metadata"] == {
        "name": "istio-ca-root-cert",
        "namespace": "shop",
        "labels": {"istio.io/config": "true"},
    }
    assert made["data"] == {"root-cert.pem": ROOT}
    found = RootConfigMap.of({**made, "data": {"root-cert.pem": ROOT, "extra": "kept"}})
    assert found == RootConfigMap("shop", ROOT, labelled=True) and found.right_for(ROOT)
