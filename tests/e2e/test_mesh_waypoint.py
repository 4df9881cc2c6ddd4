"""Waypoints in the lab: a Gateway of class istio-waypoint gets its ServiceAccount, Deployment, Service,
a token istiod_lite knows and a status; deleting the Gateway removes what it owned."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshctl.lab.errors import LabObjectError
from tests.e2e.conftest import MeshLab

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


def waypoint_gateway() -> dict[str, Any]:
    """What ``istioctl waypoint generate -n demo`` prints."""
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "waypoint", "namespace": "demo", "labels": {"istio.io/waypoint-for": "service"}},
        "spec": {
            "gatewayClassName": "istio-waypoint",
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    }


def owned(mesh: MeshLab) -> dict[str, dict[str, Any]]:
    """The waypoint's objects in ``demo``, by kind."""
    found = {}
    for kind in ("ServiceAccount", "Deployment", "Service"):
        for obj in mesh.lab.objects(kind, "demo"):
            if obj["metadata"]["name"] == "waypoint":
                found[kind] = obj
    return found


def test_a_waypoint_gateway_is_deployed_with_a_token_and_a_status_and_removed_with_it(mesh: MeshLab) -> None:
    gateway = waypoint_gateway()
    mesh.lab.apply([gateway])
    try:
        objects = mesh.wait_for(
            lambda: owned(mesh) if len(owned(mesh)) == 3 else None, what="the waypoint's objects"
        )
        pod_spec = objects["Deployment"]["spec"]["template"]["spec"]
        assert pod_spec["serviceAccountName"] == "waypoint"
        args = pod_spec["containers"][0]["args"]
        token_file = args[args.index("--token-file") + 1]
        assert os.stat(token_file).st_mode & 0o777 == 0o600
        tokens = yaml.safe_load((mesh.lab.paths.root / "mesh" / "tokens.yaml").read_text())
        assert tokens[Path(token_file).read_text().strip()] == {"identity": "demo/waypoint"}

        def status() -> dict[str, Any] | None:
            (stored,) = [
                g for g in mesh.lab.objects("Gateway", "demo") if g["metadata"]["name"] == "waypoint"
            ]
            return stored.get("status") or None

        conditions = {c["type"]: c for c in mesh.wait_for(status, what="the Gateway's status")["conditions"]}
        assert conditions["Accepted"]["status"] == "True"
        ready = any(
            (d.get("status") or {}).get("readyReplicas")
            for d in mesh.lab.objects("Deployment", "demo")
            if d["metadata"]["name"] == "waypoint"
        )
        assert (conditions["Programmed"]["status"] == "True") is bool(ready)
    finally:
        mesh.lab.delete([gateway])
    mesh.wait_for(lambda: not owned(mesh) or None, what="the waypoint's objects to go with its Gateway")


def test_a_bad_route_gets_a_status_condition_naming_the_problem(mesh: MeshLab) -> None:
    routed = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "routed", "namespace": "demo", "labels": {"istio.io/use-waypoint": "waypoint"}},
        "spec": {"selector": {"app": "nothing"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }
    bad: dict[str, Any] = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "bad-regex", "namespace": "demo"},
        "spec": {
            "hosts": ["routed"],
            "http": [
                {"match": [{"uri": {"regex": "/(?<=x)"}}], "route": [{"destination": {"host": "routed"}}]}
            ],
        },
    }
    objects = [waypoint_gateway(), routed, bad]
    with pytest.raises(LabObjectError, match=r"spec\.http\[0\]\.match\[0\]\.uri\.regex"):
        mesh.lab.apply(objects)  # refused at apply time, as Istio's webhook refuses it
    mesh.lab.apply(objects[:2])
    with mesh.lab.store.transaction() as txn:  # as it reaches istiod_lite from a cluster without our webhook
        txn.put({**bad, "metadata": {**bad["metadata"], "uid": "bad-regex-uid"}})
    try:

        def condition() -> dict[str, Any] | None:
            (stored,) = [
                v for v in mesh.lab.objects("VirtualService", "demo") if v["metadata"]["name"] == "bad-regex"
            ]
            conditions = (stored.get("status") or {}).get("conditions") or []
            return conditions[0] if conditions and conditions[0]["status"] == "False" else None

        found = mesh.wait_for(condition, what="istiod_lite's status on the VirtualService")
        assert (found["type"], found["reason"]) == ("Accepted", "Invalid")
        assert found["message"].startswith("spec.http[0].match[0].uri.regex: '/(?<=x)' is not a valid RE2")

        def consistent() -> bool | None:
            """WaypointBound is True exactly when the Gateway is programmed (it may take a build)."""
            (service,) = [s for s in mesh.lab.objects("Service", "demo") if s["metadata"]["name"] == "routed"]
            conditions = (service.get("status") or {}).get("conditions") or []
            bound = next((c for c in conditions if c["type"] == "istio.io/WaypointBound"), None)
            (gateway,) = [
                g for g in mesh.lab.objects("Gateway", "demo") if g["metadata"]["name"] == "waypoint"
            ]
            programmed = bool((gateway.get("status") or {}).get("addresses"))
            return (bound is not None and (bound["status"] == "True") is programmed) or None

        mesh.wait_for(
            consistent, what="the Service's istio.io/WaypointBound to match the Gateway's Programmed"
        )
    finally:
        mesh.lab.delete(objects)
    mesh.wait_for(lambda: not owned(mesh) or None, what="the waypoint's objects to go with its Gateway")
