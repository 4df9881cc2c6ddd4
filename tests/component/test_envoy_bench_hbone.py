"""The HBONE benchmark's smoke run (``python -m perf.bench_hbone --quick``): every path moves its bytes,
byte-checked, and the report carries every figure. Loose sanity bounds only: the machine is shared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perf.bench_hbone import PATHS, main

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(180)]


def test_quick_benchmark_runs_every_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert main(["--quick", "--json", str(out)]) == 0
    report = capsys.readouterr().out
    assert "| ours vs |" in report and "Targets:" in report
    medians = {m["path"]: m for m in json.loads(out.read_text())["medians"]}
    assert set(medians) == set(PATHS)
    for path, m in medians.items():
        assert m["mb_per_s"] > 10, path  # 20 MB went through and the server confirmed every byte
        assert 0 < m["p50_us"] <= m["p99_us"], path
    for proxied in ("ours", "envoy", "py-tls"):
        assert medians[proxied]["rss_a_mb"] > 5 and medians[proxied]["rss_b_mb"] > 5
        assert medians[proxied]["proxy_cpu_us_per_rt"] > 0
    # far outside any noise: a relay that stalls on every message or leaks would show here
    assert medians["ours"]["p50_us"] < 10 * medians["envoy"]["p50_us"]
    assert medians["ours"]["mb_per_s"] > medians["envoy"]["mb_per_s"] / 10
