"""A lab pod's volumes on disk (no root, no namespaces): atomic content updates, tokens in the token
file and their refresh, waiting for missing objects, mount points and their cleanup."""

from __future__ import annotations

import base64
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from istiod_lite.ca.auth import load_lab_tokens
from mesh.testing.clock import FakeClock
from meshctl.lab.mountpoints import ensure_mountpoint, release_mountpoints
from meshctl.lab.objects import ObjKey, key_of
from meshctl.lab.podvolumes import VolumeRuntime
from meshctl.lab.volumefs import DATA_LINK, read_payload, write_payload
from meshctl.lab.volumes import VolumeLayout

UID = "5f0c-uid"


def test_payload_layout_and_updates(tmp_path: Path) -> None:
    volume = tmp_path / "v"
    assert write_payload(volume, {"a": (b"1", 0o644), "dir/b": (b"2", 0o600)}, now=0)
    first = os.readlink(volume / DATA_LINK)
    assert first.startswith("..1970_01_01_00_00_00.")
    assert {p.name: os.readlink(p) for p in volume.iterdir() if not p.name.startswith("..")} == {
        "a": "..data/a",
        "dir": "..data/dir",
    }
    assert read_payload(volume) == {"a": (b"1", 0o644), "dir/b": (b"2", 0o600)}
    assert not write_payload(volume, {"a": (b"1", 0o644), "dir/b": (b"2", 0o600)}, now=1)  # unchanged
    assert write_payload(volume, {"a": (b"3", 0o644), "c": (b"4", 0o644)}, now=2)
    assert (volume / "a").read_bytes() == b"3" and (volume / "c").read_bytes() == b"4"
    assert not (volume / "dir").exists() and not (volume / first).exists()
    assert sorted(p.name for p in volume.iterdir() if p.name.startswith("..")) == sorted(
        [DATA_LINK, os.readlink(volume / DATA_LINK)]
    )


def test_a_reader_never_sees_half_an_update(tmp_path: Path) -> None:
    volume = tmp_path / "v"
    size = 256 * 1024
    write_payload(volume, {"f": (b"0" * size, 0o644), "g": (b"0", 0o644)}, now=0)
    seen: set[bytes] = set()
    problems: list[str] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            data = (volume / "f").read_bytes()
            if len(set(data)) != 1 or len(data) != size:
                problems.append(f"mixed or short read: {len(data)} bytes, {len(set(data))} values")
            seen.add(data[:1])
            try:  # one ..data target holds one version of every file
                target = volume / os.readlink(volume / DATA_LINK)
                pair = ((target / "f").read_bytes()[:1], (target / "g").read_bytes())
            except FileNotFoundError:
                continue  # swapped and removed between readlink and open: read again
            if pair[0] != pair[1]:
                problems.append(f"files of two versions in one ..data: {pair}")

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(1, 60):
            digit = str(i % 10).encode()
            write_payload(volume, {"f": (digit * size, 0o644), "g": (digit, 0o644)}, now=i)
    finally:
        stop.set()
        reader.join()
    assert not problems
    assert len(seen) > 1


def cm(name: str, data: dict[str, str], rv: str = "1") -> dict[str, Any]:
    meta = {"name": name, "namespace": "apps", "resourceVersion": rv}
    return {"kind": "ConfigMap", "metadata": meta, "data": data}


SA = {"kind": "ServiceAccount", "metadata": {"name": "web", "namespace": "apps", "resourceVersion": "1"}}
SECRET = {
    "kind": "Secret",
    "metadata": {"name": "creds", "namespace": "apps", "resourceVersion": "1"},
    "data": {"password": base64.b64encode(b"s3cret").decode()},
}
POD = {
    "metadata": {"name": "web-1", "namespace": "apps", "uid": UID},
    "spec": {
        "nodeName": "node1",
        "serviceAccountName": "web",
        "containers": [{"name": "c", "command": ["true"]}],
        "volumes": [
            {"name": "cfg", "configMap": {"name": "cfg"}},
            {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
            {
                "name": "token",
                "projected": {
                    "sources": [
                        {
                            "serviceAccountToken": {
                                "audience": "istio-ca",
                                "expirationSeconds": 1000,
                                "path": "t",
                            }
                        }
                    ]
                },
            },
            {"name": "scratch", "emptyDir": {}},
        ],
    },
}


def objects(*objs: dict[str, Any]) -> dict[ObjKey, dict[str, Any]]:
    return {key_of(o): o for o in objs}


class Runtime:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = FakeClock()
        self.state = tmp_path / "state"
        self.tokens_file = self.state / "mesh" / "tokens.yaml"
        self.layout = VolumeLayout(str(self.state))
        self.counter = 0
        self.volumes = VolumeRuntime(
            POD,
            layout=self.layout,
            clock=self.clock,
            tokens_file=self.tokens_file,
            lab_id="t1",
            registry=tmp_path / "registry",
            mint=self.mint,
        )

    def mint(self) -> str:
        self.counter += 1
        return f"token-{self.counter}"

    def volume(self, name: str) -> Path:
        return Path(self.layout.volume_dir(UID, name))

    def tokens(self) -> dict[str, Any]:
        loaded: dict[str, Any] = yaml.safe_load(self.tokens_file.read_text())
        return loaded


@pytest.fixture
def rt(tmp_path: Path) -> Runtime:
    return Runtime(tmp_path)


def test_missing_objects_hold_the_pod_until_they_appear(rt: Runtime) -> None:
    assert rt.volumes.prepare(objects()) == (
        'error looking up service account apps/web: serviceaccount "web" not found'
    )
    why = rt.volumes.prepare(objects(SA))
    assert why == (
        'MountVolume.SetUp failed for volume "cfg": configmap "cfg" not found in namespace "apps"; '
        'MountVolume.SetUp failed for volume "creds": secret "creds" not found in namespace "apps"'
    )
    assert not rt.volume("cfg").exists() and not rt.tokens_file.exists()
    assert rt.volumes.prepare(objects(SA, SECRET, cm("cfg", {"k": "v1"}))) == ""
    assert (rt.volume("cfg") / "k").read_text() == "v1"
    assert (rt.volume("creds") / "password").read_bytes() == b"s3cret"
    assert oct((rt.volume("creds") / "password").stat().st_mode & 0o777) == oct(0o400)
    assert (rt.volume("token") / "t").read_text() == "token-1"
    assert oct(rt.volume("scratch").stat().st_mode & 0o777) == oct(0o777)


def test_tokens_are_registered_refreshed_at_80_percent_and_removed_with_the_pod(rt: Runtime) -> None:
    assert rt.volumes.prepare(objects(SA, SECRET, cm("cfg", {"k": "v1"}))) == ""
    start = rt.clock.now()
    assert rt.tokens() == {
        "token-1": {
            "node": "node1",
            "identity": "apps/web",
            "expires": int(start + 1000),
            "audience": "istio-ca",
            "pod": "apps/web-1",
            "podUID": UID,
        }
    }
    caller, expires = load_lab_tokens(rt.tokens_file, trust_domain="cluster.local")["token-1"]
    assert (str(caller.identity), caller.node, expires) == (
        "spiffe://cluster.local/ns/apps/sa/web",
        "node1",
        start + 1000,
    )
    assert rt.volumes.next_token_refresh() == start + 800
    rt.clock.advance(799)
    assert rt.volumes.refresh_tokens() == 0
    rt.clock.advance(1)
    assert rt.volumes.refresh_tokens() == 1
    assert (rt.volume("token") / "t").read_text() == "token-2"
    assert sorted(rt.tokens()) == ["token-1", "token-2"]  # the old one stays valid until it expires
    assert rt.volumes.next_token_refresh() == start + 1600
    rt.clock.advance(800)
    assert rt.volumes.refresh_tokens() == 1
    assert sorted(rt.tokens()) == ["token-2", "token-3"]  # token-1 expired and was pruned
    rt.volumes.teardown()
    assert rt.tokens() == {}
    assert not Path(rt.layout.pod_dir(UID)).exists()


def test_content_updates_reach_the_volume_and_a_vanished_object_keeps_the_last_content(rt: Runtime) -> None:
    assert rt.volumes.prepare(objects(SA, SECRET, cm("cfg", {"k": "v1", "gone": "x"}))) == ""
    rt.volumes.update(objects(SA, SECRET, cm("cfg", {"k": "v2", "new": "y"}, rv="2")))
    assert (rt.volume("cfg") / "k").read_text() == "v2" and (rt.volume("cfg") / "new").read_text() == "y"
    assert not (rt.volume("cfg") / "gone").exists()
    rt.volumes.update(objects(SA, SECRET))
    assert (rt.volume("cfg") / "k").read_text() == "v2"
    assert (rt.volume("token") / "t").read_text() == "token-1"  # an update does not reissue tokens


def test_exec_prefix_makes_sources_and_mount_points(rt: Runtime, tmp_path: Path) -> None:
    assert rt.volumes.prepare(objects(SA, SECRET, cm("cfg", {"k": "v1"}))) == ""
    host = tmp_path / "host"
    container = {
        "name": "c",
        "workingDir": "/work",
        "volumeMounts": [
            {"name": "scratch", "mountPath": f"{host}/data", "subPath": "sub/dir"},
            {"name": "cfg", "mountPath": f"{host}/data/k.conf", "subPath": "k"},
            {"name": "cfg", "mountPath": f"{host}/etc/cfg"},
        ],
    }
    prefix = rt.volumes.exec_prefix(container, env={})
    assert prefix[1:3] == ("-I", "-S") and prefix[3].endswith("mountexec.py") and prefix[-1] == "--"
    scratch = rt.volume("scratch") / "sub" / "dir"
    assert scratch.is_dir() and (scratch / "k.conf").is_file()  # a file mount point inside the parent
    assert (host / "data").is_dir() and (host / "etc" / "cfg").is_dir()
    assert not (host / "data" / "k.conf").exists()  # it lives in the volume, not on the host
    assert release_mountpoints("t1", registry=tmp_path / "registry") == [
        str(host / "etc" / "cfg"),
        str(host / "data"),
        str(host / "etc"),
        str(host),
    ]
    assert not host.exists()


def test_mount_points_stay_while_another_lab_uses_them_and_only_empty_ones_go(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    shared, own, busy = tmp_path / "h" / "shared", tmp_path / "h" / "own", tmp_path / "h" / "busy"
    ensure_mountpoint(str(shared), directory=True, lab_id="a", registry=registry)
    ensure_mountpoint(str(shared), directory=True, lab_id="b", registry=registry)
    ensure_mountpoint(str(own), directory=False, lab_id="a", registry=registry)
    ensure_mountpoint(str(busy), directory=True, lab_id="a", registry=registry)
    (busy / "someone's file").write_text("data")
    assert release_mountpoints("a", registry=registry) == [str(own)]
    assert shared.is_dir() and busy.is_dir()
    assert release_mountpoints("b", registry=registry) == [str(shared)]
    assert busy.is_dir() and (tmp_path / "h").is_dir()  # busy keeps its parent
    assert release_mountpoints("b", registry=registry) == []
