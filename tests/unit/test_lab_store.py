"""The state directory: atomic object files, growing resourceVersions, read-modify-write, settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshctl.lab import builders as b
from meshctl.lab.errors import LabError, LabNotRunningError
from meshctl.lab.settings import LabSettings, build_settings, check_lab_id
from meshctl.lab.store import Store


def test_objects_are_files_with_growing_resource_versions(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with store.transaction() as txn:
        txn.put({**b.namespace("demo"), "metadata": {"name": "demo"}})
        txn.put(b.service("server", "demo", selector={"a": "b"}))
    assert (tmp_path / "objects/Namespace/_cluster/demo.yaml").is_file()
    assert (tmp_path / "objects/Service/demo/server.yaml").is_file()
    assert store.current_rv() == 2 and (tmp_path / "resource-version").read_text() == "2\n"
    assert store.get(("Service", "demo", "server"))["metadata"]["resourceVersion"] == "2"  # type: ignore[index]
    assert not [p for p in tmp_path.rglob("*.tmp")]
    assert list(store.load_all()) == [("Namespace", "", "demo"), ("Service", "demo", "server")]


def test_update_is_read_modify_write_and_skips_deleted_objects(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with store.transaction() as txn:
        txn.put(b.namespace("demo"))

    def relabel(obj: dict[str, object]) -> bool:
        obj["metadata"] = {"name": "demo", "labels": {"x": "y"}}
        return True

    with store.transaction() as txn:
        assert txn.update(("Namespace", "", "demo"), relabel)
        assert not txn.update(("Namespace", "", "gone"), relabel)
        assert txn.remove(("Namespace", "", "demo")) and not txn.remove(("Namespace", "", "demo"))
    assert store.current_rv() == 3 and store.get(("Namespace", "", "demo")) is None


def test_nothing_written_leaves_the_counter_alone(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with store.transaction():
        pass
    assert store.current_rv() == 0 and not (tmp_path / "resource-version").exists()


def test_settings_round_trip_and_names(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(LabNotRunningError, match="no lab is running"):
        store.read_settings()
    settings = build_settings(lab_id="t1", node_count=3)
    store.write_settings(settings)
    again = store.read_settings()
    assert again == settings and isinstance(again, LabSettings)
    node = again.node("node3")
    assert (node.netns, node.address, node.pod_cidr, node.gateway) == (
        "t1-node3",
        "10.240.0.13",
        "10.244.3.0/24",
        "10.244.3.1",
    )
    uid = "0a1b2c3d-4e5f-4000-8000-000000000000"
    assert again.pod_netns(uid) == "t1-pod-0a1b2c3d" and again.pod_link(uid) == "t1p0a1b2c3d"
    assert len(build_settings(lab_id="abcdef").pod_link(uid)) <= 15


@pytest.mark.parametrize("lab_id", ["", "Mlab", "m-lab", "1lab", "toolong7"])
def test_bad_lab_ids(lab_id: str) -> None:
    with pytest.raises(LabError, match="invalid lab id"):
        check_lab_id(lab_id)


def test_node_count_is_bounded() -> None:
    with pytest.raises(LabError, match="1 to 16 nodes"):
        build_settings(node_count=0)


def test_ztunnel_workers_out_of_range_say_what_to_pass() -> None:
    with pytest.raises(LabError, match="1 to 8 worker processes, not 0") as caught:
        build_settings(ztunnel_workers=0)
    assert "--ztunnel-workers" in caught.value.hint
