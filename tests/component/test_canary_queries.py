"""The canary's PromQL against a real Prometheus (the Debian package the lab runs) scraping counters
this test serves: the new version's requests, 5xx and latency buckets are counted over a step
exactly, a series first scraped inside the step (the first 503) and a counter that went back (a
restarted waypoint) included, where ``increase()`` loses them, and a step that begins just after
a failed scrape (every series marked stale) is not counted from zero."""

from __future__ import annotations

import asyncio
import math
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from mesh.testing.polling import wait_until_blocking
from mesh.testing.ports import free_port
from mesh.testing.processes import stop_process
from meshctl.canary_plan import RouteRef, signal_queries
from meshctl.dashboard.sources import Endpoint, Prometheus, SourceError
from meshctl.lab.observability import PROMETHEUS_BINARY

pytestmark = pytest.mark.timeout(60)

V2 = RouteRef("VirtualService", "web", 0, {"destination_version": "v2"})
WAYPOINT_V2 = 'reporter="waypoint",destination_version="v2"'


@dataclass
class Exposition:
    """The /metrics text the scraped target answers, replaced by the test."""

    text: str = ""
    failing: bool = False
    """Answer 503: Prometheus's scrape fails and it marks every series of the target stale."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, counters: Mapping[str, float]) -> None:
        lines = [
            "# TYPE istio_requests_total counter",
            "# TYPE istio_request_duration_milliseconds histogram",
        ]
        lines += [f"{series} {value:g}" for series, value in counters.items()]
        with self.lock:
            self.text = "\n".join(lines) + "\n"


def requests(code: int, version: str = "v2") -> str:
    labels = f'reporter="waypoint",destination_version="{version}",response_code="{code}"'
    return f"istio_requests_total{{{labels}}}"


def bucket(le: str) -> str:
    return f'istio_request_duration_milliseconds_bucket{{{WAYPOINT_V2},response_code="200",le="{le}"}}'


@pytest.fixture
def exposition() -> Iterator[tuple[Exposition, int]]:
    served = Exposition()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with served.lock:
                body, failing = served.text.encode(), served.failing
            if failing:
                self.send_error(503)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            del format, args

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def prometheus(tmp_path: Path, exposition: tuple[Exposition, int]) -> Iterator[Prometheus]:
    _, target_port = exposition
    config = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [
            {"job_name": "waypoint", "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (tmp_path / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [PROMETHEUS_BINARY, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield Prometheus(Endpoint(f"http://127.0.0.1:{port}"))
    finally:
        stop_process(process)


def scraped(client: Prometheus, series: str, value: float) -> bool:
    """Prometheus's latest sample of ``series`` is ``value`` (it was scraped since it was set)."""
    try:
        found = asyncio.run(client.query(series))
    except SourceError:  # not answering yet: keep polling
        return False
    return any(s.value == value for s in found)


def test_a_step_counts_new_and_restarted_series_in_full(
    prometheus: Prometheus, exposition: tuple[Exposition, int]
) -> None:
    served, _ = exposition
    # Before the step: v2 answered 10 (200), a 504 counter that its waypoint will lose, and v1.
    before = {requests(200): 10, requests(504): 100, requests(200, "v1"): 500,
              bucket("10"): 8, bucket("100"): 10, bucket("+Inf"): 10}  # fmt: skip
    served.set(before)
    wait_until_blocking(lambda: scraped(prometheus, requests(200), 10), within=30, what="the first scrape")
    time.sleep(2.5)  # more samples of the values before the step
    served.failing = True
    wait_until_blocking(
        lambda: scraped(prometheus, 'up{job="waypoint"}', 0), within=10, what="a failed scrape"
    )
    time.sleep(1.5)  # the step begins while the series are marked stale
    step_started = time.monotonic()
    served.failing = False
    # The step: 30 more 200s, the first 6 503s (a series born now), the 504 counter restarted at 3.
    served.set({**before, requests(200): 40, requests(503): 6, requests(504): 3, requests(200, "v1"): 900,
                bucket("10"): 20, bucket("100"): 38, bucket("+Inf"): 40})  # fmt: skip
    wait_until_blocking(lambda: scraped(prometheus, requests(503), 6), within=10, what="the step's scrape")
    time.sleep(2.5)  # a later scrape with the same values: nothing new after the first 503s
    window = math.ceil(time.monotonic() - step_started)

    queries = signal_queries(V2, window)
    answered = asyncio.run(prometheus.query(queries["requests"]))
    failed = asyncio.run(prometheus.query(queries["errors"]))
    buckets = asyncio.run(prometheus.query(queries["buckets"]))

    assert [s.value for s in answered] == [30 + 6 + 3]
    assert [s.value for s in failed] == [6 + 3]
    assert {s.labels["le"]: s.value for s in buckets} == {"10": 12, "100": 28, "+Inf": 30}
    # What rate()/increase() would have made of it: the 503s, all in the series' first sample, are lost.
    first_503s = f'istio_requests_total{{{WAYPOINT_V2},response_code="503"}}'
    lost = asyncio.run(prometheus.query(f"sum(increase({first_503s}[{window}s]))"))
    assert [s.value for s in lost] == [0]
