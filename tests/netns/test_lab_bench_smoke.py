"""Smoke run of perf/bench_lab_up.py: a tiny lab comes up, is reached and goes down (no timing claims)."""

from __future__ import annotations

import json

import pytest

from perf.bench_lab_up import main

pytestmark = pytest.mark.netns


def test_bench_lab_up_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--smoke"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["pods"] == 4 and summary["runs"] == 1
    assert 0 < summary["ready_s"] <= summary["reachable_s"]
