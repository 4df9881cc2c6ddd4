"""The waypoint benchmark runs end to end (one short repeat), so it cannot rot: every path answers,
and every row (the HBONE-in rows too: Envoy as an HBONE client in front of an HBONE terminator, our
waypoint and Envoy as Istio's waypoint) has a rate, a latency and, for the proxies, CPU per request
and RSS."""

from __future__ import annotations

import pytest

from perf.bench_waypoint import ROWS, run_benchmark, summarize

pytestmark = pytest.mark.timeout(180)


def test_the_waypoint_benchmark_measures_every_row_and_path() -> None:
    table = summarize(run_benchmark(seconds=1, repeats=1, connections=4, rate=200, progress=lambda _: None))
    assert [(line["row"], line["path"]) for line in table] == [
        (r, p) for r in ROWS for p in ("ours", "envoy")
    ]
    for line in table:
        assert line["rps"] and line["rps"] > 0 and line["mean_ms"] and line["mean_ms"] > 0
        assert line["proxy_cpu_us_per_req"] and line["proxy_rss_mb"]
