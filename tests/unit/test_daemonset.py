"""daemonset/: every rendered object of the base and of each overlay passes kubernetes-validate for a
pinned Kubernetes version; istiod's and the node agent's ClusterRoles grant exactly the API calls
their code declares, and istiod's Role in istio-system exactly its calls in its own namespace (the
leader election's Lease) (a call added without its rule fails here); the overlays change what they
say (the lab overlay through RFC 6902 operations, checked here one by one)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from istiod_lite.ca import kube_auth, kube_secret
from istiod_lite.sources import kube, kube_root_cert, kube_status, kube_waypoints
from mesh.errors import MeshError
from mesh.rt.kube import lease
from mesh.rt.kube.rbac import ApiCall, rules_for
from meshctl.cli import main
from meshctl.manifests import json_patch, overlays, render
from ztunnel.cni import kube_pods
from ztunnel.cni.agent import parse_args as parse_agent_args
from ztunnel.cni.cniconf import plugin_entry

KUBERNETES = "1.30.0"
REPO = Path(__file__).resolve().parents[2]
ISTIOD_CALLS = [
    *kube.API_CALLS,
    *kube_status.API_CALLS,
    *kube_waypoints.API_CALLS,
    *kube_root_cert.API_CALLS,
    *kube_auth.API_CALLS,
    *kube_secret.API_CALLS,
    *lease.API_CALLS,
]
CLUSTER_WIDE = [c for c in ISTIOD_CALLS if not c.own_namespace]
IN_ISTIO_SYSTEM = [c for c in ISTIOD_CALLS if c.own_namespace]


@pytest.mark.parametrize("overlay", overlays())
def test_every_object_is_valid_kubernetes(overlay: str) -> None:
    objects = render(overlay)
    assert {o["kind"] for o in objects} >= {
        "Namespace",
        "Deployment",
        "DaemonSet",
        "ClusterRole",
        "CustomResourceDefinition",
    }
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def cluster_role(objects: list[dict[str, Any]], name: str) -> list[dict[str, Any]] | None:
    found = [o for o in objects if o["kind"] == "ClusterRole" and o["metadata"]["name"] == name]
    return found[0]["rules"] if found else None


def role(objects: list[dict[str, Any]], namespace: str, name: str) -> list[dict[str, Any]] | None:
    found = [
        o
        for o in objects
        if o["kind"] == "Role" and o["metadata"]["name"] == name and o["metadata"]["namespace"] == namespace
    ]
    return found[0]["rules"] if found else None


def bound_to(objects: list[dict[str, Any]], kind: str, name: str) -> list[tuple[str, str]]:
    """The service accounts a (Cluster)RoleBinding gives the (Cluster)Role ``name`` to."""
    return [
        (s["namespace"], s["name"])
        for o in objects
        if o["kind"] == f"{kind}Binding"
        and o["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name}
        for s in o["subjects"]
    ]


def test_istiods_rules_are_exactly_its_declared_calls() -> None:
    objects = render()
    assert cluster_role(objects, "istiod") == rules_for(CLUSTER_WIDE)
    assert role(objects, "istio-system", "istiod") == rules_for(IN_ISTIO_SYSTEM)
    assert IN_ISTIO_SYSTEM  # the Lease: a Role in istio-system, not cluster-wide
    for kind in ("ClusterRole", "Role"):
        assert bound_to(objects, kind, "istiod") == [("istio-system", "istiod")]
    assert all("*" not in str(rule) for rule in cluster_role(objects, "istiod") or ())
    # the CA Secret is read in istio-system only: no replica may read other Secrets
    assert not [r for r in cluster_role(objects, "istiod") or () if "secrets" in r["resources"]]
    extra = ApiCall("", "secrets", ("list", "watch"))  # a watch someone adds without its rule
    assert rules_for([*CLUSTER_WIDE, extra]) != cluster_role(objects, "istiod")
    extra = ApiCall("", "configmaps", ("update",), own_namespace=True)  # and a call in its namespace
    assert rules_for([*IN_ISTIO_SYSTEM, extra]) != role(objects, "istio-system", "istiod")
    assert cluster_role(objects, "ztunnel") is None


def test_istiod_knows_its_pod_for_the_leader_lease() -> None:
    (istiod,) = [o for o in render() if o["kind"] == "Deployment" and o["metadata"]["name"] == "istiod"]
    env = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in istiod["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}


def test_the_node_agents_rules_are_exactly_its_declared_calls() -> None:
    objects = render()
    assert cluster_role(objects, "istio-cni") == rules_for(kube_pods.API_CALLS)
    extra = ApiCall("", "pods/exec", ("create",))
    assert rules_for([*kube_pods.API_CALLS, extra]) != cluster_role(objects, "istio-cni")
    (agent,) = [o for o in objects if o["kind"] == "DaemonSet" and o["metadata"]["name"] == "istio-cni-node"]
    assert "--kube" in agent["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize("overlay", ["base", "lab"])
def test_the_node_agent_installs_its_plugin_into_the_hosts_cni_directories(overlay: str) -> None:
    objects = render(overlay)
    (agent,) = [o for o in objects if o["kind"] == "DaemonSet" and o["metadata"]["name"] == "istio-cni-node"]
    pod = agent["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = parse_agent_args([a.replace("$(", "").replace(")", "") for a in container["args"]])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host_paths[mounts[str(args.cni_conf_dir)]] == "/etc/cni/net.d"
    assert host_paths[mounts[str(args.cni_bin_dir)]] == "/opt/cni/bin"
    assert args.daemonset == "POD_NAMESPACE/istio-cni-node"  # so that an uninstall takes the plugin out
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": args.readiness_port}
    entry = plugin_entry(args.plugin_socket or f"{args.run_dir}/pluginevent.sock")
    if overlay == "lab":  # the lab runs every node's plugin on one host: a socket per node namespace
        assert entry["agent_socket"].startswith("@")
    else:  # the kubelet runs the plugin on the host: the socket must be at the same path there
        run_dir = str(args.run_dir)
        assert entry["agent_socket"].startswith(run_dir + "/") and host_paths[mounts[run_dir]] == run_dir


def test_every_module_calling_the_api_declares_its_calls() -> None:
    # mesh/rt/kube's list/watch loop is generic: its callers declare what it lists and watches.
    lease_module = REPO / "mesh" / "rt" / "kube" / "lease.py"
    for path in [*REPO.glob("istiod_lite/**/*.py"), *REPO.glob("ztunnel/**/*.py"), lease_module]:
        tree = ast.parse(path.read_text())
        names = {getattr(n, "attr", None) for n in ast.walk(tree)} | {
            getattr(n, "id", None) for n in ast.walk(tree)
        }
        calls_api = "call_api" in names or any(
            n and ("_namespaced_" in n or n.startswith("create_token")) for n in names
        )
        if calls_api:
            declared = any(
                isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "API_CALLS" for t in n.targets)
                for n in tree.body
            )
            assert declared, f"{path.relative_to(REPO)} calls the Kubernetes API but declares no API_CALLS"


def test_the_overlays_change_what_they_say() -> None:
    def container(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
        (obj,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
        return dict(obj["spec"]["template"]["spec"]["containers"][0])

    plugin = render("plugin-ca")
    istiod = container(plugin, "Deployment", "istiod")
    assert "--cacerts" in istiod["args"] and {"cacerts", "state"} <= {
        m["name"] for m in istiod["volumeMounts"]
    }
    trust = render("trust-domain")
    for kind, name in (("Deployment", "istiod"), ("DaemonSet", "ztunnel")):
        args = container(trust, kind, name)["args"]
        assert args[args.index("--trust-domain") + 1] == "example.org"
    pinned = {container(render("image-pin"), "DaemonSet", "ztunnel")["image"]}
    assert pinned == {"registry.example.com/mesh/ambient-mesh:0.1.0-20261205"}
    assert container(render(), "DaemonSet", "ztunnel")["image"] == "ambient-mesh:0.1.0"
    assert container(render(image="my/mesh:dev"), "Deployment", "istiod")["image"] == "my/mesh:dev"


def test_install_renders_and_says_what_to_do_without_a_cluster(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["install", "--dry-run", "-o", "yaml", "--set", "image=my/mesh:dev"]) == 0
    assert "image: my/mesh:dev" in capsys.readouterr().out
    assert main(["install", "--kubeconfig", str(tmp_path / "none")]) == 1
    error = capsys.readouterr().err
    assert "no Kubernetes cluster to install into" in error and "--dry-run" in error
    with pytest.raises(MeshError, match="no overlay 'nope'"):
        render("nope")


@pytest.mark.parametrize(
    ("operation", "after"),
    [
        ({"op": "add", "path": "/args/-", "value": "c"}, {"args": ["a", "b", "c"], "m": {"k": 1}}),
        ({"op": "add", "path": "/args/0", "value": "z"}, {"args": ["z", "a", "b"], "m": {"k": 1}}),
        ({"op": "add", "path": "/m/n", "value": 2}, {"args": ["a", "b"], "m": {"k": 1, "n": 2}}),
        ({"op": "replace", "path": "/args/1", "value": "y"}, {"args": ["a", "y"], "m": {"k": 1}}),
        ({"op": "replace", "path": "/m/k", "value": 3}, {"args": ["a", "b"], "m": {"k": 3}}),
        ({"op": "remove", "path": "/args/0"}, {"args": ["b"], "m": {"k": 1}}),
        ({"op": "remove", "path": "/m/k"}, {"args": ["a", "b"], "m": {}}),
        ({"op": "test", "path": "/args/1", "value": "b"}, {"args": ["a", "b"], "m": {"k": 1}}),
        ({"op": "add", "path": "/a~1b", "value": 0}, {"args": ["a", "b"], "m": {"k": 1}, "a/b": 0}),
    ],
)
def test_a_json_patch_operation_changes_what_it_names(
    operation: dict[str, Any], after: dict[str, Any]
) -> None:
    document: dict[str, Any] = {"args": ["a", "b"], "m": {"k": 1}}
    json_patch(document, operation)
    assert document == after


@pytest.mark.parametrize(
    ("operation", "error"),
    [
        ({"op": "test", "path": "/args/1", "value": "x"}, ValueError),
        ({"op": "replace", "path": "/m/nope", "value": 1}, KeyError),
        ({"op": "add", "path": "/args/5", "value": 1}, IndexError),
        ({"op": "remove", "path": "/nope/0"}, KeyError),
        ({"op": "move", "path": "/args/0"}, ValueError),
        ({"op": "add", "path": "args", "value": 1}, ValueError),
    ],
)
def test_a_json_patch_operation_that_does_not_fit_is_refused(
    operation: dict[str, Any], error: type[Exception]
) -> None:
    document: dict[str, Any] = {"args": ["a", "b"], "m": {"k": 1}}
    with pytest.raises(error):
        json_patch(document, operation)
    assert document == {"args": ["a", "b"], "m": {"k": 1}}


def test_the_lab_overlay_runs_the_mesh_on_the_labs_api() -> None:
    objects = render("lab")
    (istiod,) = [o for o in objects if o["kind"] == "Deployment"]
    (agent,) = [o for o in objects if o["metadata"]["name"] == "istio-cni-node" and o["kind"] == "DaemonSet"]
    istiod_args = istiod["spec"]["template"]["spec"]["containers"][0]["args"]
    assert istiod_args[-7:] == [
        "--auth", "lab", "--lab-state", "/var/lib/mesh-lab/state",
        "--lab-tokens", "/var/lib/mesh-lab/state/mesh/tokens.yaml", "--ca-secret",
    ]  # fmt: skip
    agent_args = agent["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--kube" not in agent_args
    assert agent_args[agent_args.index("--state-dir") + 1] == "/var/lib/mesh-lab/state"
    (ztunnel,) = [o for o in objects if o["metadata"]["name"] == "ztunnel" and o["kind"] == "DaemonSet"]
    assert ztunnel == next(o for o in render("base") if o == ztunnel)  # the base's, /tmp emptyDir and all
    for obj in (istiod, agent):
        volumes = obj["spec"]["template"]["spec"]["volumes"]
        assert {
            "name": "lab-state",
            "hostPath": {"path": "/var/lib/mesh-lab/state", "type": "Directory"},
        } in volumes
