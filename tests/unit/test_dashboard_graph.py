"""The dashboard's graph from Istio's metrics: reporters counted once, the waypoint's TCP legs folded
into the HTTP edges that name it, mTLS and unmeshed callers, and Prometheus's histogram_quantile."""

from __future__ import annotations

import math

import pytest

from meshctl.dashboard.graph import Sample, build_graph, histogram_quantile, parse_vector


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
