"""Counters, gauges and histograms with labelled children (see :mod:`mesh.rt.metrics`)."""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

from mesh.rt.metrics._families import (
    NO_LABELS,
    CounterFamily,
    GaugeFamily,
    HistogramFamily,
    LabelSet,
    MetricFamily,
    MetricsError,
    Registry,
    Sample,
    check_buckets,
    format_value,
    label_count_error,
    negative_increment,
)

__all__ = ["DEFAULT_BUCKETS", "Counter", "CounterChild", "Gauge", "GaugeChild", "Histogram", "HistogramChild"]

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, math.inf)
"""prometheus_client's defaults: a web or RPC request, from milliseconds to seconds."""


class CounterChild:
    """One counter series; ``inc`` is the hot path."""

    __slots__ = ("_labels", "_lock", "_value")

    def __init__(self, labels: LabelSet, lock: threading.Lock) -> None:
        self._labels = labels
        self._lock = lock
        self._value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Adds ``amount``, which must not be negative."""
        if amount < 0:
            raise negative_increment(amount)
        self._lock.acquire()  # not ``with``: that costs twice as much on Python 3.11
        try:
            self._value += amount
        finally:
            self._lock.release()

    def _samples(self, name: str) -> list[Sample]:
        return [(name + "_total", self._labels, self._value)]


class GaugeChild:
    """One gauge series."""

    __slots__ = ("_function", "_labels", "_lock", "_value")

    def __init__(self, labels: LabelSet, lock: threading.Lock) -> None:
        self._labels = labels
        self._lock = lock
        self._value = 0.0
        self._function: Callable[[], float] | None = None

    def set(self, value: float) -> None:
        """Sets the value."""
        with self._lock:
            self._value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        """Adds ``amount`` (may be negative)."""
        with self._lock:
            self._value += amount

    def dec(self, amount: float = 1.0) -> None:
        """Subtracts ``amount``."""
        self.inc(-amount)

    def set_function(self, function: Callable[[], float]) -> None:
        """Reports ``function()`` at each scrape instead of the stored value. It is called under the
        metric's lock, so it must not update this gauge."""
        self._function = function

    def _samples(self, name: str) -> list[Sample]:
        value = self._value if self._function is None else float(self._function())
        return [(name, self._labels, value)]


class HistogramChild:
    """One histogram series: a count per bucket (not cumulative until scraped) and the sum."""

    __slots__ = ("_bounds", "_bucket_labels", "_counts", "_labels", "_lock", "_sum")

    def __init__(self, labels: LabelSet, lock: threading.Lock, *, bounds: tuple[float, ...]) -> None:
        self._labels = labels
        self._lock = lock
        self._bounds = bounds
        self._bucket_labels = [LabelSet((*labels.pairs, ("le", format_value(b)))) for b in bounds]
        self._counts = [0] * len(bounds)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        """Counts ``value`` in the first bucket whose upper bound is at least ``value`` (NaN: +Inf)."""
        index = len(self._bounds) - 1 if math.isnan(value) else bisect_left(self._bounds, value)
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    def _samples(self, name: str) -> list[Sample]:
        samples: list[Sample] = []
        total = 0
        for labels, count in zip(self._bucket_labels, self._counts, strict=True):
            total += count
            samples.append((name + "_bucket", labels, float(total)))
        samples.append((name + "_count", self._labels, float(total)))
        samples.append((name + "_sum", self._labels, self._sum))
        return samples


class _Child(Protocol):
    def _samples(self, name: str) -> list[Sample]: ...


_ChildT = TypeVar("_ChildT", bound=_Child)


class _Metric(Generic[_ChildT]):
    """What the three metric types share: a child per label set and collection."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        *,
        registry: Registry,
        child: Callable[[LabelSet, threading.Lock], _ChildT],
        family: type[MetricFamily],
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = family(name, documentation, labelnames).labelnames  # validates the names
        self._lock = threading.Lock()
        self._child = child
        self._family = family
        self._children: dict[tuple[str, ...], _ChildT] = {}
        self._unlabelled = None if self._labelnames else child(NO_LABELS, self._lock)
        registry.register(self)

    def labels(self, *values: str, **by_name: str) -> _ChildT:
        """The series for one set of label values (in ``labelnames`` order, or by name), created on
        first use. Keep the child on a hot path: this lookup is the slow part."""
        if by_name:
            values = self._values_by_name(values, by_name)
        child = self._children.get(values)
        return self._new_child(values) if child is None else child

    def collect(self) -> list[MetricFamily]:
        """This metric's family with one series per label set (the ``Collector`` protocol)."""
        family = self._family(self._name, self._documentation, self._labelnames)
        with self._lock:
            children = list(self._children.values()) if self._unlabelled is None else [self._unlabelled]
            for child in children:
                family.samples += child._samples(family.name)
        return [family]

    def _only_child(self) -> _ChildT:
        if self._unlabelled is None:
            raise MetricsError(
                f"{self._kind()} {self._name!r} has labels ({', '.join(self._labelnames)})",
                hint="call .labels(...) first and update the child it returns",
            )
        return self._unlabelled

    def _kind(self) -> str:
        return type(self).__name__.lower()

    def _values_by_name(self, values: tuple[str, ...], by_name: dict[str, str]) -> tuple[str, ...]:
        if values or set(by_name) != set(self._labelnames):
            raise MetricsError(
                f"{self._kind()} {self._name!r} takes the labels ({', '.join(self._labelnames)}), "
                f"got {len(values)} by position and ({', '.join(by_name)}) by name",
                hint="pass every label value, either all by position or all by name",
            )
        return tuple(by_name[name] for name in self._labelnames)

    def _new_child(self, values: tuple[str, ...]) -> _ChildT:
        if not self._labelnames:
            raise MetricsError(
                f"{self._kind()} {self._name!r} has no labels", hint="update the metric itself, not .labels()"
            )
        if len(values) != len(self._labelnames):
            raise label_count_error(self._kind(), self._name, self._labelnames, len(values))
        if not all(isinstance(value, str) for value in values):
            raise MetricsError(
                f"label values of {self._name!r} must be strings, got {values!r}",
                hint="convert them with str()",
            )
        with self._lock:
            child = self._children.get(values)
            if child is None:
                labels = LabelSet(zip(self._labelnames, values, strict=True))
                child = self._children[values] = self._child(labels, self._lock)
        return child


class Counter(_Metric[CounterChild]):
    """A count that only goes up, exposed as ``<name>_total`` (a given ``_total`` is dropped first)."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str] = (), *, registry: Registry
    ) -> None:
        super().__init__(
            name, documentation, labelnames, registry=registry, child=CounterChild, family=CounterFamily
        )

    def inc(self, amount: float = 1.0) -> None:
        """Adds ``amount`` (not negative) to a counter without labels."""
        self._only_child().inc(amount)


class Gauge(_Metric[GaugeChild]):
    """A value that goes up and down, or is read from a function at scrape time."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str] = (), *, registry: Registry
    ) -> None:
        super().__init__(
            name, documentation, labelnames, registry=registry, child=GaugeChild, family=GaugeFamily
        )

    def set(self, value: float) -> None:
        """Sets a gauge without labels."""
        self._only_child().set(value)

    def inc(self, amount: float = 1.0) -> None:
        """Adds ``amount`` to a gauge without labels."""
        self._only_child().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        """Subtracts ``amount`` from a gauge without labels."""
        self._only_child().dec(amount)

    def set_function(self, function: Callable[[], float]) -> None:
        """Reports ``function()`` at each scrape (a gauge without labels; see ``GaugeChild``)."""
        self._only_child().set_function(function)


class Histogram(_Metric[HistogramChild]):
    """Observations counted in buckets by upper bound (``+Inf`` is added), with their sum and count."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        registry: Registry,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        bounds = check_buckets(name, buckets)
        super().__init__(
            name,
            documentation,
            labelnames,
            registry=registry,
            child=lambda labels, lock: HistogramChild(labels, lock, bounds=bounds),
            family=HistogramFamily,
        )

    def observe(self, value: float) -> None:
        """Counts ``value`` in a histogram without labels."""
        self._only_child().observe(value)
