"""The istio-ca-root-cert ConfigMap of every namespace, decided as data: which namespaces get a
create or a repair, which are left alone; the controller tries a failed write again."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from istiod_lite.root_cert import (
    RootCertController,
    RootConfigMap,
    RootWrite,
    WriteOutcome,
    plan_root_configmaps,
    root_configmap,
)
from istiod_lite.sources.objects import parse_object
from mesh.testing.polling import wait_until

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


class FlakyStore:
    """An in-memory RootCertStore whose first ``fail`` writes fail (the API answering 500)."""

    def __init__(self, *, fail: int) -> None:
        self.fail = fail
        self.stored: dict[str, RootConfigMap] = {}
        self.attempts = 0

    async def watch(self, deliver: Callable[[Mapping[str, RootConfigMap]], None]) -> None:
        deliver(dict(self.stored))
        await asyncio.Event().wait()

    def write(
        self, writes: Sequence[RootWrite], root_pem: str, *, may_write: Callable[[], bool]
    ) -> WriteOutcome:
        outcome = WriteOutcome()
        for write in writes:
            self.attempts += 1
            if self.fail > 0:
                self.fail -= 1
                outcome.failed += 1
                continue
            self.stored[write.namespace] = outcome.written[write.namespace] = right(write.namespace)
        return outcome


async def test_a_failed_write_is_tried_again_and_nothing_is_written_twice() -> None:
    store = FlakyStore(fail=2)
    controller = RootCertController(
        store, ROOT, namespaces=lambda: [namespace("shop")], retry_initial=0.01, retry_max=0.02
    )
    task = asyncio.create_task(controller.run())
    try:
        await wait_until(lambda: "shop" in store.stored, within=5, what="the third try succeeds")
        controller.poke()  # nothing changed: nothing more to write
        await asyncio.sleep(0.1)
        assert store.attempts == 3
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
