"""A short smoke of perf/bench_xds: a tiny cluster, five subscribers in a child process, one pod change."""

from __future__ import annotations

import pytest

from perf._xds_cluster import Scale
from perf.bench_xds import serve_once

pytestmark = pytest.mark.timeout(60)

TINY = Scale(pods=200, services=20, policies=20, subscribers=5, namespaces=5, nodes=2)


@pytest.mark.parametrize("lean", [False, True])
async def test_the_benchmark_runs_and_measures(lean: bool) -> None:
    result = await serve_once(TINY, agent_processes=1, lean=lean, changes=1)
    assert result["addresses"] == 220  # 200 workloads + 20 services
    assert result["authorizations"] == 20
    assert 0 < result["full_push_s"] < 30
    assert result["debounce_and_translate_s"] >= 0.09  # the 100 ms debounce (a timer may fire early)
    assert 0 < result["publish_to_all_s"] < result["change_to_all_s"]
    assert result["rss_mb"] > 0
