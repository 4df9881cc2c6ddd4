"""The source-fed pod index: upserts, moves, deletions and re-lists change what impersonation may use."""

from __future__ import annotations

from typing import Any

from istiod_lite.ca.pod_sink import PodIndexSink
from istiod_lite.sources.objects import KubeObject, parse_object


def _pod(name: str, *, sa: str | None = "sleep", node: str | None = "n1", **extra: Any) -> KubeObject:
    spec: dict[str, Any] = {
        k: v for k, v in (("serviceAccountName", sa), ("nodeName", node)) if v is not None
    }
    raw = {"kind": "Pod", "metadata": {"name": name, "namespace": "default", **extra.get("metadata", {})}}
    return parse_object({**raw, "spec": spec, "status": extra.get("status", {"phase": "Running"})})


def test_upsert_move_and_delete() -> None:
    sink = PodIndexSink()
    sink.upsert(_pod("a"))
    assert sink.service_account_on_node("default", "sleep", "n1")
    sink.upsert(_pod("a", node="n2"))
    assert sink.nodes_for_service_account("default", "sleep") == {"n2"}
    sink.delete("Pod", "default", "a")
    assert sink.nodes_for_service_account("default", "sleep") == frozenset()


def test_replace_is_the_whole_truth_and_other_kinds_are_ignored() -> None:
    sink = PodIndexSink()
    sink.upsert(_pod("old"))
    sink.replace("Pod", [_pod("b", node="n2"), _pod("c", sa=None, node="n3")])
    sink.replace("Service", [])
    sink.upsert(parse_object({"kind": "Service", "metadata": {"name": "x", "namespace": "default"}}))
    assert sink.nodes_for_service_account("default", "sleep") == {"n2"}
    assert sink.nodes_for_service_account("default", "default") == {"n3"}
    assert not sink.synced
    sink.mark_synced()
    assert sink.synced


def test_unscheduled_finished_and_deleting_pods_do_not_count() -> None:
    sink = PodIndexSink()
    sink.replace(
        "Pod",
        [
            _pod("pending", node=None),
            _pod("done", status={"phase": "Succeeded"}),
            _pod("failed", status={"phase": "Failed"}),
            _pod("going", metadata={"deletionTimestamp": "2026-01-01T00:00:00Z"}),
        ],
    )
    assert sink.nodes_for_service_account("default", "sleep") == frozenset()
    sink.upsert(_pod("running"))
    sink.upsert(_pod("running", status={"phase": "Failed"}))
    assert sink.nodes_for_service_account("default", "sleep") == frozenset(), "a pod that finished is dropped"
