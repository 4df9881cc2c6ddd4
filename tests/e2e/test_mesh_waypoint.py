"""Waypoints in the lab: a Gateway of class istio-waypoint gets its ServiceAccount, Deployment, Service,
a token istiod_lite knows and a status; deleting the Gateway removes what it owned."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshctl.lab import builders as b
from meshctl.lab.errors import LabObjectError
from tests.e2e.conftest import CLIENT_NODE, SERVER_NODE, MeshLab

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


def _pod_token(mesh: MeshLab, token_file: str) -> tuple[str, str] | None:
    """The running waypoint pod's projected token, read where its process reads it, and the pod
    (``ns/name``); None until the pod runs."""
    names = [p["metadata"]["name"] for p in mesh.lab.pods("demo")]
    pod = next((f"demo/{name}" for name in names if name.startswith("waypoint")), None)
    if pod is None:
        return None
    done = mesh.exec(pod, "cat", token_file)
    return (done.stdout.strip(), pod) if done.returncode == 0 and done.stdout.strip() else None


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
        token, pod = mesh.wait_for(
            lambda: _pod_token(mesh, args[args.index("--token-file") + 1]), what="the waypoint pod's token"
        )
        tokens = yaml.safe_load(mesh.lab.paths.tokens.read_text())
        entry = tokens[token]  # what istiod_lite's lab authenticator knows
        assert (entry["identity"], entry["audience"], entry["pod"]) == ("demo/waypoint", "istio-ca", pod)

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


def reviews_objects(*, use_waypoint: bool) -> list[dict[str, Any]]:
    """reviews v1 and v2 (real HTTP servers) behind one Service, the Service on the waypoint."""
    service = b.service("reviews", "demo", selector={"app": "reviews"}, port=80, target_port=8080)
    if use_waypoint:
        service["metadata"]["labels"] = {"istio.io/use-waypoint": "waypoint"}
    return [
        b.httpecho_deployment(
            "reviews-v1", "demo", labels={"app": "reviews", "version": "v1"}, node=SERVER_NODE
        ),
        b.httpecho_deployment(
            "reviews-v2", "demo", labels={"app": "reviews", "version": "v2"}, node=CLIENT_NODE
        ),
        service,
    ]


ROUTING = [
    {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "demo"},
        "spec": {
            "host": "reviews",
            "subsets": [{"name": v, "labels": {"version": v}} for v in ("v1", "v2")],
        },
    },
    {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "demo"},
        "spec": {
            "hosts": ["reviews"],
            "http": [
                {"match": [{"headers": {"x-canary-test": {"exact": "true"}}}],
                 "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
                {"route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 100}]},
            ],
        },
    },
]  # fmt: skip


def wait_on_waypoint(mesh: MeshLab) -> None:
    """Until the client's ztunnel sends reviews to the waypoint (its pod ready, the workload API says so)."""

    def on_waypoint() -> bool | None:
        services = [s for s in mesh.zc(CLIENT_NODE, "services") if s.get("name") == "reviews"]
        return bool(services and services[0].get("waypoint")) or None

    mesh.wait_for(on_waypoint, what="the client's ztunnel sending reviews to the waypoint", timeout=40)


def versions(mesh: MeshLab, count: int, *headers: str) -> list[str]:
    """The version of the reviews pod that answered each of ``count`` requests from demo/client."""
    extra = [arg for header in headers for arg in ("-H", header)]
    done = mesh.exec(
        "demo/client", "curl", "-sS", "-m", "5", *extra, *["http://reviews/"] * count, timeout=60
    )
    assert done.returncode == 0, f"{done.stderr[-300:]}\n{_waypoint_diagnostics(mesh)}"
    return [line.split('"')[3] for line in done.stdout.splitlines() if line.strip().startswith('"version"')]


def test_traffic_through_the_waypoint_follows_the_virtual_service(mesh: MeshLab) -> None:
    """client -> ztunnel -> waypoint (HBONE) -> ztunnel -> reviews: the VirtualService's header route
    and its 100 % to v1 hold; without the use-waypoint label the Service spreads over both again."""
    gateway = waypoint_gateway()
    mesh.lab.apply([gateway, *reviews_objects(use_waypoint=True), *ROUTING])
    try:
        mesh.lab.wait_ready(timeout=60)

        def programmed() -> bool | None:
            (gw,) = [g for g in mesh.lab.objects("Gateway", "demo") if g["metadata"]["name"] == "waypoint"]
            return bool((gw.get("status") or {}).get("addresses")) or None

        mesh.wait_for(programmed, what="the waypoint programmed (its pod ready)", timeout=40)
        wait_on_waypoint(mesh)
        # L4 balances connections, not requests: every request here gets its own connection, so
        # only the waypoint can make all of them follow the VirtualService.
        close = "Connection: close"
        canary = lambda: versions(mesh, 5, "x-canary-test: true", close) == ["v2"] * 5 or None  # noqa: E731
        mesh.wait_for(canary, what="the header route through the waypoint", timeout=30)
        answered = versions(mesh, 30, close)
        assert answered == ["v1"] * 30, f"{answered}\n{_waypoint_diagnostics(mesh)}"
        assert versions(mesh, 10, "x-canary-test: true", close) == ["v2"] * 10
        mesh.lab.apply(reviews_objects(use_waypoint=False))  # label removed: straight to ztunnel again
        spread = lambda: set(versions(mesh, 20, close)) == {"v1", "v2"} or None  # noqa: E731
        mesh.wait_for(spread, what="both versions again, without the waypoint", timeout=30)
    finally:
        mesh.lab.delete([*ROUTING, *reviews_objects(use_waypoint=False), gateway])


def _waypoint_diagnostics(mesh: MeshLab) -> str:
    """The waypoint pod's log and what the client's ztunnel knows of reviews, for a failure message."""
    waypoint = next(
        p["metadata"]["name"] for p in mesh.lab.pods("demo") if p["metadata"]["name"].startswith("waypoint")
    )
    services = [s for s in mesh.zc(CLIENT_NODE, "services") if s.get("name") == "reviews"]
    return f"{services}\n{mesh.lab.logs('demo/' + waypoint)[-3000:]}"


RESILIENCE = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "VirtualService",
    "metadata": {"name": "reviews", "namespace": "demo"},
    "spec": {
        "hosts": ["reviews"],
        "http": [
            {"match": [{"uri": {"prefix": "/abort"}}], "route": [{"destination": {"host": "reviews"}}],
             "fault": {"abort": {"httpStatus": 503, "percentage": {"value": 50}}}},
            {"match": [{"uri": {"prefix": "/delay/"}}], "route": [{"destination": {"host": "reviews"}}],
             "timeout": "1s"},
            {"match": [{"uri": {"prefix": "/status/503"}}], "route": [{"destination": {"host": "reviews"}}],
             "retries": {"attempts": 2, "retryOn": "5xx"}},
            {"route": [{"destination": {"host": "reviews"}}]},
        ],
    },
}  # fmt: skip


def codes(mesh: MeshLab, path: str, count: int) -> list[int]:
    """Status codes of ``count`` requests from demo/client to reviews ``path``."""
    discard = ["-o", "/dev/null"] * count
    urls = [f"http://reviews{path}"] * count
    done = mesh.exec(
        "demo/client", "curl", "-s", "-m", "5", *discard, "-w", "%{http_code}\\n", *urls, timeout=120
    )
    return [int(code) for code in done.stdout.split()]


def waypoint_metrics(mesh: MeshLab) -> str:
    """The waypoint pod's /metrics (15020), read inside its network namespace."""
    pod = next(
        p["metadata"]["name"] for p in mesh.lab.pods("demo") if p["metadata"]["name"].startswith("waypoint")
    )
    done = mesh.exec(f"demo/{pod}", "curl", "-s", "-m", "5", "http://127.0.0.1:15020/metrics")
    return done.stdout


def test_faults_timeouts_and_retries_through_the_waypoint(mesh: MeshLab) -> None:
    """A VirtualService's abort (50 %, flag FI), timeout (1 s -> 504 UT) and retries (a backend that
    keeps failing -> its 503 with URX) hold for real clients through the waypoint in the lab."""
    gateway = waypoint_gateway()
    mesh.lab.apply([gateway, *reviews_objects(use_waypoint=True), RESILIENCE])
    try:
        mesh.lab.wait_ready(timeout=60)
        wait_on_waypoint(mesh)
        mesh.wait_for(
            lambda: 503 in codes(mesh, "/abort", 20) or None, what="the fault abort in force", timeout=30
        )
        aborted = codes(mesh, "/abort", 400)
        assert set(aborted) == {200, 503}
        share = aborted.count(503) / len(aborted)
        assert abs(share - 0.5) <= 3.3 * (0.25 / len(aborted)) ** 0.5, share
        started = time.monotonic()
        assert codes(mesh, "/delay/3", 1) == [504]
        assert time.monotonic() - started < 2.5
        assert codes(mesh, "/status/503", 2) == [503, 503]
        text = waypoint_metrics(mesh)
        assert 'response_code="503",response_flags="FI"' in text
        assert 'response_code="504",response_flags="UT"' in text
        assert 'response_code="503",response_flags="URX"' in text
    finally:
        mesh.lab.delete([RESILIENCE, *reviews_objects(use_waypoint=False), gateway])


def http_route_split() -> list[dict[str, Any]]:
    """Gateway API's way: one Service per version, and an HTTPRoute on reviews splitting 80/20."""
    per_version = [
        b.service(
            f"reviews-{v}", "demo", selector={"app": "reviews", "version": v}, port=80, target_port=8080
        )
        for v in ("v1", "v2")
    ]
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "reviews", "namespace": "demo"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 80}],
            "rules": [
                {"backendRefs": [{"name": "reviews-v1", "port": 80, "weight": 80},
                                 {"name": "reviews-v2", "port": 80, "weight": 20}]}
            ],
        },
    }  # fmt: skip
    return [*per_version, route]


def test_an_http_route_splits_80_20_over_2000_requests(mesh: MeshLab) -> None:
    gateway = waypoint_gateway()
    split = http_route_split()
    mesh.lab.apply([gateway, *reviews_objects(use_waypoint=True), *split])
    try:
        mesh.lab.wait_ready(timeout=60)
        wait_on_waypoint(mesh)

        def split_in_force() -> bool | None:
            return {"v1", "v2"} <= set(versions(mesh, 40, "Connection: close")) or None

        mesh.wait_for(split_in_force, what="the HTTPRoute split through the waypoint", timeout=40)
        answered = versions(mesh, 2000, "Connection: close")
        assert len(answered) == 2000
        v2 = answered.count("v2")
        assert abs(v2 - 400) <= 3.3 * (2000 * 0.2 * 0.8) ** 0.5, v2
    finally:
        mesh.lab.delete([*split, *reviews_objects(use_waypoint=False), gateway])


def test_meshctl_waypoint_and_proxy_config(mesh: MeshLab) -> None:
    """``meshctl waypoint`` as ``istioctl waypoint``: apply --enroll-namespace (and wait until
    programmed), list, status, delete; ``meshctl proxy-config`` shows the waypoint's routes,
    clusters and endpoints; the real CLI against the running lab."""
    meshctl = str(Path(sys.executable).with_name("meshctl"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [meshctl, "waypoint", *args[:1], "--state", str(mesh.lab.paths.root), *args[1:]]
        return subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)

    applied = run("apply", "-n", "demo", "--enroll-namespace", "--wait", "--timeout", "60")
    assert applied.returncode == 0, applied.stderr
    assert (
        "gateway.gateway.networking.k8s.io/waypoint created" in applied.stdout or "created" in applied.stdout
    )
    assert "waypoint demo/waypoint is programmed" in applied.stdout
    listed = run("list", "-n", "demo").stdout.splitlines()
    assert listed[0].split() == ["NAMESPACE", "NAME", "FOR", "PROGRAMMED", "ADDRESS"]
    assert listed[1].split()[:4] == ["demo", "waypoint", "service", "True"]
    assert "Programmed: True (Programmed)" in run("status", "-n", "demo").stdout
    pod = next(
        p["metadata"]["name"] for p in mesh.lab.pods("demo") if p["metadata"]["name"].startswith("waypoint")
    )

    def proxy_config(view: str) -> list[list[str]]:
        argv = [meshctl, "proxy-config", view, f"demo/{pod}", "--state", str(mesh.lab.paths.root)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr
        return [line.split() for line in done.stdout.splitlines()]

    mesh.wait_for(lambda: len(proxy_config("routes")) > 1 or None, what="the waypoint's routes", timeout=30)
    assert proxy_config("routes")[0] == ["ROUTE", "CONFIG", "VIRTUAL", "HOST", "DOMAINS", "ROUTES"]
    assert any(
        row[0] == "demo/waypoint" and row[1].startswith("server.demo") for row in proxy_config("routes")[1:]
    )
    assert any(row[0].startswith("inbound-vip|80|http|server.demo") for row in proxy_config("clusters")[1:])
    assert any(row[2] == "yes" for row in proxy_config("endpoints")[1:])  # server pods are enrolled: HBONE
    deleted = run("delete", "-n", "demo")
    assert deleted.returncode == 0, deleted.stderr
    mesh.wait_for(lambda: not owned(mesh) or None, what="the waypoint's objects to go with its Gateway")
    (namespace,) = [n for n in mesh.lab.objects("Namespace") if n["metadata"]["name"] == "demo"]
    del namespace["metadata"]["labels"]["istio.io/use-waypoint"]
    mesh.lab.apply([namespace])
    missing = run("status", "-n", "demo")
    assert missing.returncode == 1 and "no waypoint demo/waypoint" in missing.stderr


def test_a_virtual_service_canary_95_5_over_2000_requests(mesh: MeshLab) -> None:
    """Istio's canary: a VirtualService sends 95 % to v1 and 5 % to v2, within a binomial 99.9 %
    bound over 2,000 requests on new connections through the waypoint."""
    canary = {
        **ROUTING[1],
        "spec": {
            "hosts": ["reviews"],
            "http": [
                {
                    "route": [
                        {"destination": {"host": "reviews", "subset": "v1"}, "weight": 95},
                        {"destination": {"host": "reviews", "subset": "v2"}, "weight": 5},
                    ]
                }
            ],
        },
    }
    gateway = waypoint_gateway()
    mesh.lab.apply([gateway, *reviews_objects(use_waypoint=True), ROUTING[0], canary])
    try:
        mesh.lab.wait_ready(timeout=60)
        wait_on_waypoint(mesh)

        def weights_in() -> bool | None:
            pod = next(
                p["metadata"]["name"]
                for p in mesh.lab.pods("demo")
                if p["metadata"]["name"].startswith("waypoint")
            )
            dump = mesh.exec(
                f"demo/{pod}", "curl", "-s", "-m", "5", "http://127.0.0.1:15000/config_dump"
            ).stdout
            return '"weight": 95' in dump or None

        mesh.wait_for(weights_in, what="the 95/5 weights in the waypoint's config", timeout=30)
        answered = versions(mesh, 2000, "Connection: close")
        assert len(answered) == 2000
        v2 = answered.count("v2")
        assert abs(v2 - 100) <= 3.3 * (2000 * 0.05 * 0.95) ** 0.5, v2
    finally:
        mesh.lab.delete([canary, ROUTING[0], *reviews_objects(use_waypoint=False), gateway])
