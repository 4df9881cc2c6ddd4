"""mesh.rt.labstate keeps the lab writers' protocol: one flock, atomic files, a growing
resourceVersion, the counter written at the end; compatible with meshctl's Store both ways."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from mesh.rt.labstate import LabState, LabStateError, patch_pod_annotations
from meshctl.lab.store import Store


def _annotations(state: LabState, name: str) -> dict[str, str] | None:
    obj = state.read(("Pod", "demo", name))
    assert obj is not None
    annotations: dict[str, str] | None = obj["metadata"].get("annotations")
    return annotations


def _pod(name: str, uid: str = "u1", annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "demo", "uid": uid}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"nodeName": "n1"}}


def test_transaction_numbers_writes_and_updates_the_counter_at_the_end(tmp_path: Path) -> None:
    state = LabState(tmp_path)
    with state.transaction() as txn:
        txn.put(_pod("a"))
        txn.put(_pod("b"))
        assert not state.counter_file.exists()  # only when the batch is complete
    assert state.current_rv() == 2
    assert [p["metadata"]["resourceVersion"] for p in state.list("Pod")] == ["1", "2"]
    with state.transaction():
        pass
    assert state.current_rv() == 2  # no writes, no counter change


def test_patch_sets_and_removes_annotations_of_that_incarnation_only(tmp_path: Path) -> None:
    state = LabState(tmp_path)
    with state.transaction() as txn:
        txn.put(_pod("a", annotations={"keep": "1"}))
    assert patch_pod_annotations(state, "demo", "a", {"ambient.istio.io/redirection": "pending"}, uid="u1")
    assert _annotations(state, "a") == {"keep": "1", "ambient.istio.io/redirection": "pending"}
    assert not patch_pod_annotations(
        state, "demo", "a", {"ambient.istio.io/redirection": "pending"}, uid="u1"
    )
    assert not patch_pod_annotations(state, "demo", "a", {"x": "y"}, uid="someone-else")
    assert patch_pod_annotations(state, "demo", "a", {"ambient.istio.io/redirection": None, "keep": None})
    assert _annotations(state, "a") is None
    assert not patch_pod_annotations(state, "demo", "gone", {"x": "y"})
    assert state.current_rv() == 3


def test_meshctl_store_and_labstate_share_one_counter_and_format(tmp_path: Path) -> None:
    store, state = Store(tmp_path), LabState(tmp_path)
    with store.transaction() as txn:
        txn.put(_pod("a"))
    patch_pod_annotations(state, "demo", "a", {"ambient.istio.io/redirection": "enabled"})
    with store.transaction() as txn:
        txn.put(_pod("b"))
    assert store.current_rv() == state.current_rv() == 3
    from_store = store.get(("Pod", "demo", "a"))
    assert from_store is not None
    assert from_store["metadata"]["annotations"] == {"ambient.istio.io/redirection": "enabled"}
    assert [p["metadata"]["resourceVersion"] for p in state.list("Pod")] == ["2", "3"]


def test_concurrent_writers_never_lose_an_update(tmp_path: Path) -> None:
    state = LabState(tmp_path)
    with state.transaction() as txn:
        txn.put(_pod("a"))

    def writer(index: int) -> None:
        for round_ in range(20):
            patch_pod_annotations(LabState(tmp_path), "demo", "a", {f"w{index}": str(round_)})

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert _annotations(state, "a") == {f"w{i}": "19" for i in range(4)}
    assert state.current_rv() == 1 + 4 * 20


def test_temporary_files_are_not_objects(tmp_path: Path) -> None:
    state = LabState(tmp_path)
    with state.transaction() as txn:
        txn.put(_pod("a"))
    (state.objects / "Pod" / "demo" / ".a.yaml.123.tmp").write_text("half")
    (state.objects / "Pod" / "demo" / ".b.yaml").write_text("kind: Pod")
    assert [p["metadata"]["name"] for p in state.list("Pod")] == ["a"]


def test_broken_files_are_errors_that_name_the_file(tmp_path: Path) -> None:
    state = LabState(tmp_path)
    state.counter_file.parent.mkdir(parents=True, exist_ok=True)
    state.counter_file.write_text("seven\n")
    with pytest.raises(LabStateError, match="resource-version"):
        state.current_rv()
    path = state.object_path(("Pod", "demo", "x"))
    path.parent.mkdir(parents=True)
    path.write_text("a: [")
    with pytest.raises(LabStateError, match=r"x\.yaml"):
        state.read(("Pod", "demo", "x"))


def test_shared_listing_parses_only_changed_files_and_forgets_deleted_ones(tmp_path: Path) -> None:
    state = LabState(tmp_path)
    with state.transaction() as txn:
        txn.put(_pod("a"))
        txn.put(_pod("b", uid="u2"))
    first = state.list("Pod", shared=True)
    again = state.list("Pod", shared=True)
    assert [id(o) for o in again] == [id(o) for o in first]  # unchanged files: the same objects
    assert patch_pod_annotations(state, "demo", "b", {"x": "1"}, uid="u2")
    changed = state.list("Pod", shared=True)
    assert changed[0] is first[0] and changed[1] is not first[1]
    assert changed[1]["metadata"]["annotations"] == {"x": "1"}
    with state.transaction() as txn:
        txn.remove(("Pod", "demo", "a"))
    assert [p["metadata"]["name"] for p in state.list("Pod", shared=True)] == ["b"]
    assert state.list("Pod") == state.list("Pod", shared=True)  # the same content as a fresh read
