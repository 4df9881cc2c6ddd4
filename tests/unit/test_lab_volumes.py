"""Planning a lab pod's volumes (pure): pod + objects -> files, tokens, host directories and mounts."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshctl.lab.errors import LabObjectError
from meshctl.lab.objects import ObjKey, key_of, parse_documents
from meshctl.lab.podvolumes import referenced_objects, token_refresh_at
from meshctl.lab.volumefs import host_path_action
from meshctl.lab.volumes import (
    CONTENT,
    EMPTY_DIR,
    HOST_PATH,
    Mount,
    PodVolumes,
    VolumeError,
    VolumeFile,
    VolumeLayout,
    plan_mounts,
    plan_volumes,
    runtime_rebinds,
)

ROOT = Path(__file__).resolve().parents[2]
LAYOUT = VolumeLayout("/state", cluster_domain="cluster.local")
UID = "1234-uid"


def pod(volumes: list[dict[str, Any]], mounts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": UID},
        "spec": {
            "nodeName": "node2",
            "serviceAccountName": "sa",
            "volumes": volumes,
            "containers": [{"name": "c", "command": ["true"], "volumeMounts": mounts or []}],
        },
    }


def cm(name: str, data: dict[str, str], binary: dict[str, str] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"kind": "ConfigMap", "metadata": {"name": name, "namespace": "ns"}, "data": data}
    if binary:
        obj["binaryData"] = binary
    return obj


def secret(name: str, data: dict[str, bytes], string_data: dict[str, str] | None = None) -> dict[str, Any]:
    encoded = {k: base64.b64encode(v).decode() for k, v in data.items()}
    obj: dict[str, Any] = {"kind": "Secret", "metadata": {"name": name, "namespace": "ns"}, "data": encoded}
    if string_data:
        obj["stringData"] = string_data
    return obj


def objects(*objs: dict[str, Any]) -> dict[ObjKey, dict[str, Any]]:
    return {key_of(o): o for o in objs}


CFG = cm("cfg", {"a.conf": "A", "b.conf": "B"}, binary={"bin": base64.b64encode(b"\x00\x01").decode()})
SEC = secret("sec", {"tls.key": b"KEY", "tls.crt": b"CRT"}, string_data={"extra": "E"})


@pytest.mark.parametrize(
    ("volume", "objs", "files", "waiting"),
    [
        pytest.param(
            {"name": "v", "configMap": {"name": "cfg"}},
            [CFG],
            [
                VolumeFile("a.conf", b"A", 0o644),
                VolumeFile("b.conf", b"B", 0o644),
                VolumeFile("bin", b"\0\1", 0o644),
            ],
            [],
            id="configmap-every-key",
        ),
        pytest.param(
            {
                "name": "v",
                "configMap": {
                    "name": "cfg",
                    "defaultMode": 0o400,
                    "items": [
                        {"key": "b.conf", "path": "sub/b"},
                        {"key": "a.conf", "path": "a", "mode": 0o600},
                    ],
                },
            },
            [CFG],
            [VolumeFile("sub/b", b"B", 0o400), VolumeFile("a", b"A", 0o600)],
            [],
            id="configmap-items-modes",
        ),
        pytest.param(
            {"name": "v", "configMap": {"name": "cfg"}},
            [],
            [],
            ['MountVolume.SetUp failed for volume "v": configmap "cfg" not found in namespace "ns"'],
            id="configmap-missing",
        ),
        pytest.param(
            {"name": "v", "configMap": {"name": "cfg", "optional": True}}, [], [], [], id="configmap-optional"
        ),
        pytest.param(
            {"name": "v", "configMap": {"name": "cfg", "items": [{"key": "nope", "path": "x"}]}},
            [CFG],
            [],
            ['MountVolume.SetUp failed for volume "v": configmap "cfg" in namespace "ns" has no key "nope"'],
            id="configmap-missing-key",
        ),
        pytest.param(
            {
                "name": "v",
                "configMap": {"name": "cfg", "optional": True, "items": [{"key": "nope", "path": "x"}]},
            },
            [CFG],
            [],
            [],
            id="configmap-optional-missing-key",
        ),
        pytest.param(
            {"name": "v", "secret": {"secretName": "sec", "defaultMode": 0o440}},
            [SEC],
            [
                VolumeFile("extra", b"E", 0o440),
                VolumeFile("tls.crt", b"CRT", 0o440),
                VolumeFile("tls.key", b"KEY", 0o440),
            ],
            [],
            id="secret-decoded-and-stringdata",
        ),
        pytest.param(
            {"name": "v", "secret": {"secretName": "sec"}},
            [
                {
                    "kind": "Secret",
                    "metadata": {"name": "sec", "namespace": "ns"},
                    "data": {"k": "not base64!"},
                }
            ],
            [],
            [
                'MountVolume.SetUp failed for volume "v": secret "sec" in namespace "ns": '
                'the value of key "k" is not valid base64'
            ],
            id="secret-bad-base64",
        ),
        pytest.param(
            {"name": "v", "secret": {"secretName": "sec"}},
            [cm("sec", {"k": "v"})],
            [],
            ['MountVolume.SetUp failed for volume "v": secret "sec" not found in namespace "ns"'],
            id="secret-missing-though-a-configmap-has-the-name",
        ),
        pytest.param(
            {
                "name": "v",
                "projected": {
                    "defaultMode": 0o440,
                    "sources": [
                        {"configMap": {"name": "cfg", "items": [{"key": "a.conf", "path": "a"}]}},
                        {
                            "secret": {
                                "name": "sec",
                                "items": [{"key": "tls.key", "path": "k", "mode": 0o400}],
                            }
                        },
                        {"secret": {"name": "absent", "optional": True}},
                    ],
                },
            },
            [CFG, SEC],
            [VolumeFile("a", b"A", 0o440), VolumeFile("k", b"KEY", 0o400)],
            [],
            id="projected-configmap-secret",
        ),
        pytest.param(
            {
                "name": "v",
                "projected": {"sources": [{"configMap": {"name": "cfg"}}, {"secret": {"name": "gone"}}]},
            },
            [CFG],
            [
                VolumeFile("a.conf", b"A", 0o644),
                VolumeFile("b.conf", b"B", 0o644),
                VolumeFile("bin", b"\0\1", 0o644),
            ],
            ['MountVolume.SetUp failed for volume "v": secret "gone" not found in namespace "ns"'],
            id="projected-missing-secret",
        ),
    ],
)
def test_content_volumes(
    volume: dict[str, Any], objs: list[dict[str, Any]], files: list[VolumeFile], waiting: list[str]
) -> None:
    planned = plan_volumes(pod([volume]), objects(*objs), layout=LAYOUT)
    (only,) = planned.volumes
    assert (only.kind, only.source) == (CONTENT, f"/state/run/pods/{UID}/volumes/v")
    assert list(only.files) == files
    assert list(planned.waiting) == waiting


def test_projected_tokens_take_audience_expiry_and_defaults() -> None:
    volume = {
        "name": "t",
        "projected": {
            "defaultMode": 0o400,
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": "istio-ca",
                        "expirationSeconds": 43200,
                        "path": "istio-token",
                    }
                },
                {"serviceAccountToken": {"path": "k8s/token"}},
            ],
        },
    }
    (only,) = plan_volumes(pod([volume]), {}, layout=LAYOUT).volumes
    assert [(t.path, t.audience, t.expiration_seconds, t.mode) for t in only.tokens] == [
        ("istio-token", "istio-ca", 43200, 0o400),
        ("k8s/token", "https://kubernetes.default.svc.cluster.local", 3600, 0o400),
    ]


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("/var/run/ztunnel", "/state/hostpath/node2/run/ztunnel"),
        ("/run/ztunnel", "/state/hostpath/node2/run/ztunnel"),
        ("/var/lib/data/", "/state/hostpath/node2/var/lib/data"),
        ("/", "/state/hostpath/node2"),
        ("/etc/cni/net.d", "/state/cni"),
        ("/etc/cni/net.d/10-x.conflist", "/state/cni/10-x.conflist"),
        ("/etc/cni/net.dd", "/state/hostpath/node2/etc/cni/net.dd"),
        ("/opt/cni/bin", "/state/cni/bin"),
        ("/var/run/netns", "/var/run/netns"),
        ("/run/netns", "/var/run/netns"),
        ("/run/netns/x", "/var/run/netns/x"),
        ("/var/lib/mesh-lab/state", "/state"),
        ("/var/lib/mesh-lab/state/mesh/tokens.yaml", "/state/mesh/tokens.yaml"),
        ("/var/lib/mesh-lab/other", "/state/hostpath/node2/var/lib/mesh-lab/other"),
    ],
)
def test_host_paths_are_per_node_but_for_the_real_ones(path: str, source: str) -> None:
    volume = {"name": "h", "hostPath": {"path": path, "type": "DirectoryOrCreate"}}
    (only,) = plan_volumes(pod([volume]), {}, layout=LAYOUT).volumes
    assert (only.kind, only.source, only.host_type) == (HOST_PATH, source, "DirectoryOrCreate")


def test_empty_dir_is_per_pod() -> None:
    (only,) = plan_volumes(pod([{"name": "e", "emptyDir": {}}]), {}, layout=LAYOUT).volumes
    assert (only.kind, only.source) == (EMPTY_DIR, f"/state/run/pods/{UID}/volumes/e")


def test_unsupported_kind_and_bad_host_path_are_errors() -> None:
    with pytest.raises(VolumeError, match="does not run"):
        plan_volumes(pod([{"name": "x", "persistentVolumeClaim": {"claimName": "c"}}]), {}, layout=LAYOUT)
    with pytest.raises(VolumeError, match="absolute path without"):
        plan_volumes(pod([{"name": "x", "hostPath": {"path": "/a/../etc"}}]), {}, layout=LAYOUT)


def mounts_of(
    volumes: list[dict[str, Any]], mounts: list[dict[str, Any]], env: dict[str, str] | None = None
) -> tuple[Mount, ...]:
    spec = pod(volumes, mounts)
    planned = plan_volumes(spec, objects(CFG), layout=LAYOUT)
    return plan_mounts(spec["spec"]["containers"][0], planned, env=env or {})


def test_mounts_are_ordered_parents_first_with_nested_mount_points_inside_the_parent() -> None:
    vols = [
        {"name": "ca", "configMap": {"name": "cfg"}},
        {"name": "state", "emptyDir": {}},
        {"name": "sock", "hostPath": {"path": "/var/run/ztunnel"}},
    ]
    mounts = mounts_of(
        vols,
        [
            {"name": "ca", "mountPath": "/var/lib/istiod/ca", "readOnly": False},
            {"name": "state", "mountPath": "/var/lib/istiod/"},
            {
                "name": "sock",
                "mountPath": "/var/run/ztunnel",
                "readOnly": True,
                "mountPropagation": "HostToContainer",
            },
        ],
    )
    state = f"/state/run/pods/{UID}/volumes/state"
    assert mounts == (
        Mount("state", state, "/var/lib/istiod", False, "private", "/var/lib/istiod"),
        Mount(
            "sock", "/state/hostpath/node2/run/ztunnel", "/var/run/ztunnel", True, "slave", "/var/run/ztunnel"
        ),
        Mount(
            "ca", f"/state/run/pods/{UID}/volumes/ca", "/var/lib/istiod/ca", True, "private", f"{state}/ca"
        ),
    )


def test_the_labs_own_interpreter_and_code_are_bound_back_over_a_volume_that_covers_them() -> None:
    mounts = mounts_of([{"name": "tmp", "emptyDir": {}}], [{"name": "tmp", "mountPath": "/tmp"}])
    runtime = ["/tmp/checkout/.venv", "/tmp/checkout", "/root/.pyenv/versions/3.11.7", "/tmp/checkout/x/"]
    tmp = f"/state/run/pods/{UID}/volumes/tmp"
    assert runtime_rebinds(mounts, runtime) == (  # once, at the outermost; the uncovered one is left
        Mount(
            "lab-runtime",
            "/tmp/checkout",
            "/tmp/checkout",
            True,
            "private",
            f"{tmp}/checkout",
            recursive=False,
        ),
    )
    (rebind,) = runtime_rebinds(mounts, runtime)
    assert rebind.exec_args()[3] == "ro+single"  # alone: a recursive bind would bring the volume along
    assert runtime_rebinds(mounts, ["/usr", "/opt/venv"]) == ()


@pytest.mark.parametrize(
    ("mount", "source", "create"),
    [
        ({"name": "e", "mountPath": "/d", "subPath": "a/b"}, f"/state/run/pods/{UID}/volumes/e/a/b", True),
        (
            {"name": "e", "mountPath": "/d", "subPathExpr": "$(POD)/logs"},
            f"/state/run/pods/{UID}/volumes/e/p1/logs",
            True,
        ),
        (
            {"name": "c", "mountPath": "/etc/a.conf", "subPath": "a.conf"},
            f"/state/run/pods/{UID}/volumes/c/a.conf",
            False,
        ),
    ],
)
def test_sub_paths(mount: dict[str, Any], source: str, create: bool) -> None:
    vols = [{"name": "e", "emptyDir": {}}, {"name": "c", "configMap": {"name": "cfg"}}]
    (planned,) = mounts_of(vols, [mount], env={"POD": "p1"})
    assert (planned.source, planned.create_source) == (source, create)


@pytest.mark.parametrize(
    ("mount", "error"),
    [
        ({"name": "e", "mountPath": "/d", "subPathExpr": "$(UP)/x"}, "without '..'"),
        ({"name": "e", "mountPath": "/d", "mountPropagation": "Bidirectional"}, "Bidirectional"),
        ({"name": "nope", "mountPath": "/d"}, "no volume 'nope'"),
    ],
)
def test_mount_errors(mount: dict[str, Any], error: str) -> None:
    with pytest.raises(VolumeError, match=error):
        mounts_of([{"name": "e", "emptyDir": {}}], [mount], env={"UP": ".."})


POD_YAML = """
apiVersion: v1
kind: Pod
metadata: {{name: p, namespace: ns}}
spec:
  containers:
  - name: c
    command: [sleep, "1"]
    volumeMounts: {mounts}
  volumes: {volumes}
"""


@pytest.mark.parametrize(
    ("volumes", "mounts", "field", "problem"),
    [
        ("[{name: v, nfs: {server: x}}]", "[]", "spec.volumes[0].nfs", "not supported by the lab"),
        ("[{name: v}]", "[]", "spec.volumes[0]", "exactly one of"),
        ("[{name: v, emptyDir: {}}, {name: v, emptyDir: {}}]", "[]", "spec.volumes[1].name", "unique"),
        ("[{name: v, hostPath: {path: rel}}]", "[]", "spec.volumes[0].hostPath.path", "absolute"),
        (
            "[{name: v, hostPath: {path: /x, type: CharDevice}}]",
            "[]",
            "spec.volumes[0].hostPath.type",
            "no devices",
        ),
        (
            "[{name: v, hostPath: {path: /x, type: Dir}}]",
            "[]",
            "spec.volumes[0].hostPath.type",
            "must be one of",
        ),
        ("[{name: v, configMap: {}}]", "[]", "spec.volumes[0].configMap.name", "is required"),
        ("[{name: v, secret: {name: s}}]", "[]", "spec.volumes[0].secret.secretName", "is required"),
        (
            "[{name: v, configMap: {name: c, defaultMode: 1000}}]",
            "[]",
            "spec.volumes[0].configMap.defaultMode",
            "file mode",
        ),
        (
            "[{name: v, configMap: {name: c, items: [{key: k, path: ../x}]}}]",
            "[]",
            "spec.volumes[0].configMap.items[0].path",
            "'..'",
        ),
        (
            "[{name: v, configMap: {name: c, items: [{key: k, path: /x}]}}]",
            "[]",
            "spec.volumes[0].configMap.items[0].path",
            "relative",
        ),
        ("[{name: v, projected: {sources: []}}]", "[]", "spec.volumes[0].projected.sources", "non-empty"),
        (
            "[{name: v, projected: {sources: [{downwardAPI: {}}]}}]",
            "[]",
            "spec.volumes[0].projected.sources[0]",
            "one of",
        ),
        (
            "[{name: v, projected: {sources: [{serviceAccountToken: {path: t, expirationSeconds: 60}}]}}]",
            "[]",
            "spec.volumes[0].projected.sources[0].serviceAccountToken.expirationSeconds",
            "between 600",
        ),
        (
            "[{name: v, projected: {sources: [{serviceAccountToken: {path: t}}, "
            "{configMap: {name: c, items: [{key: k, path: t}]}}]}}]",
            "[]",
            "spec.volumes[0].projected.sources[1]",
            "conflicting duplicate path 't'",
        ),
        (
            "[{name: v, emptyDir: {}}]",
            "[{name: w, mountPath: /x}]",
            "spec.containers[0].volumeMounts[0].name",
            "no volume",
        ),
        (
            "[{name: v, emptyDir: {}}]",
            "[{name: v, mountPath: x}]",
            "spec.containers[0].volumeMounts[0].mountPath",
            "absolute",
        ),
        (
            "[{name: v, emptyDir: {}}]",
            "[{name: v, mountPath: /x}, {name: v, mountPath: /x/}]",
            "spec.containers[0].volumeMounts[1].mountPath",
            "unique",
        ),
        (
            "[{name: v, emptyDir: {}}]",
            "[{name: v, mountPath: /x, subPath: ../y}]",
            "spec.containers[0].volumeMounts[0].subPath",
            "'..'",
        ),
        (
            "[{name: v, emptyDir: {}}]",
            "[{name: v, mountPath: /x, mountPropagation: Bidirectional}]",
            "spec.containers[0].volumeMounts[0].mountPropagation",
            "HostToContainer",
        ),
    ],
)
def test_validation_names_the_field(volumes: str, mounts: str, field: str, problem: str) -> None:
    with pytest.raises(LabObjectError) as info:
        parse_documents(POD_YAML.format(volumes=volumes, mounts=mounts), source="p.yaml")
    assert info.value.field == field and problem in info.value.problem


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ("{apiVersion: v1, kind: Secret, metadata: {name: s}, data: {k: 'no base64'}}", "data.k"),
        ("{apiVersion: v1, kind: ConfigMap, metadata: {name: c}, binaryData: {k: '%%%'}}", "binaryData.k"),
        ("{apiVersion: v1, kind: ConfigMap, metadata: {name: c}, data: {'a/b': x}}", "data.a/b"),
        (
            "{apiVersion: v1, kind: ConfigMap, metadata: {name: c}, data: {k: x}, binaryData: {k: eA==}}",
            "binaryData.k",
        ),
    ],
)
def test_configmap_and_secret_data_are_validated(doc: str, field: str) -> None:
    with pytest.raises(LabObjectError) as info:
        parse_documents(doc, source="x.yaml")
    assert info.value.field == field


def manifest_pods() -> dict[str, dict[str, Any]]:
    """A pod of each workload in daemonset/base, as the controllers would make it on node2."""
    pods = {}
    for name in ("ztunnel", "istio-cni", "istiod"):
        for obj in yaml.safe_load_all((ROOT / "daemonset" / "base" / f"{name}.yaml").read_text()):
            if obj and obj["kind"] in ("DaemonSet", "Deployment"):
                parse_documents(yaml.safe_dump(obj), source=f"{name}.yaml")  # the lab accepts it
                spec = copy.deepcopy(obj["spec"]["template"]["spec"])
                spec["nodeName"] = "node2"
                meta = {"name": f"{name}-x", "namespace": "istio-system", "uid": UID}
                pods[name] = {"metadata": meta, "spec": spec}
    return pods


ROOT_CERT = {
    "kind": "ConfigMap",
    "metadata": {"name": "istio-ca-root-cert", "namespace": "istio-system"},
    "data": {"root-cert.pem": "PEM"},
}


@pytest.mark.parametrize(
    ("workload", "expected"),
    [
        (
            "ztunnel",
            [
                ("/tmp", "private", False, "/state/run/pods/1234-uid/volumes/tmp"),
                ("/var/run/ztunnel", "private", False, "/state/hostpath/node2/run/ztunnel"),
                (
                    "/var/run/secrets/istio",
                    "private",
                    True,
                    "/state/run/pods/1234-uid/volumes/istiod-ca-cert",
                ),
                ("/var/run/secrets/tokens", "private", True, "/state/run/pods/1234-uid/volumes/istio-token"),
            ],
        ),
        (
            "istio-cni",
            [
                ("/var/run/netns", "slave", False, "/var/run/netns"),
                ("/var/run/ztunnel", "private", False, "/state/hostpath/node2/run/ztunnel"),
                ("/host/opt/cni/bin", "private", False, "/state/cni/bin"),
                ("/host/etc/cni/net.d", "private", False, "/state/cni"),
            ],
        ),
        (
            "istiod",
            [
                ("/var/lib/istiod-lite", "private", False, "/state/run/pods/1234-uid/volumes/state"),
            ],
        ),
    ],
)
def test_the_mesh_manifests_plan(workload: str, expected: list[tuple[str, str, bool, str]]) -> None:
    spec = manifest_pods()[workload]
    planned: PodVolumes = plan_volumes(spec, objects(ROOT_CERT), layout=LAYOUT)
    assert planned.waiting == ()  # ztunnel's istio-ca-root-cert is there
    mounts = plan_mounts(spec["spec"]["containers"][0], planned, env={})
    assert sorted((m.target, m.propagation, m.read_only, m.source) for m in mounts) == sorted(expected)
    assert [len(m.target.split("/")) for m in mounts] == sorted(len(m.target.split("/")) for m in mounts)


@pytest.mark.parametrize(
    ("host_type", "found", "action"),
    [
        ("", None, ("mkdir", "")),
        ("", "socket", ("ok", "")),
        ("DirectoryOrCreate", None, ("mkdir", "")),
        ("DirectoryOrCreate", "directory", ("ok", "")),
        ("DirectoryOrCreate", "file", ("wait", "is not a directory")),
        ("Directory", None, ("wait", "does not exist (type Directory)")),
        ("Directory", "directory", ("ok", "")),
        ("FileOrCreate", None, ("touch", "")),
        ("FileOrCreate", "file", ("ok", "")),
        ("FileOrCreate", "directory", ("wait", "is not a file")),
        ("File", None, ("wait", "does not exist (type File)")),
        ("File", "socket", ("wait", "is not a file")),
        ("Socket", "socket", ("ok", "")),
        ("Socket", "file", ("wait", "is not a socket file")),
        ("Socket", None, ("wait", "does not exist (type Socket)")),
    ],
)
def test_host_path_type_checks(host_type: str, found: str | None, action: tuple[str, str]) -> None:
    assert host_path_action(host_type, found) == action


@pytest.mark.parametrize(
    ("seconds", "after"),
    [(600, 480.0), (3600, 2880.0), (43200, 34560.0), (7 * 86400, 86400.0)],
)
def test_tokens_are_refreshed_at_80_percent_or_after_a_day(seconds: int, after: float) -> None:
    assert token_refresh_at(1000.0, seconds) == 1000.0 + after


def test_referenced_objects_are_the_service_account_and_every_source() -> None:
    spec = pod(
        [
            {"name": "a", "configMap": {"name": "cfg"}},
            {"name": "b", "secret": {"secretName": "sec"}},
            {
                "name": "c",
                "projected": {"sources": [{"secret": {"name": "s2"}}, {"configMap": {"name": "c2"}}]},
            },
            {"name": "d", "emptyDir": {}},
        ]
    )
    assert referenced_objects(spec) == (
        ("ServiceAccount", "ns", "sa"),
        ("ConfigMap", "ns", "cfg"),
        ("Secret", "ns", "sec"),
        ("Secret", "ns", "s2"),
        ("ConfigMap", "ns", "c2"),
    )
