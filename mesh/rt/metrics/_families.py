"""Metric families, the registry and the text exposition format 0.0.4 (see :mod:`mesh.rt.metrics`)."""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import ClassVar, Protocol

from mesh.errors import MeshError

__all__ = [
    "NO_LABELS",
    "Collector",
    "CounterFamily",
    "GaugeFamily",
    "HistogramFamily",
    "LabelSet",
    "MetricFamily",
    "MetricsError",
    "Registry",
    "Sample",
    "check_buckets",
    "format_value",
    "label_count_error",
    "negative_increment",
    "render",
]

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class MetricsError(MeshError, ValueError):
    """A metric defined or used wrongly: a bad name, wrong label values, a negative increment, or a
    name registered twice in one registry."""


class LabelSet:
    """One series' label pairs, sorted by name as prometheus_client prints them, and their text."""

    __slots__ = ("pairs", "text")

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self.pairs = tuple(sorted(pairs))
        inner = ",".join(f'{name}="{escape_label_value(value)}"' for name, value in self.pairs)
        self.text = f"{{{inner}}}" if inner else ""


NO_LABELS = LabelSet(())
Sample = tuple[str, LabelSet, float]


class MetricFamily:
    """One metric's series at one scrape, as a ``Collector`` returns them: ``samples`` holds
    (exposed name, label set, value) per series."""

    kind: ClassVar[str] = "untyped"
    _suffixes: ClassVar[tuple[str, ...]] = ("",)
    """Suffixes of the names the family takes in a registry ("" is the family name itself)."""
    _header_suffix: ClassVar[str] = ""
    _reserved_labels: ClassVar[tuple[str, ...]] = ()

    __slots__ = ("documentation", "labelnames", "name", "samples")

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        self.name = check_metric_name(name)
        self.documentation = documentation
        self.labelnames = check_label_names(name, labelnames, reserved=self._reserved_labels)
        self.samples: list[Sample] = []

    def names(self) -> list[str]:
        """Every name this family takes in a registry (a second family may not reuse one)."""
        return [self.name + suffix for suffix in self._suffixes]

    def _add(self, suffix: str, label_values: Sequence[str], value: float) -> None:
        if len(label_values) != len(self.labelnames):
            raise label_count_error(self.kind, self.name, self.labelnames, len(label_values))
        labels = LabelSet(zip(self.labelnames, label_values, strict=True)) if label_values else NO_LABELS
        self.samples.append((self.name + suffix, labels, float(value)))


class CounterFamily(MetricFamily):
    """A counter read at scrape time, exposed as ``<name>_total`` (a given ``_total`` is dropped first)."""

    kind = "counter"
    _suffixes = ("", "_total")
    _header_suffix = "_total"

    __slots__ = ()

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name.removesuffix("_total"), documentation, labelnames)

    def add_metric(self, label_values: Sequence[str], value: float) -> None:
        """One series: its label values in ``labelnames`` order and its count (not negative)."""
        if value < 0:
            raise negative_increment(value)
        self._add("_total", label_values, value)


class GaugeFamily(MetricFamily):
    """A gauge read at scrape time."""

    kind = "gauge"

    __slots__ = ()

    def add_metric(self, label_values: Sequence[str], value: float) -> None:
        """One series: its label values in ``labelnames`` order and its value."""
        self._add("", label_values, value)


class HistogramFamily(MetricFamily):
    kind = "histogram"
    _suffixes = ("", "_bucket", "_count", "_sum")
    _reserved_labels = ("le",)

    __slots__ = ()


class Collector(Protocol):
    """Anything that produces metric families at scrape time, e.g. counts kept by another object."""

    def collect(self) -> Iterable[MetricFamily]:
        """The families as of now."""
        ...


class Registry:
    """The collectors one process (or one test) exposes, in registration order."""

    __slots__ = ("_collectors", "_lock", "_names")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._collectors: list[Collector] = []
        self._names: set[str] = set()

    def register(self, collector: Collector) -> None:
        """Adds ``collector``, collecting it once to refuse a name some family already takes."""
        names = [name for family in collector.collect() for name in family.names()]
        with self._lock:
            taken = set(self._names)
            for name in names:
                if name in taken:
                    raise MetricsError(
                        f"metric name {name!r} is already registered in this registry",
                        hint="create each metric once per registry and pass it to its users",
                    )
                taken.add(name)
            self._names = taken
            self._collectors.append(collector)

    def collect(self) -> Iterator[MetricFamily]:
        """Every registered collector's families, in registration order."""
        with self._lock:
            collectors = list(self._collectors)
        for collector in collectors:
            yield from collector.collect()

    def get_sample_value(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """The value of the sample exposed as ``name`` (e.g. ``x_total``, ``x_bucket``) with exactly
        ``labels``, or None. A linear scan, meant for tests."""
        wanted = tuple(sorted((labels or {}).items()))
        for family in self.collect():
            for sample_name, label_set, value in family.samples:
                if sample_name == name and label_set.pairs == wanted:
                    return value
        return None


def render(registry: Registry) -> bytes:
    """The registry in the Prometheus text exposition format 0.0.4 (serve it as ``CONTENT_TYPE``)."""
    lines: list[str] = []
    for family in registry.collect():
        name = family.name + family._header_suffix
        help_text = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        lines.append(f"# HELP {name} {help_text}\n# TYPE {name} {family.kind}\n")
        lines.extend(
            f"{sample}{labels.text} {format_value(value)}\n" for sample, labels, value in family.samples
        )
    return "".join(lines).encode()


def format_value(value: float) -> str:
    """A sample value as prometheus_client (and Go) print it: ``1.0``, ``+Inf``, ``NaN``, ``1.5e+07``."""
    value = float(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to an exponent sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def check_metric_name(name: str) -> str:
    if not _METRIC_NAME.fullmatch(name):
        raise MetricsError(
            f"invalid metric name {name!r}",
            hint="use ASCII letters, digits, '_' and ':', not a leading digit",
        )
    return name


def check_label_names(metric: str, names: Sequence[str], *, reserved: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(names, str):
        raise MetricsError(
            f"labelnames of {metric!r} is the string {names!r}",
            hint=f"pass a list of names, e.g. [{names!r}]",
        )
    for label in names:
        if not _LABEL_NAME.fullmatch(label) or label.startswith("__") or label in reserved:
            raise MetricsError(
                f"invalid label name {label!r} on metric {metric!r}",
                hint="use ASCII letters, digits and '_', not a leading digit or '__'"
                + (f"; {', '.join(reserved)} is reserved" if reserved else ""),
            )
    if len(set(names)) != len(names):
        raise MetricsError(
            f"metric {metric!r} names a label twice: {', '.join(names)}", hint="name each once"
        )
    return tuple(names)


def check_buckets(metric: str, buckets: Sequence[float]) -> tuple[float, ...]:
    bounds = [float(b) for b in buckets]
    if bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
        raise MetricsError(f"buckets of {metric!r} are not strictly increasing: {bounds}", hint="sort them")
    if not bounds or bounds[-1] != math.inf:
        bounds.append(math.inf)
    if len(bounds) < 2:
        raise MetricsError(f"histogram {metric!r} has no bucket but +Inf", hint="give at least one bound")
    return tuple(bounds)


def negative_increment(amount: float) -> MetricsError:
    return MetricsError(
        f"counter increment {amount} is negative",
        hint="counters only go up; use a Gauge for a value that falls",
    )


def label_count_error(kind: str, metric: str, labelnames: Sequence[str], got: int) -> MetricsError:
    return MetricsError(
        f"{kind} {metric!r} takes {len(labelnames)} label values ({', '.join(labelnames)}), got {got}",
        hint="pass one value per label name, in that order",
    )
