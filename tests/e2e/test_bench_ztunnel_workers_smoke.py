"""Smoke run of perf/bench_ztunnel_workers.py --quick: a lab with 1 and one with 2 worker processes
per ztunnel, both measured, torn down.

No timing claims (the machine is shared); the numbers only have to be sane and complete, and the
2-worker lab must really have run 2 workers per ztunnel.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perf.bench_ztunnel_workers import main

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]


def test_bench_ztunnel_workers_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "workers.json"
    assert main(["--quick", "--json", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [r["workers"] for r in runs] == [1, 2]
    for run in runs:
        assert len(run["rss_mb"]) == (1 if run["workers"] == 1 else 3)  # the parent, then its workers
        assert all(0 < anon < rss < 2000 for rss, anon in zip(run["rss_mb"], run["anon_mb"], strict=True))
        assert run["new_conns_per_s"] > 10 and run["req_per_s"] > 100, run
        assert all(ms > 0 for ms in run["conn_cpu_ms"]) and run["server_cores"] > 0, run
    report = capsys.readouterr().out
    assert "\n| 1 | " in report and "\n| 2 | " in report
    assert "2 workers vs 1: new conns/s" in report
