"""The lab installs the mesh from daemonset/ (the lab overlay) with its own settings on the objects,
and waits for the pods that belong in the mesh to be enrolled (pure parts)."""

from __future__ import annotations

from typing import Any

import pytest

from meshctl.lab import builders as b
from meshctl.lab.errors import LabError
from meshctl.lab.mesh import awaiting_enrolment, mesh_installed, mesh_objects
from meshctl.lab.settings import build_settings
from meshctl.manifests import render


def _args(objects: list[dict[str, Any]], kind: str, name: str) -> list[str]:
    (obj,) = [o for o in objects if (o["kind"], o["metadata"]["name"]) == (kind, name)]
    args: list[str] = obj["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def _flag(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def test_the_lab_installs_the_lab_overlay_with_the_defaults_unchanged() -> None:
    objects = mesh_objects(build_settings(lab_id="t1", mesh=True))
    overlay = render("lab")
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        (o["kind"], o["metadata"]["name"]) for o in overlay
    ]
    ztunnel = _args(objects, "DaemonSet", "ztunnel")
    assert ztunnel.count("--trust-domain") == 1 and _flag(ztunnel, "--trust-domain") == "cluster.local"
    assert _flag(ztunnel, "--workers") is None


def test_the_workload_certificate_ttl_reaches_the_ztunnel_daemonset() -> None:
    objects = mesh_objects(build_settings(lab_id="t1", mesh=True, cert_ttl=300))
    assert _flag(_args(objects, "DaemonSet", "ztunnel"), "--cert-ttl") == "300"
    with pytest.raises(LabError, match="TTL of 10 s is out of range") as caught:
        build_settings(cert_ttl=10)
    assert "--cert-ttl" in caught.value.hint


def test_istiod_replicas_are_the_deployments_replicas() -> None:
    objects = mesh_objects(build_settings(lab_id="t2", mesh=True, istiod_replicas=2))
    (istiod,) = [o for o in objects if (o["kind"], o["metadata"]["name"]) == ("Deployment", "istiod")]
    assert istiod["spec"]["replicas"] == 2
    with pytest.raises(LabError, match="1 to 7 istiod_lite replicas, not 8") as caught:
        build_settings(istiod_replicas=8)
    assert "--istiod-replicas" in caught.value.hint


@pytest.mark.parametrize(("workers", "flag"), [(1, None), (2, "2")])
def test_ztunnel_workers_reach_the_ztunnel_daemonset(workers: int, flag: str | None) -> None:
    objects = mesh_objects(build_settings(lab_id="t3", mesh=True, ztunnel_workers=workers))
    assert _flag(_args(objects, "DaemonSet", "ztunnel"), "--workers") == flag


def _pod(name: str, namespace: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta = {"name": name, "namespace": namespace, "labels": labels or {}}
    return {"kind": "Pod", "metadata": meta, "spec": {"containers": [{"name": "main"}]}, "status": {}}


def _running(pod: dict[str, Any], *, enrolled: bool = False) -> dict[str, Any]:
    pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    if enrolled:
        pod["metadata"].setdefault("annotations", {})["ambient.istio.io/redirection"] = "enabled"
    return pod


def test_ready_pods_of_an_ambient_namespace_are_awaited_until_their_agent_enrols_them() -> None:
    namespaces = [b.namespace("demo", labels={"istio.io/dataplane-mode": "ambient"}), b.namespace("legacy")]
    waiting = _running(_pod("client", "demo"))
    done = _running(_pod("server", "demo"), enrolled=True)
    opted_out = _running(_pod("batch", "demo", labels={"istio.io/dataplane-mode": "none"}))
    starting = _pod("starting", "demo")  # not ready yet: wait_ready already waits for it
    outside = _running(_pod("client", "legacy"))
    pods = [waiting, done, opted_out, starting, outside]
    assert awaiting_enrolment(pods, namespaces) == ["demo/client"]


def test_enrolment_is_awaited_only_while_the_node_agents_are_installed() -> None:
    def agents(**meta: str) -> dict[str, Any]:
        return {
            "kind": "DaemonSet",
            "metadata": {"name": "istio-cni-node", "namespace": "istio-system", **meta},
        }

    assert mesh_installed([agents()])
    assert not mesh_installed([])
    assert not mesh_installed([agents(deletionTimestamp="2026-12-06T00:00:00Z")])
