"""The lab-state pod index: reads objects/Pod/<ns>/<name>.yaml, follows changes, never grants on a guess."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from istiod_lite.ca.pods import LabStatePodIndex


def _write_pod(
    state: Path, namespace: str, name: str, *, sa: str | None, node: str | None, **extra: object
) -> Path:
    spec: dict[str, object] = {}
    if sa is not None:
        spec["serviceAccountName"] = sa
    if node is not None:
        spec["nodeName"] = node
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, **extra.get("metadata", {})},  # type: ignore[dict-item]
        "spec": spec,
        "status": extra.get("status", {"phase": "Running"}),
    }
    path = state / "objects" / "Pod" / namespace / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{name}.tmp")
    tmp.write_text(yaml.safe_dump(obj))
    os.replace(tmp, path)
    return path


def test_finds_service_accounts_per_node(tmp_path: Path) -> None:
    _write_pod(tmp_path, "default", "sleep-1", sa="sleep", node="n1")
    _write_pod(tmp_path, "default", "sleep-2", sa="sleep", node="n2")
    _write_pod(tmp_path, "default", "plain", sa=None, node="n2")
    index = LabStatePodIndex(tmp_path)
    assert index.service_account_on_node("default", "sleep", "n1")
    assert index.nodes_for_service_account("default", "sleep") == {"n1", "n2"}
    assert index.nodes_for_service_account("default", "default") == {"n2"}, (
        "no serviceAccountName means 'default'"
    )
    assert not index.service_account_on_node("default", "sleep", "n3")
    assert not index.service_account_on_node("other", "sleep", "n1")


def test_follows_moves_and_deletions(tmp_path: Path) -> None:
    index = LabStatePodIndex(tmp_path)
    assert not index.service_account_on_node("default", "sleep", "n1"), "no state directory yet: nothing"
    path = _write_pod(tmp_path, "default", "sleep-1", sa="sleep", node="n1")
    assert index.service_account_on_node("default", "sleep", "n1")
    _write_pod(tmp_path, "default", "sleep-1", sa="sleep", node="n2")
    assert index.nodes_for_service_account("default", "sleep") == {"n2"}
    path.unlink()
    assert index.nodes_for_service_account("default", "sleep") == frozenset()


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("{not yaml: [", "malformed YAML"),
        ("- a list\n", "not a mapping"),
        ("metadata: {namespace: default}\nspec: {serviceAccountName: sleep}\n", "no node"),
        ("metadata: 7\nspec: {serviceAccountName: sleep, nodeName: n1}\n", "metadata not a mapping"),
        (
            "metadata: {namespace: default}\nspec: {serviceAccountName: [x], nodeName: n1}\n",
            "sa not a string",
        ),
    ],
)
def test_unreadable_pod_files_grant_nothing(tmp_path: Path, content: str, why: str) -> None:
    directory = tmp_path / "objects" / "Pod" / "default"
    directory.mkdir(parents=True)
    (directory / "bad.yaml").write_text(content)
    index = LabStatePodIndex(tmp_path)
    assert index.nodes_for_service_account("default", "sleep") == frozenset(), why


@pytest.mark.parametrize(
    "extra",
    [
        {"status": {"phase": "Succeeded"}},
        {"status": {"phase": "Failed"}},
        {"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}},
    ],
)
def test_finished_or_deleting_pods_do_not_count(tmp_path: Path, extra: dict[str, object]) -> None:
    _write_pod(tmp_path, "default", "job", sa="sleep", node="n1", **extra)
    assert not LabStatePodIndex(tmp_path).service_account_on_node("default", "sleep", "n1")


def test_pod_in_wrong_directory_does_not_count(tmp_path: Path) -> None:
    path = _write_pod(tmp_path, "default", "sleep-1", sa="sleep", node="n1")
    moved = tmp_path / "objects" / "Pod" / "other" / path.name
    moved.parent.mkdir(parents=True)
    path.rename(moved)
    assert not LabStatePodIndex(tmp_path).service_account_on_node("other", "sleep", "n1")
