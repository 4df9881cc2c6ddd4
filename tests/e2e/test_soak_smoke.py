"""Smoke run of perf/soak_ztunnel.py: a minute of the soak, every disturbance once, torn down.

The one-hour run's RSS drift criterion compares minute 10 with minute 59 of a steady load; a minute
has no steady state (held connections are still building up), so it is not checked here, nor are
descriptors and tasks after the load (that waits out the pools' 5-minute idle time); the task gauge
is checked to follow the load.
"""

from __future__ import annotations

import pytest

from meshctl.lab.testkit import SystemSnapshot
from perf._ztunnel_lab import NODES
from perf.soak_ztunnel import Plan, report, run_soak

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def test_a_minute_of_soak_with_a_controller_kill_a_rotation_and_a_loss_episode() -> None:
    plan = Plan(
        minutes=1.0, rps=50.0, cert_ttl=60, restart_every=0.4, loss=0.02, loss_seconds=10.0, settle=5.0
    )
    result = run_soak(plan)
    assert result["connections"] == 3000
    checks = result["checks"]
    assert checks["success"] and checks["counters_reconcile"] and checks["clean_logs"], report(result)
    assert checks["fds_back"] is None, "not checked without waiting out the pools' idle time"
    assert checks["tasks_back"] is None
    for node in NODES:  # held connections are tasks: the gauge rises under load
        before = result["baseline"][node]["tasks"]
        assert before >= 1, result["baseline"]
        assert max(s[node]["tasks"] for s in result["samples"]) > before + 10, report(result)
    assert any("istiod killed" in e for e in result["events"]), result["events"]
    assert any("packet loss" in e for e in result["events"]), result["events"]
    assert result["summary"]["failed"] == 0, report(result)
    left = SystemSnapshot.take(result["lab_id"])
    assert not left.namespaces and not left.processes, left
