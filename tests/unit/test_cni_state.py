"""The node agent's per-pod decisions and the pod view built from lab objects, as tables."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from ztunnel.cni.enroll import PodFacts
from ztunnel.cni.pods import PodInfo, pod_info, pods_on_node
from ztunnel.cni.state import (
    Action,
    PodRecord,
    RetryPolicy,
    decide,
    enrolled,
    failed,
    recovered_phase,
    released,
    retry_now,
    zds_uid,
)

AMBIENT = {"istio.io/dataplane-mode": "ambient"}


def _pod(*, ns_labels: dict[str, str] | None = None, uid: str = "u1", **facts: Any) -> PodInfo:
    return PodInfo(
        uid=uid,
        namespace="demo",
        name="web-0",
        node="n1",
        service_account="web",
        facts=PodFacts(
            ns_labels if ns_labels is not None else AMBIENT,
            facts.pop("labels", {}),
            facts.pop("annotations", {}),
            **facts,
        ),
    )


def _rec(phase: str = "unenrolled", *, retry_at: float = 0.0) -> PodRecord:
    return PodRecord("u1", "demo", "web-0", "web", "/var/run/netns/p1", phase=phase, retry_at=retry_at)  # type: ignore[arg-type]


OUT: dict[str, str] = {}
NOW = 100.0


@pytest.mark.parametrize(
    ("record", "pod", "action"),
    [
        (None, _pod(), Action.NONE),  # no namespace known: nothing to act on
        (_rec(), _pod(), Action.ENROLL),
        (_rec("enabled"), _pod(), Action.NONE),
        (_rec("pending", retry_at=NOW - 1), _pod(), Action.ENROLL),
        (_rec("pending", retry_at=NOW + 1), _pod(), Action.NONE),  # backing off
        (_rec("enabled"), _pod(ns_labels=OUT), Action.RELEASE),  # namespace label removed
        (_rec("pending", retry_at=NOW + 9), _pod(ns_labels=OUT), Action.RELEASE),
        (_rec(), _pod(ns_labels=OUT), Action.NONE),
        (_rec("enabled"), _pod(labels={"istio.io/dataplane-mode": "none"}), Action.RELEASE),
        (_rec(), _pod(ns_labels=OUT, labels=AMBIENT), Action.ENROLL),
        (_rec("enabled"), None, Action.FORGET),  # pod deleted
        (_rec(), None, Action.FORGET),
        (_rec("enabled"), _pod(deleted=True), Action.FORGET),
        (_rec("enabled"), _pod(uid="u2"), Action.FORGET),  # recreated under the same name
    ],
)
def test_decide(record: PodRecord | None, pod: PodInfo | None, action: Action) -> None:
    assert decide(record, pod, now=NOW, view_version=7) is action


@pytest.mark.parametrize("pod", [None, _pod(ns_labels=OUT)])
def test_a_view_older_than_the_record_is_not_acted_on(pod: PodInfo | None) -> None:
    """A CNI ADD read state at version 8; a view complete only up to 7 may not know the pod yet
    (or may hold its namespace's old labels): no forget, no release until the view catches up."""
    record = dataclasses.replace(_rec("enabled"), since=8)
    assert decide(record, pod, now=NOW, view_version=7) is Action.NONE
    assert decide(record, pod, now=NOW, view_version=8) is not Action.NONE


def test_failures_back_off_doubling_up_to_the_cap() -> None:
    policy = RetryPolicy(initial=1.0, maximum=8.0)
    rec, delays = _rec(), []
    for _ in range(6):
        rec = failed(rec, now=NOW, policy=policy)
        delays.append(rec.retry_at - NOW)
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert rec.phase == "pending" and rec.failures == 6
    assert enrolled(rec) == dataclasses.replace(_rec(), phase="enabled")
    assert released(rec) == _rec()


def test_ztunnel_connect_makes_pending_pods_due() -> None:
    records = {"u1": _rec("pending", retry_at=NOW + 30), "u2": dataclasses.replace(_rec("enabled"), uid="u2")}
    after = retry_now(records)
    assert decide(after["u1"], _pod(), now=NOW, view_version=0) is Action.ENROLL
    assert after["u2"] == records["u2"]


@pytest.mark.parametrize(
    ("annotation", "phase"), [("enabled", "enabled"), ("pending", "pending"), (None, "unenrolled")]
)
def test_recovered_phase_comes_from_the_annotation(annotation: str | None, phase: str) -> None:
    annotations = {"ambient.istio.io/redirection": annotation} if annotation else {}
    assert recovered_phase(_pod(annotations=annotations)) == phase


def test_zds_uid() -> None:
    assert zds_uid("demo", "web-0") == "Kubernetes//Pod/demo/web-0"
    assert zds_uid("demo", "web-0", cluster="lab") == "lab//Pod/demo/web-0"


def _pod_obj(name: str, *, ns: str = "demo", node: str = "n1", **extra: Any) -> dict[str, Any]:
    meta = {"name": name, "namespace": ns, "uid": f"uid-{name}", **extra.pop("meta", {})}
    return {"kind": "Pod", "metadata": meta, "spec": {"nodeName": node, **extra}}


def test_pods_on_node_takes_only_this_nodes_pods_with_their_namespace_labels() -> None:
    pods = [
        _pod_obj("a", serviceAccountName="web", meta={"labels": {"app": "a"}}),
        _pod_obj("b", node="n2"),
        _pod_obj("c", ns="legacy", hostNetwork=True, meta={"deletionTimestamp": "2026-01-01T00:00:00Z"}),
        {"kind": "Pod", "metadata": {"name": "no-uid", "namespace": "demo"}, "spec": {"nodeName": "n1"}},
    ]
    namespaces = [{"kind": "Namespace", "metadata": {"name": "demo", "labels": AMBIENT}}]
    view = pods_on_node(pods, namespaces, node="n1")
    assert sorted(view) == ["uid-a", "uid-c"]
    a, c = view["uid-a"], view["uid-c"]
    assert (a.service_account, a.facts.namespace_labels, a.facts.labels) == ("web", AMBIENT, {"app": "a"})
    assert (c.service_account, c.facts.namespace_labels, c.facts.host_network, c.facts.deleted) == (
        "default",
        {},
        True,
        True,
    )


def test_pod_info_reads_the_redirection_annotation() -> None:
    obj = _pod_obj("a", meta={"annotations": {"ambient.istio.io/redirection": "enabled"}})
    info = pod_info(obj, {})
    assert info is not None and info.redirection == "enabled"
