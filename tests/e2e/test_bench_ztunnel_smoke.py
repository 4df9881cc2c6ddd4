"""Smoke run of perf/bench_ztunnel.py --quick: a real lab with the mesh, every path measured, torn down.

No timing claims (the machine is shared); the numbers only have to be sane and complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from meshctl.lab.testkit import SystemSnapshot
from perf.bench_ztunnel import QUICK, main

pytestmark = [pytest.mark.e2e, pytest.mark.envoy, pytest.mark.timeout(150)]

PATHS = {"direct", "ztunnel", "envoy", "envoy-equal"}


def _check_run(run: dict[str, Any]) -> None:
    assert 10 < run["p50_us"] <= run["p99_us"] < 1_000_000, run
    assert run["rps"] > 100 and run["conn_per_s"] > 10 and run["mb_per_s"] > 1, run
    proxied = run["path"] != "direct"
    for key in ("cpu_us_per_rt", "cpu_us_per_req", "cpu_s_per_gb", "proxy_rss_mb"):
        assert (run[key] is not None) == proxied, (key, run)
    if proxied:
        assert 10 < run["proxy_rss_mb"] < 2000 and run["cpu_us_per_rt"] > 0, run


def test_bench_ztunnel_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ztunnel.json"
    assert main(["--quick", "--json", str(out)]) == 0
    data = json.loads(out.read_text())

    assert {r["path"] for r in data["runs"]} == PATHS
    for run in data["runs"]:
        _check_run(run)
    before, after, scaled, held = data["memory"]
    assert before["pods_per_node"] == after["pods_per_node"] == 2
    assert scaled["pods_per_node"] == QUICK.pods_per_node and scaled["p50_us"] > 0
    assert held["idle_connections"] == QUICK.idle_connections and not scaled["idle_connections"]
    for mem in data["memory"]:
        for rss, hwm, anon in zip(mem["rss_mb"], mem["hwm_mb"], mem["anon_mb"], strict=True):
            assert 0 < anon < rss <= hwm < 2000, mem
    assert data["mtls_connections"] >= 1000  # the ztunnel path went over HBONE (1000+ new conns alone)
    started = [events.get("proxy.started", 0) for events in data["log_events"].values()]
    assert min(started) >= QUICK.pods_per_node, data["log_events"]

    report = capsys.readouterr().out
    for path in PATHS:
        assert f"| {path} |" in report
    assert "Targets:" in report and "p50 latency <= 1.0x Envoy" in report
    assert f"{QUICK.idle_connections} idle connections through the mesh:" in report
    left = SystemSnapshot.take(data["lab_id"])
    assert not left.namespaces and not left.processes, left
