"""The dashboard's graph from Istio's metrics: reporters counted once, the waypoint's TCP legs folded
into the HTTP edges that name it, mTLS and unmeshed callers, and Prometheus's histogram_quantile."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from meshctl.dashboard.graph import QUERIES, Sample, build_graph, histogram_quantile, parse_vector


def pair(src: str, dst: str, reporter: str, **labels: str) -> dict[str, str]:
    src_ns, _, src_wl = src.partition("/")
    dst_ns, _, dst_wl = dst.partition("/")
    return {
        "source_workload": src_wl, "source_workload_namespace": src_ns,
        "destination_workload": dst_wl, "destination_workload_namespace": dst_ns,
        "reporter": reporter, **labels,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, [(10.0, 5.0), (20.0, 10.0), (math.inf, 10.0)], 10.0),
        (0.99, [(10.0, 5.0), (20.0, 10.0), (math.inf, 10.0)], 10.0 + 10.0 * (9.9 - 5.0) / 5.0),
        (0.25, [(10.0, 5.0), (20.0, 10.0), (math.inf, 10.0)], 5.0),  # from 0 inside the first bucket
        (0.99, [(10.0, 5.0), (20.0, 5.0), (math.inf, 10.0)], 20.0),  # in +Inf: the highest finite bound
        (0.5, [(10.0, 0.0), (math.inf, 0.0)], None),  # no observations
        (0.5, [(10.0, 3.0)], None),  # no +Inf bucket
    ],
)
def test_histogram_quantile_as_prometheus(
    q: float, buckets: list[tuple[float, float]], expected: float | None
) -> None:
    assert histogram_quantile(q, buckets) == (None if expected is None else pytest.approx(expected))


def test_an_http_edge_through_a_waypoint_with_errors_latency_and_mtls() -> None:
    edge = pair("demo/client", "demo/server-v1", "waypoint")
    waypoint = {"namespace": "demo", "gateway_networking_k8s_io_gateway_name": "waypoint"}
    mtls = {"connection_security_policy": "mutual_tls"}
    results = {
        "http_rate": [
            Sample({**edge, **waypoint, **mtls, "response_code": "200"}, 9.0),
            Sample({**edge, **waypoint, **mtls, "response_code": "503"}, 1.0),
        ],
        "http_buckets": [
            Sample({**edge, "le": "5"}, 4.0),
            Sample({**edge, "le": "10"}, 9.0),
            Sample({**edge, "le": "+Inf"}, 10.0),
        ],
        "tcp_opened": [  # the legs into and out of the waypoint: the HTTP edge's transport
            Sample({**pair("demo/client", "demo/waypoint", "source"), **mtls}, 2.0),
            Sample({**pair("demo/waypoint", "demo/server-v1", "destination"), **mtls}, 2.0),
        ],
    }  # fmt: skip
    graph = build_graph(results).to_json()
    assert graph["edges"] == [
        {
            "id": "demo/client->demo/server-v1:http", "source": "demo/client", "target": "demo/server-v1",
            "protocol": "http", "rate": 10.0, "rateUnit": "req/s", "errorPercent": 10.0,
            "bytesPerSecond": 0.0,
            "p50Ms": pytest.approx(5.0 + 5.0 * (5.0 - 4.0) / 5.0), "p99Ms": 10.0, "mtls": True,
            "via": ["demo/waypoint"],
        }
    ]  # fmt: skip
    kinds = {n["id"]: n["kind"] for n in graph["nodes"]}
    assert kinds == {"demo/client": "workload", "demo/server-v1": "workload", "demo/waypoint": "waypoint"}


def test_tcp_edges_count_one_reporter_and_mark_the_unmeshed_caller() -> None:
    meshed = {"connection_security_policy": "mutual_tls"}
    plain = {"connection_security_policy": "unknown"}
    results = {
        "tcp_opened": [
            Sample({**pair("demo/client", "demo/server", "source"), **meshed}, 4.0),
            Sample({**pair("demo/client", "demo/server", "destination"), **meshed}, 4.0),
            Sample({**pair("legacy/client", "demo/server", "destination"), **plain}, 1.0),
        ],
        "tcp_bytes": [Sample({**pair("legacy/client", "demo/server", "destination"), **plain}, 512.0)],
    }
    graph = build_graph(results).to_json()
    edges = {(e["source"], e["mtls"], e["rate"], e["bytesPerSecond"]) for e in graph["edges"]}
    assert edges == {("demo/client", True, 4.0, 0.0), ("legacy/client", False, 1.0, 512.0)}
    unmeshed = {n["id"]: n["unmeshed"] for n in graph["nodes"]}
    assert unmeshed == {"demo/client": False, "demo/server": False, "legacy/client": True}
    live = [{"namespace": "legacy", "workload": "client", "protocol": "HBONE"}]
    assert not next(
        n for n in build_graph(results, workloads=live).to_json()["nodes"] if n["id"] == "legacy/client"
    )["unmeshed"]
    only_legacy = build_graph(results, namespace="legacy").to_json()
    assert [e["source"] for e in only_legacy["edges"]] == ["legacy/client"]


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ({"status": "error", "error": "parse error"}, "parse error"),
        ({"status": "success", "data": {"resultType": "matrix", "result": []}}, "instant vector"),
    ],
)
def test_a_prometheus_answer_that_is_not_a_vector_is_refused(answer: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_vector(answer)


def recorded() -> dict[str, Any]:
    """Prometheus's answers to the graph's queries (and istiod_lite's workloadz) recorded on the lab
    during ``make demo``'s traffic through the waypoint (200s, /status/503s, legacy plaintext)."""
    document: dict[str, Any] = json.loads(
        (Path(__file__).parent / "data" / "prometheus_graph.json").read_text()
    )
    return document


def raw(document: dict[str, Any], query: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    return [
        (r["metric"], float(r["value"][1]))
        for r in document[query]["answer"]["data"]["result"]
        if all(r["metric"].get(k) == v for k, v in labels.items())
    ]


def test_the_graph_of_recorded_prometheus_answers_matches_values_computed_by_hand() -> None:
    document = recorded()
    results = {name: parse_vector(document[name]["answer"]) for name in QUERIES}
    graph = build_graph(results, workloads=document["workloadz"]["workloads"]).to_json()
    edges = {e["id"]: e for e in graph["edges"]}
    assert sorted(edges) == [
        "demo/client->demo/server-v1:http",
        "demo/client->demo/server-v2:http",
        "legacy/client->demo/server-v1:tcp",
        "legacy/client->demo/server-v2:tcp",
    ]  # the waypoint's own TCP legs are the HTTP edges' transport
    v1 = edges["demo/client->demo/server-v1:http"]
    ok = sum(v for _, v in raw(document, "http_rate", destination_workload="server-v1", response_code="200"))
    failed = sum(
        v for _, v in raw(document, "http_rate", destination_workload="server-v1", response_code="503")
    )
    assert v1["rate"] == pytest.approx(ok + failed, abs=1e-3)
    assert v1["errorPercent"] == pytest.approx(100 * failed / (ok + failed), abs=0.01)
    # p99 by hand: the rank 0.99 * total falls in the bucket (10, 25]; interpolate linearly inside it.
    buckets = {float(m["le"]): v for m, v in raw(document, "http_buckets", destination_workload="server-v1")}
    rank = 0.99 * buckets[math.inf]
    assert buckets[10.0] < rank <= buckets[25.0]
    by_hand = 10.0 + (25.0 - 10.0) * (rank - buckets[10.0]) / (buckets[25.0] - buckets[10.0])
    assert v1["p99Ms"] == pytest.approx(by_hand, abs=0.01)
    assert v1["mtls"] and v1["via"] == ["demo/waypoint"]
    legacy = edges["legacy/client->demo/server-v1:tcp"]
    assert not legacy["mtls"] and legacy["rate"] > 0
    nodes = {n["id"]: (n["kind"], n["unmeshed"]) for n in graph["nodes"]}
    assert nodes == {
        "demo/client": ("workload", False),
        "demo/server-v1": ("workload", False),
        "demo/server-v2": ("workload", False),
        "demo/waypoint": ("waypoint", False),
        "legacy/client": ("workload", True),
    }
