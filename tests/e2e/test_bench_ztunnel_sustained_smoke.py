"""Smoke run of perf/bench_ztunnel_sustained.py --quick: a real lab, 12 s of new connections through
both ztunnels, torn down. No timing claims (the machine is shared): the numbers only have to be sane."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perf.bench_ztunnel_sustained import QUICK_SECONDS, main

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def test_bench_ztunnel_sustained_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sustained.json"
    assert main(["--quick", "--json", str(out)]) == 0
    (run,) = json.loads(out.read_text())["runs"]
    assert run["failed"] == 0 and run["first_error"] is None, run["first_error"]
    assert run["seconds"] >= QUICK_SECONDS and run["connections"] == sum(run["per_second"]) > 100
    assert run["first_rate"] > 10 and run["last_rate"] > 10
    assert all(0 < ms < 100 for ms in [*run["cpu_ms_per_conn"], *run["server_ms_per_conn_windows"]]), run
    assert run["tw_reuse"] == "1"  # set in the server pod by the node agent (POD_SYSCTLS)
    assert run["time_wait"] > 0
    assert "| median |" in capsys.readouterr().out
