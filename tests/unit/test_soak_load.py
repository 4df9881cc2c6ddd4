"""The soak load's percentiles: the whole run's come from a histogram of 0.01 ms buckets and equal
what sorting every value gives; each report covers only its own window for the windowed p99."""

from __future__ import annotations

import json
import random
from collections import Counter

from perf._soak_load import Load, _percentile


def test_histogram_percentiles_equal_the_sorted_values() -> None:
    values = [round(random.Random(3).uniform(0, 100), 2) for _ in range(10_001)]
    ordered = sorted(values)
    for percent in (50, 90, 99):
        assert _percentile(Counter(values), percent) == ordered[len(ordered) * percent // 100]
    assert _percentile(Counter(), 99) is None


def test_each_report_has_its_windows_p99_and_the_runs() -> None:
    load = Load("127.0.0.1", 6379)
    load.short_ms = [1.0] * 99 + [50.0]
    first = json.loads(load.report(10.0))
    load.short_ms = [2.0] * 100
    second = json.loads(load.report(20.0))
    assert (first["window_p99_ms"], second["window_p99_ms"]) == (50.0, 2.0)
    assert (second["short_p50_ms"], second["short_p99_ms"]) == (2.0, 2.0)
    assert load.short_ms == [] and sum(load.short_histogram.values()) == 200
