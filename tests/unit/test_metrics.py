"""mesh.rt.metrics: our own exposition checked against prometheus_client's parser (an independent
reader of the text format), a golden text, promtool, and the errors a caller gets for misuse."""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterable
from types import SimpleNamespace
from typing import cast

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from mesh.rt.metrics import (
    CONTENT_TYPE,
    DEFAULT_BUCKETS,
    Counter,
    CounterFamily,
    Gauge,
    GaugeFamily,
    Histogram,
    LoopTasks,
    MetricFamily,
    MetricsError,
    Registry,
    build_registry,
    render,
)
from ztunnel.manager import WorkloadManager, WorkloadManagerMetrics

TRICKY = 'quote " backslash \\ newline \n brace } comma , unicode \u00fc'


def parsed(registry: Registry) -> dict[str, tuple[str, str, list[tuple[str, dict[str, str], float]]]]:
    """Family name -> (type, help, samples) as prometheus_client's parser reads our text."""
    return {
        family.name: (
            family.type,
            family.documentation,
            [(s.name, s.labels, s.value) for s in family.samples],
        )
        for family in text_string_to_metric_families(render(registry).decode())
    }


def reference_format(value: float) -> str:
    """prometheus_client's own text for a sample value."""
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


class Families:
    """A collector returning fixed families."""

    def __init__(self, families: Iterable[MetricFamily]) -> None:
        self.families = list(families)

    def collect(self) -> list[MetricFamily]:
        return self.families


def test_golden_text_of_a_small_registry() -> None:
    registry = build_registry(component="ztunnel", tag="1.2.3")
    Counter("requests", "Requests served.", ["code"], registry=registry).labels("200").inc(3)
    Gauge("temperature_celsius", "Now.", registry=registry).set(-1.5)
    latency = Histogram("latency_seconds", "Latency.", registry=registry, buckets=(0.1, 1))
    for value in (0.1, 0.5, 2):
        latency.observe(value)
    assert render(registry).decode() == (
        "# HELP istio_build Istio component build info\n"
        "# TYPE istio_build gauge\n"
        'istio_build{component="ztunnel",tag="1.2.3"} 1.0\n'
        "# HELP requests_total Requests served.\n"
        "# TYPE requests_total counter\n"
        'requests_total{code="200"} 3.0\n'
        "# HELP temperature_celsius Now.\n"
        "# TYPE temperature_celsius gauge\n"
        "temperature_celsius -1.5\n"
        "# HELP latency_seconds Latency.\n"
        "# TYPE latency_seconds histogram\n"
        'latency_seconds_bucket{le="0.1"} 1.0\n'
        'latency_seconds_bucket{le="1.0"} 2.0\n'
        'latency_seconds_bucket{le="+Inf"} 3.0\n'
        "latency_seconds_count 3.0\n"
        "latency_seconds_sum 2.6\n"
    )
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_counters_and_gauges_round_trip_through_prometheus_clients_parser() -> None:
    registry = Registry()
    requests = Counter("http_requests_total", "Requests.", ["method", "code"], registry=registry)
    requests.labels("GET", "200").inc()
    requests.labels(code="500", method="POST").inc(2.5)
    requests.labels("GET", "200").inc(4)
    Counter("errors", "Errors.", registry=registry)  # unlabelled: exposed at 0 from the start
    Counter("unused", "Labelled, never used.", ["x"], registry=registry)
    queue = Gauge("queue_depth", "Depth.", registry=registry)
    queue.inc(5)
    queue.dec(2)
    Gauge("connected", "Read at scrape time.", registry=registry).set_function(lambda: 7)
    assert parsed(registry) == {
        "http_requests": (
            "counter",
            "Requests.",
            [
                ("http_requests_total", {"method": "GET", "code": "200"}, 5.0),
                ("http_requests_total", {"method": "POST", "code": "500"}, 2.5),
            ],
        ),
        "errors": ("counter", "Errors.", [("errors_total", {}, 0.0)]),
        "unused": ("counter", "Labelled, never used.", []),
        "queue_depth": ("gauge", "Depth.", [("queue_depth", {}, 3.0)]),
        "connected": ("gauge", "Read at scrape time.", [("connected", {}, 7.0)]),
    }


def test_histograms_are_cumulative_with_le_inclusive_and_inf() -> None:
    registry = Registry()
    push = Histogram("push_seconds", "Push time.", ["type"], registry=registry, buckets=(0.5, 1.0, 5.0))
    for value in (0.5, 0.7, 1.0, 9.0, math.nan):  # a bound counts in its own bucket; NaN in +Inf
        push.labels("Address").observe(value)
    kind, _, samples = parsed(registry)["push_seconds"]
    assert kind == "histogram"
    by_name = {(name, labels.get("le", "")): value for name, labels, value in samples}
    assert {key: value for key, value in by_name.items() if key[0] != "push_seconds_sum"} == {
        ("push_seconds_bucket", "0.5"): 1.0,
        ("push_seconds_bucket", "1.0"): 3.0,
        ("push_seconds_bucket", "5.0"): 3.0,
        ("push_seconds_bucket", "+Inf"): 5.0,
        ("push_seconds_count", ""): 5.0,
    }
    assert math.isnan(by_name["push_seconds_sum", ""])
    assert all(labels["type"] == "Address" for _, labels, _ in samples)


def test_histogram_default_buckets_are_prometheus_clients() -> None:
    registry = Registry()
    Histogram("rpc_seconds", "RPCs.", registry=registry).observe(0.3)
    les = [labels["le"] for name, labels, _ in parsed(registry)["rpc_seconds"][2] if name.endswith("_bucket")]
    assert les == [reference_format(b) for b in prometheus_client.Histogram.DEFAULT_BUCKETS]
    assert DEFAULT_BUCKETS == prometheus_client.Histogram.DEFAULT_BUCKETS


def test_tricky_label_values_and_help_text_round_trip() -> None:
    registry = Registry()
    doc = "Help with a backslash \\ and a\nnewline."
    Counter("tricky", doc, ["value"], registry=registry).labels(TRICKY).inc()
    text = render(registry).decode()
    assert "# HELP tricky_total Help with a backslash \\\\ and a\\nnewline.\n" in text
    assert '{value="quote \\" backslash \\\\ newline \\n brace } comma , unicode \u00fc"}' in text
    assert parsed(registry) == {"tricky": ("counter", doc, [("tricky_total", {"value": TRICKY}, 1.0)])}


@pytest.mark.parametrize(
    "value",
    [
        0,
        1,
        -1,
        0.1,
        1.5,
        2**53,
        1e6,
        1234567.0,
        12345678.0,
        123456789.25,
        1e16,
        1e-7,
        -1e22,
        math.inf,
        -math.inf,
    ],
)
def test_values_are_formatted_as_prometheus_client_formats_them(value: float) -> None:
    registry = Registry()
    Gauge("g", "G.", registry=registry).set(value)
    sample_line = render(registry).decode().splitlines()[-1]
    assert sample_line == f"g {reference_format(value)}"
    assert parsed(registry)["g"][2] == [("g", {}, float(value))]


def test_nan_is_written_as_NaN() -> None:
    registry = Registry()
    Gauge("g", "G.", registry=registry).set(math.nan)
    assert render(registry).decode().splitlines()[-1] == "g NaN"


def test_labels_by_position_and_by_name_are_the_same_series() -> None:
    counter = Counter("c", "C.", ["a", "b"], registry=Registry())
    assert counter.labels("1", "2") is counter.labels(b="2", a="1")
    assert counter.labels("1", "2") is not counter.labels("2", "1")


def test_a_given_total_suffix_is_not_doubled() -> None:
    registry = Registry()
    Counter("bytes_total", "Bytes.", registry=registry).inc(10)
    Counter("literally_total_total", "Odd, as in prometheus_client.", registry=registry)
    assert registry.get_sample_value("bytes_total") == 10
    assert registry.get_sample_value("literally_total_total") == 0
    assert "bytes_total_total" not in render(registry).decode()


def test_get_sample_value() -> None:
    registry = build_registry(component="istiod")
    Counter("pushes", "Pushes.", ["type"], registry=registry).labels("Address").inc(2)
    Histogram("t_seconds", "T.", registry=registry, buckets=(1,)).observe(0.5)
    assert registry.get_sample_value("istio_build", {"component": "istiod", "tag": "0.1.0"}) == 1
    assert registry.get_sample_value("pushes_total", {"type": "Address"}) == 2
    assert registry.get_sample_value("pushes_total", {"type": "Cluster"}) is None
    assert registry.get_sample_value("pushes_total") is None, "labels must match exactly"
    assert registry.get_sample_value("pushes") is None, "the exposed name is pushes_total"
    assert registry.get_sample_value("t_seconds_bucket", {"le": "1.0"}) == 1
    assert registry.get_sample_value("t_seconds_sum") == 0.5


def test_scrape_time_collectors_are_read_at_each_scrape() -> None:
    registry = Registry()
    seen = [0]

    class Reads:
        def collect(self) -> list[MetricFamily]:
            seen[0] += 1
            started = CounterFamily("proxies_started_total", "Started.", ["node"])
            started.add_metric(["n1"], seen[0])
            up = GaugeFamily("up", "Up.")
            up.add_metric((), 1)
            return [started, up]

    registry.register(Reads())
    assert parsed(registry) == {
        "proxies_started": ("counter", "Started.", [("proxies_started_total", {"node": "n1"}, 2.0)]),
        "up": ("gauge", "Up.", [("up", {}, 1.0)]),
    }


def test_workload_manager_metrics_read_the_managers_counts() -> None:
    registry = Registry()
    manager = cast(WorkloadManager, SimpleNamespace(proxies_started=3, proxies_stopped=1))
    registry.register(WorkloadManagerMetrics(manager))
    assert registry.get_sample_value("workload_manager_proxies_started_total") == 3
    assert registry.get_sample_value("workload_manager_proxies_stopped_total") == 1


def test_loop_tasks_counts_the_tasks_not_yet_done_at_each_scrape() -> None:
    async def scenario() -> list[float | None]:
        registry = Registry()
        registry.register(LoopTasks(asyncio.get_running_loop(), "proxy_event_loop_tasks"))
        seen = [registry.get_sample_value("proxy_event_loop_tasks")]  # this coroutine's own task
        gate = asyncio.Event()
        waiting = [asyncio.create_task(gate.wait()) for _ in range(3)]
        seen.append(registry.get_sample_value("proxy_event_loop_tasks"))
        gate.set()
        await asyncio.gather(*waiting)
        seen.append(registry.get_sample_value("proxy_event_loop_tasks"))
        return seen

    assert asyncio.run(scenario()) == [1, 4, 1]


@pytest.mark.parametrize("name", ["", "1abc", "a-b", "a b", "caf\u00e9", "a.b"])
def test_bad_metric_names_are_refused_by_name(name: str) -> None:
    for make in (Counter, Gauge, Histogram):
        with pytest.raises(MetricsError, match=f"invalid metric name {name!r}"):
            make(name, "Doc.", registry=Registry())
    with pytest.raises(MetricsError, match=f"invalid metric name {name!r}"):
        GaugeFamily(name, "Doc.")


@pytest.mark.parametrize("label", ["", "1a", "a-b", "__reserved", "a:b"])
def test_bad_label_names_are_refused_by_name(label: str) -> None:
    with pytest.raises(MetricsError, match=f"invalid label name {label!r} on metric 'm'"):
        Counter("m", "Doc.", ["ok", label], registry=Registry())


def test_le_is_reserved_on_histograms_only() -> None:
    with pytest.raises(MetricsError, match=r"invalid label name 'le'.*le is reserved"):
        Histogram("m", "Doc.", ["le"], registry=Registry())
    Gauge("m", "Doc.", ["le"], registry=Registry())


@pytest.mark.parametrize(
    ("labelnames", "message"),
    [
        ("type", "labelnames of 'm' is the string 'type'"),
        (["a", "a"], "names a label twice"),
    ],
)
def test_malformed_label_name_lists_are_refused(labelnames: list[str], message: str) -> None:
    with pytest.raises(MetricsError, match=message):
        Counter("m", "Doc.", labelnames, registry=Registry())


def test_wrong_label_values_are_refused_with_the_label_names() -> None:
    counter = Counter("m", "Doc.", ["a", "b"], registry=Registry())
    with pytest.raises(MetricsError, match=r"counter 'm' takes 2 label values \(a, b\), got 1"):
        counter.labels("x")
    with pytest.raises(MetricsError, match="got 3"):
        counter.labels("x", "y", "z")
    with pytest.raises(MetricsError, match=r"takes the labels \(a, b\), got 0 by position and \(a, c\)"):
        counter.labels(a="x", c="y")
    with pytest.raises(MetricsError, match="all by position or all by name"):
        counter.labels("x", b="y")
    with pytest.raises(MetricsError, match="must be strings"):
        counter.labels("x", 1)  # type: ignore[arg-type]
    with pytest.raises(MetricsError, match=r"counter 'm' has labels \(a, b\).*call .labels"):
        counter.inc()
    with pytest.raises(MetricsError, match="gauge 'g' has no labels"):
        Gauge("g", "Doc.", registry=Registry()).labels()
    family = CounterFamily("f", "Doc.", ["a"])
    with pytest.raises(MetricsError, match=r"counter 'f' takes 1 label values \(a\), got 0"):
        family.add_metric((), 1)


def test_counters_refuse_to_go_down() -> None:
    counter = Counter("m", "Doc.", ["a"], registry=Registry())
    for inc in (counter.labels("x").inc, Counter("n", "Doc.", registry=Registry()).inc):
        with pytest.raises(MetricsError, match="counter increment -1 is negative"):
            inc(-1)
    with pytest.raises(ValueError, match="negative"):  # a MetricsError is a ValueError
        CounterFamily("f", "Doc.").add_metric((), -0.5)


@pytest.mark.parametrize(
    ("first", "second", "clash"),
    [
        (lambda r: Counter("x", "D.", registry=r), lambda r: Gauge("x", "D.", registry=r), "x"),
        (lambda r: Counter("x", "D.", registry=r), lambda r: Counter("x_total", "D.", registry=r), "x"),
        (lambda r: Counter("x", "D.", registry=r), lambda r: Gauge("x_total", "D.", registry=r), "x_total"),
        (lambda r: Histogram("h", "D.", registry=r), lambda r: Gauge("h_count", "D.", registry=r), "h_count"),
        (
            lambda r: r.register(Families([GaugeFamily("up", "D.")])),
            lambda r: Gauge("up", "D.", ["a"], registry=r),
            "up",
        ),
        (
            lambda r: None,
            lambda r: r.register(Families([GaugeFamily("u", "D."), GaugeFamily("u", "D.")])),
            "u",
        ),
    ],
)
def test_a_name_registered_twice_is_refused(
    first: Callable[[Registry], object], second: Callable[[Registry], object], clash: str
) -> None:
    registry = build_registry(component="ztunnel")
    first(registry)
    with pytest.raises(MetricsError, match=f"metric name '{clash}' is already registered"):
        second(registry)
    with pytest.raises(MetricsError, match="'istio_build' is already registered"):
        Gauge("istio_build", "Again.", registry=registry)


@pytest.mark.parametrize("buckets", [(1.0, 0.5), (0.5, 0.5, 1.0), (), (math.inf,)])
def test_bad_buckets_are_refused(buckets: tuple[float, ...]) -> None:
    with pytest.raises(MetricsError, match="'h'"):
        Histogram("h", "Doc.", registry=Registry(), buckets=buckets)


def test_threads_neither_lose_counts_nor_duplicate_series() -> None:
    registry = Registry()
    counter = Counter("c", "C.", ["worker"], registry=registry)
    shared = Counter("shared", "S.", registry=registry)

    def work(n: int) -> None:
        for _ in range(20_000):
            shared.inc()
            counter.labels(str(n % 2)).inc(0.5)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert registry.get_sample_value("shared_total") == 80_000
    assert parsed(registry)["c"][2] == [
        ("c_total", {"worker": "0"}, 20_000.0),
        ("c_total", {"worker": "1"}, 20_000.0),
    ]


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool comes with 'make test' (Debian prometheus)"
)
def test_every_metric_type_passes_promtool() -> None:
    registry = build_registry(component="ztunnel")
    Counter("requests_total", "Requests.", ["code"], registry=registry).labels("200").inc()
    Counter("restarts_total", "Restarts.", registry=registry)
    Gauge("queue_length", "Queue.", ["queue"], registry=registry).labels(TRICKY).set(3)
    Gauge("connected_clients", "Clients.", registry=registry).set_function(lambda: 2)
    Histogram("push_duration_seconds", "Push.", ["type"], registry=registry).labels("Address").observe(0.2)
    Histogram("build_duration_seconds", "Build.", registry=registry, buckets=(0.5, 1e7)).observe(3e7)
    started = CounterFamily("proxies_started_total", "Started.")
    started.add_metric((), 12345678)
    up = GaugeFamily("ready_state", "Ready,\nor \\ not.", ["node"])
    up.add_metric(["n1"], 1)
    registry.register(Families([started, up]))
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=render(registry), capture_output=True, timeout=20, check=False
    )
    assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()
