"""Smoke run of perf/bench_enrol.py --smoke: 20 pods enrolled on a real lab's node1 in bursts of 10
and all at once, and the routing step both ways on fresh namespaces. No timing claims (the machine is
shared): every enrolment has to be logged with every step, and the numbers have to be sane."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perf.bench_enrol import STEPS, main

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def test_bench_enrol_smoke(tmp_path: Path) -> None:
    out = tmp_path / "enrol.json"
    assert main(["--smoke", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert [m["mode"] for m in summary["modes"]] == ["bursts", "all"]
    for mode in summary["modes"]:
        assert mode["enrolled_logged"] == mode["pods"] == 20, mode
        assert set(mode["steps_p50_ms"]) == set(STEPS), mode
        assert 0 < mode["cni_ms"]["p50"] <= mode["cni_ms"]["p99"] <= mode["cni_ms"]["max"], mode
        assert mode["ztunnel_listeners_ms"]["p50"] > 0
        # CPU comes from /proc in clock ticks (10 ms): ztunnel's share of 20 pods can be under one
        assert mode["agent_cpu_ms_per_pod"] > 0 and mode["ztunnel_cpu_ms_per_pod"] >= 0
    # two service accounts: one certificate per identity, not per pod (ztunnel keeps them between modes)
    assert summary["modes"][0]["certs_fetched"] == 2 and summary["modes"][1]["certs_fetched"] in (0, 2)
    assert summary["ztunnel_rss_mb_at_pods"] > summary["ztunnel_rss_mb_idle"] > 0
    assert summary["plugin_start_ms"] > 0
    assert set(summary["routing_ms_per_pod"]) == {"netlink", "fork"}
