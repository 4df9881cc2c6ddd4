"""The waypoint process (local Envoy config) between real clients and real servers: a connection
pool of 10 under 100 concurrent requests answers the overflow 503 UO at once and keeps the admitted
ones fast; outlier detection ejects a failing backend and success recovers to 100 %, the backend
coming back after its ejection; the retry budget caps extra attempts in a total outage; a local
rate limit of 10/s holds over 10 s with its x-ratelimit headers."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mesh.testing.ports import free_port
from tests.component.test_waypoint_local import cluster, httpecho, local_waypoint

pytestmark = pytest.mark.timeout(180)

ROUTES = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
RATE_LIMIT = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
ALL = {"default_value": {"numerator": 100}}
OUTLIER = {"consecutive_5xx": 3, "interval": "1s", "base_ejection_time": "3s", "max_ejection_percent": 50}


@dataclass
class Failing:
    """A server answering 503 to everything after ``delay`` seconds, counting the attempts."""

    delay: float = 0.0
    attempts: int = 0
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> http.server.ThreadingHTTPServer:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with owner.lock:
                    owner.attempts += 1
                time.sleep(owner.delay)
                self.send_response(503)
                self.send_header("content-length", "4")
                self.end_headers()
                self.wfile.write(b"down")

            def log_message(self, *_: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


def with_policy(base: dict[str, Any], **policy: Any) -> dict[str, Any]:
    return {**base, **policy}


def config(echo: int, failing: int, slow_failing: int) -> dict[str, Any]:
    def host(name: str, route: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "domains": [name],
            "routes": [{"match": {"prefix": "/"}, "route": route, **extra}],
        }

    retry = {"retry_on": "5xx", "num_retries": 5, "retry_back_off": {"base_interval": "0.01s"}}
    limit = {"@type": RATE_LIMIT, "stat_prefix": "limited", "filter_enabled": ALL, "filter_enforced": ALL,
             "token_bucket": {"max_tokens": 10, "tokens_per_fill": 10, "fill_interval": "1s"},
             "enable_x_ratelimit_headers": "DRAFT_VERSION_03"}  # fmt: skip
    routes = {
        "@type": ROUTES, "name": "waypoint",
        "virtual_hosts": [
            host("pool", {"cluster": "pool"}),
            host("outlier", {"cluster": "outlier"}),
            host("outage", {"cluster": "outage", "retry_policy": retry}),
            host("outage-unbudgeted", {"cluster": "outage-unbudgeted", "retry_policy": retry}),
            host("limited", {"cluster": "echo"},
                 typed_per_filter_config={"envoy.filters.http.local_ratelimit": limit}),
        ],
    }  # fmt: skip
    unlimited = {"max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000}
    return {
        "resources": [
            routes,
            cluster("echo", echo),
            with_policy(cluster("pool", echo), circuit_breakers={"thresholds": [
                {"max_connections": 10, "max_pending_requests": 1}]}),
            with_policy(cluster("outlier", echo, failing), lb_policy="ROUND_ROBIN",
                        outlier_detection=OUTLIER),
            with_policy(cluster("outage", slow_failing), circuit_breakers={"thresholds": [
                {**unlimited, "max_retries": 100000}]}),
            with_policy(cluster("outage-unbudgeted", slow_failing), circuit_breakers={"thresholds": [
                {**unlimited, "max_retries": 100000,
                 "retry_budget": {"budget_percent": {"value": 100}, "min_retry_concurrency": 100000}}]}),
        ]
    }  # fmt: skip


@dataclass
class Running:
    port: int
    failing: Failing
    slow: Failing


@pytest.fixture(scope="module")
def waypoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp: Path = tmp_path_factory.mktemp("resilience")
    echo_port, port = free_port(), free_port()
    failing, slow = Failing(), Failing(delay=0.05)
    servers = [failing.start(), slow.start()]
    try:
        with (
            httpecho(echo_port),
            local_waypoint(tmp, config(echo_port, failing.port, slow.port), http=f"127.0.0.1:{port}"),
        ):
            yield Running(port, failing, slow)
    finally:
        for server in servers:
            server.shutdown()


async def get(
    session: aiohttp.ClientSession, port: int, host: str, path: str = "/"
) -> tuple[int, str, float]:
    started = time.monotonic()
    async with session.get(f"http://127.0.0.1:{port}{path}", headers={"Host": host}) as response:
        body = await response.text()
        return response.status, body, time.monotonic() - started


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))


async def test_a_pool_of_10_answers_the_overflow_503_uo_at_once(waypoint: Running) -> None:
    async with session() as client:
        answers = await asyncio.gather(
            *(get(client, waypoint.port, "pool", "/delay/0.5") for _ in range(100))
        )
    admitted = [a for a in answers if a[0] == 200]
    overflow = [a for a in answers if a[0] == 503]
    assert len(admitted) + len(overflow) == 100
    assert 10 <= len(admitted) <= 21, f"{len(admitted)} admitted"  # 10 in flight, 1 waiting (+ late ones)
    assert all("overflow" in body for _, body, _ in overflow)
    assert max(seconds for _, _, seconds in overflow) < 0.5  # refused at once, never queued
    assert max(seconds for _, _, seconds in admitted) < 2.0  # at most one wait of 0.5 s ahead of them


async def test_outlier_detection_ejects_the_failing_backend_and_lets_it_back(waypoint: Running) -> None:
    async with session() as client:
        first = [(await get(client, waypoint.port, "outlier"))[0] for _ in range(20)]
        assert first.count(503) == 3, first  # three in a row on the failing one, then it is out
        assert first[-10:] == [200] * 10
        attempts = waypoint.failing.attempts
        await asyncio.sleep(4.5)  # base ejection time (3 s) and one interval (1 s)
        later = [(await get(client, waypoint.port, "outlier"))[0] for _ in range(10)]
    assert waypoint.failing.attempts > attempts and 503 in later  # it came back (and fails again)


async def sustained(port: int, host: str, workers: int, seconds: float) -> list[int]:
    """``workers`` clients each sending requests one after another for ``seconds``: the statuses."""
    statuses: list[int] = []
    deadline = time.monotonic() + seconds

    async def worker(client: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            statuses.append((await get(client, port, host))[0])

    async with session() as client:
        await asyncio.gather(*(worker(client) for _ in range(workers)))
    return statuses


async def test_the_retry_budget_caps_extra_attempts_in_a_total_outage(waypoint: Running) -> None:
    before = waypoint.slow.attempts
    budgeted = await sustained(waypoint.port, "outage", 20, 3.0)
    with_budget = waypoint.slow.attempts - before
    before = waypoint.slow.attempts
    unbudgeted = await sustained(waypoint.port, "outage-unbudgeted", 20, 3.0)
    without_budget = waypoint.slow.attempts - before
    assert set(budgeted) == set(unbudgeted) == {503}
    assert without_budget == 6 * len(unbudgeted)  # every request tried 1 + 5 times
    # 20 requests in flight: at most 4 retries at once (20 %), so about 1.25 attempts per request,
    # a little more as the first tries pause between requests (a request is active, as Envoy's
    # rq_active, until its response went to the client whole): 1.25-1.4 measured
    assert with_budget <= 1.5 * len(budgeted), f"{with_budget} attempts for {len(budgeted)} requests"


async def test_a_local_rate_limit_holds_10_per_second_over_10_seconds(waypoint: Running) -> None:
    ok = limited = 0
    headers: dict[str, str] = {}
    async with aiohttp.ClientSession() as client:
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            async with client.get(
                f"http://127.0.0.1:{waypoint.port}/", headers={"Host": "limited"}
            ) as response:
                await response.read()
                if response.status == 200:
                    ok += 1
                else:
                    limited += 1
                    headers = {k.lower(): v for k, v in response.headers.items()}
                    assert response.status == 429
            await asyncio.sleep(0.005)
    assert 90 <= ok <= 110, f"{ok} allowed in 10 s"
    assert limited > ok and headers["x-ratelimit-limit"] == "10" and headers["x-ratelimit-remaining"] == "0"
