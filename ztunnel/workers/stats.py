"""Metrics across worker processes: each worker's families as JSON, and their sum.

ztunnel's ``/metrics`` shows one node: the parent's own series plus every worker's, with the
samples of the same name and labels added up (counters, gauges and histogram buckets, counts and
sums all add across processes).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mesh.rt.metrics import (
    CounterFamily,
    GaugeFamily,
    HistogramFamily,
    LabelSet,
    MetricFamily,
    Registry,
)
from ztunnel.workers.channel import WorkerChannelError

__all__ = ["families_as_json", "families_from_json", "sum_families"]

_KINDS: dict[str, type[MetricFamily]] = {
    "counter": CounterFamily,
    "gauge": GaugeFamily,
    "histogram": HistogramFamily,
}


def families_as_json(registry: Registry) -> list[dict[str, Any]]:
    """Every family of ``registry`` as JSON values."""
    return [
        {
            "name": family.name,
            "kind": family.kind,
            "help": family.documentation,
            "labels": list(family.labelnames),
            "samples": [[name, labels.pairs, value] for name, labels, value in family.samples],
        }
        for family in registry.collect()
    ]


def families_from_json(data: Any) -> list[MetricFamily]:
    """The families :func:`families_as_json` described; raises WorkerChannelError if malformed."""
    families = []
    try:
        for item in data:
            family = _KINDS[item["kind"]](item["name"], item["help"], item["labels"])
            family.samples = [
                (str(name), LabelSet((str(k), str(v)) for k, v in pairs), float(value))
                for name, pairs, value in item["samples"]
            ]
            families.append(family)
    except (KeyError, TypeError, ValueError) as exc:
        raise WorkerChannelError(f"a worker's metrics are malformed: {exc!r}") from None
    return families


def sum_families(groups: Iterable[Iterable[MetricFamily]]) -> list[MetricFamily]:
    """One family per name, each series' value summed over ``groups`` (first-seen order)."""
    merged: dict[str, MetricFamily] = {}
    sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[Any]]] = {}
    for group in groups:
        for family in group:
            target = merged.get(family.name)
            if target is None:
                target = merged[family.name] = type(family)(
                    family.name, family.documentation, family.labelnames
                )
                sums[family.name] = {}
            series = sums[family.name]
            for name, labels, value in family.samples:
                sample = series.get((name, labels.pairs))
                if sample is None:
                    series[(name, labels.pairs)] = [name, labels, value]
                else:
                    sample[2] += value
    for name, family in merged.items():
        family.samples = [(n, labels, value) for n, labels, value in sums[name].values()]
    return list(merged.values())
