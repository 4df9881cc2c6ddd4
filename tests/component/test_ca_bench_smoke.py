"""Smoke run of perf/bench_ca.py: both measurements work end to end (tiny counts; no timing claims)."""

from __future__ import annotations

from perf.bench_ca import main


def test_bench_ca_smoke() -> None:
    results = main(["--smoke"])
    assert set(results) == {"pure", "grpc_2"}
    assert all(rate > 0 for rate in results.values())
