"""``meshctl canary`` on the lab with its real Prometheus and a waypoint: a healthy v2 is promoted
to 100 % with no failed client request, and a v2 receiving the mesh's own fault injection (30 %
aborts, VirtualService ``fault``) is rolled back to 100/0 at the first check after the fault; the
weight history and the decisions are read back from the route object."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from meshctl.canary_plan import read_state
from meshctl.lab import builders as b
from meshctl.lab.mesh import control_plane_address
from meshctl.lab.observability import PROMETHEUS_PORT
from meshctl.nethttp import http_get
from tests.e2e.conftest import CLIENT_NODE, SERVER_NODE, MeshLab
from tests.e2e.waypoint_lab import applied_behind_waypoint, enrolled_namespace_with_waypoint

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

NS = "canary"
LOAD = (
    'for i in $(seq {n}); do curl -s -o /dev/null -m 5 -w "%{{http_code}}\\n" http://web/; sleep 0.05; done'
)


def objects() -> list[dict[str, Any]]:
    """web v1 and v2 behind one Service on the namespace's waypoint, routed 100/0, and a client."""
    service = b.service("web", NS, selector={"app": "web"}, port=80, target_port=8080)
    service["metadata"]["labels"] = {"istio.io/use-waypoint": "waypoint"}
    return [
        *enrolled_namespace_with_waypoint(NS),
        b.httpecho_deployment("web-v1", NS, labels={"app": "web", "version": "v1"}, node=SERVER_NODE),
        b.httpecho_deployment("web-v2", NS, labels={"app": "web", "version": "v2"}, node=CLIENT_NODE),
        service,
        b.deployment("client", NS, command=b.SLEEPER, node=CLIENT_NODE),
        {
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {"host": "web", "subsets": [{"name": v, "labels": {"version": v}} for v in ("v1", "v2")]},
        },
        virtual_service(),
    ]  # fmt: skip


def virtual_service(fault: dict[str, Any] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "name": "split",
        "route": [
            {"destination": {"host": "web", "subset": "v1"}, "weight": 100},
            {"destination": {"host": "web", "subset": "v2"}, "weight": 0},
        ],
    }
    if fault:
        rule["fault"] = fault
    return {
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "web", "namespace": NS}, "spec": {"hosts": ["web"], "http": [rule]},
    }  # fmt: skip


@pytest.fixture(scope="module")
def shop(mesh: MeshLab) -> Iterator[MeshLab]:
    def ready() -> bool:
        return codes(mesh, 5) == ["200"] * 5

    with applied_behind_waypoint(
        mesh, NS, objects(), "web", ready=ready, what="web answering through the waypoint"
    ) as applied:
        yield applied


def start_load(mesh: MeshLab, n: int, *, keep_output: bool = False) -> subprocess.Popen[str]:
    """The client's request loop (``lab exec`` runs it as its child), in its own process group so
    that :func:`stop_load` stops the loop itself, not only ``meshctl``."""
    return subprocess.Popen(
        [sys.executable, "-m", "meshctl.cli", "lab", "exec", "--state", str(mesh.lab.paths.root),
         f"{NS}/client", "--", "sh", "-c", LOAD.format(n=n)],
        stdout=subprocess.PIPE if keep_output else subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip


def stop_load(load: subprocess.Popen[str]) -> str:
    """Kills the loop's process group (ours); returns the status codes it printed, when kept."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(load.pid, signal.SIGKILL)
    out, _ = load.communicate()
    return out or ""


def codes(mesh: MeshLab, n: int) -> list[str]:
    done = mesh.exec(f"{NS}/client", "sh", "-c", LOAD.format(n=n), timeout=60)
    return done.stdout.split()


def canary(mesh: MeshLab) -> subprocess.CompletedProcess[str]:
    return subprocess.run(canary_argv(mesh), capture_output=True, text=True, timeout=150, check=False)


def canary_argv(mesh: MeshLab) -> list[str]:
    return [
        sys.executable, "-m", "meshctl.cli", "canary", "start", "web", "-n", NS, "--from", "v1", "--to", "v2",
        "--steps", "50,100", "--interval", "10s", "--max-error-rate", "1%", "--max-p99", "2000ms",
        "--state", str(mesh.lab.paths.root),
    ]  # fmt: skip


def prometheus(mesh: MeshLab, query: str) -> list[dict[str, Any]]:
    """The result of an instant query to the lab's Prometheus (Istio's documented queries, unchanged)."""
    result = prometheus_result(mesh, query)
    assert result, f"no result for {query}"
    return result


def prometheus_result(mesh: MeshLab, query: str) -> list[dict[str, Any]]:
    """The result of an instant query, empty when nothing matches."""
    cp = control_plane_address(mesh.lab.settings)
    status, body = http_get(
        cp, PROMETHEUS_PORT, "/api/v1/query?" + urllib.parse.urlencode({"query": query}),
        netns=mesh.lab.settings.bridge_netns,
    )  # fmt: skip
    assert status == 200, body[:300]
    result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
    return result


def route(mesh: MeshLab) -> dict[str, Any]:
    (found,) = [o for o in mesh.lab.objects("VirtualService", NS) if o["metadata"]["name"] == "web"]
    return found


def weights(obj: dict[str, Any]) -> dict[str, int]:
    return {d["destination"]["subset"]: d["weight"] for d in obj["spec"]["http"][0]["route"]}


def test_a_healthy_canary_is_promoted_without_a_failed_request(shop: MeshLab) -> None:
    load = start_load(shop, 2000, keep_output=True)
    try:
        done = canary(shop)
    finally:
        out = stop_load(load)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "promoted: v2 at 100 %" in done.stdout
    obj = route(shop)
    assert weights(obj) == {"v1": 0, "v2": 100}
    state = read_state(obj)
    assert state is not None and state.phase == "Promoted"
    assert [(h["weight"], h["decision"]) for h in state.history if h["decision"] != "hold"] == [
        (50, "advance"),
        (100, "advance"),
    ]
    assert all(h["requestsPerSecond"] > 0 for h in state.history if h["decision"] == "advance")
    answered = out.split()
    assert len(answered) > 100 and set(answered) == {"200"}, f"failed client requests: {set(answered)}"
    # The queries of Istio's docs and Grafana dashboards, unchanged:
    select = f'reporter=~"destination|waypoint",destination_service=~"web.{NS}.svc.cluster.local"'
    requests = f"istio_requests_total{{{select}}}"
    by_workload = prometheus(shop, f"sum(rate({requests}[1m])) by (destination_workload)")
    assert {r["metric"]["destination_workload"] for r in by_workload} == {"web-v1", "web-v2"}
    ok = f'istio_requests_total{{{select},response_code!~"5.*"}}'
    success = prometheus(shop, f"sum(irate({ok}[1m])) / sum(irate({requests}[1m]))")
    assert float(success[0]["value"][1]) == 1.0
    buckets = f"istio_request_duration_milliseconds_bucket{{{select}}}"
    p99 = prometheus(
        shop, f"histogram_quantile(0.99, sum(irate({buckets}[1m])) by (le, destination_workload))"
    )
    assert all(0 < float(r["value"][1]) < 2000 for r in p99 if r["value"][1] != "NaN")
    tcp = prometheus(
        shop, 'sum(rate(istio_tcp_sent_bytes_total{reporter="destination"}[1m])) by (destination_workload)'
    )
    assert {"web-v1", "web-v2"} <= {r["metric"].get("destination_workload") for r in tcp}


def test_a_canary_with_injected_aborts_is_rolled_back_at_the_first_check(shop: MeshLab) -> None:
    faulty = virtual_service({"abort": {"httpStatus": 503, "percentage": {"value": 30}}})
    shop.lab.apply([faulty])  # also clears the previous canary's state annotation
    assert read_state(route(shop)) is None and weights(route(shop)) == {"v1": 100, "v2": 0}
    load = start_load(shop, 1000)
    try:
        done = canary(shop)
    finally:
        stop_load(load)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "rolled back: v1 at 100 % (error rate of v2" in done.stdout
    obj = route(shop)
    assert weights(obj) == {"v1": 100, "v2": 0}
    state = read_state(obj)
    assert state is not None and state.phase == "RolledBack" and state.message.startswith("error rate of v2")
    decided = [h for h in state.history if h["decision"] != "hold"]
    assert [(h["weight"], h["decision"]) for h in decided] == [(50, "rollback")]  # within one interval
    assert decided[0]["errorRate"] > 0.01  # the threshold (rates over a short window: not exactly 30 %)
    assert (
        copy.deepcopy(obj)["spec"]["http"][0]["fault"]["abort"]["httpStatus"] == 503
    )  # the user's fault kept
    status = subprocess.run(
        [sys.executable, "-m", "meshctl.cli", "canary", "status", "web", "-n", NS,
         "--from", "v1", "--to", "v2", "--state", str(shop.lab.paths.root)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert status.returncode == 1, status.stderr  # rolled back
    assert "VirtualService/web: RolledBack" in status.stdout and "error rate of v2" in status.stdout
    assert "DECISION" in status.stdout and "rollback" in status.stdout


def scraped_since(mesh: MeshLab, since: float) -> None:
    """Waits until Prometheus scraped the waypoint after ``since`` (unix time): a check counts the
    new version's requests from the last scrape before its step began, so a canary started sooner
    judges what the previous test sent it after that test's last check."""
    scrape = f'timestamp(up{{namespace="{NS}",pod=~"waypoint-.*"}}) > {since:.3f}'
    mesh.wait_for(lambda: prometheus_result(mesh, scrape), what="a scrape of the waypoint", timeout=30)


def test_a_stopped_canary_resumes_from_the_state_on_the_route(shop: MeshLab) -> None:
    shop.lab.apply([virtual_service()])  # a fresh route: no fault, no canary state
    assert read_state(route(shop)) is None
    scraped_since(shop, time.time())  # the aborts test's last 503s are not this canary's
    load = start_load(shop, 2000)
    first = subprocess.Popen(canary_argv(shop), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:

        def advanced_once() -> bool | None:
            state = read_state(route(shop))
            return (state is not None and state.step == 1) or None

        shop.wait_for(advanced_once, what="the canary's first step to pass", timeout=60)
        first.send_signal(signal.SIGINT)  # meshctl stops (a laptop closed, a CI job cancelled)
        first.wait(10)
        assert read_state(route(shop)).phase == "Progressing"  # type: ignore[union-attr]
        done = subprocess.run(canary_argv(shop), capture_output=True, text=True, timeout=150, check=False)
    except BaseException:
        first.kill()
        print(f"the first canary printed:\n{first.communicate()[0]}")  # pytest shows it with the failure
        raise
    finally:
        first.kill()
        first.wait()
        stop_load(load)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming the canary of web at step 2 (100 %)" in done.stdout
    state = read_state(route(shop))
    assert state is not None and state.phase == "Promoted"
    assert [h["weight"] for h in state.history if h["decision"] == "advance"] == [50, 100]
