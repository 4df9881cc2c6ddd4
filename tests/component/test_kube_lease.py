"""Leader election on a coordination.k8s.io Lease (mesh.rt.kube.lease), against ``kmock``: a test
double of the Kubernetes API server, here with the API server's optimistic concurrency added
(kmock_concurrency.py: resourceVersions, 409 on a stale write, PUT). Time is a fake clock; the
electors' sleeps advance it, so no test waits for a lease to expire."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import structlog
from kubernetes import client
from structlog.testing import capture_logs

from mesh.rt.election import ElectionSettings, Leadership, run_while_leading
from mesh.rt.kube.lease import LeaseElector
from mesh.testing.clock import FakeClock, VirtualTime
from mesh.testing.polling import wait_until
from tests.component.kmock_concurrency import ConcurrentEmulator

pytestmark = [pytest.mark.kmock(cls=ConcurrentEmulator), pytest.mark.timeout(30)]

LEASES = "coordination.k8s.io/v1/leases"
KEY = (LEASES, "istio-system", "istiod-lite-leader")
SETTINGS = ElectionSettings()  # istiod's 30 s / 15 s / 7.5 s


@pytest.fixture
def server(kmock: ConcurrentEmulator) -> ConcurrentEmulator:
    kmock.resources[LEASES] = kmock.ResourceInfo(kind="Lease", namespaced=True)
    return kmock


@pytest.fixture
def api(server: ConcurrentEmulator) -> Iterator[client.ApiClient]:
    api = client.ApiClient(client.Configuration(host=str(server.url).rstrip("/")))
    yield api
    api.close()  # type: ignore[no-untyped-call]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def time(clock: FakeClock) -> AsyncIterator[VirtualTime]:
    """The electors' sleeps, on the fake clock (one elector unless a test says more)."""
    virtual = VirtualTime(clock)
    driver = asyncio.create_task(virtual.run())
    yield virtual
    driver.cancel()
    await asyncio.gather(driver, return_exceptions=True)


def elector(api: Any, clock: FakeClock, identity: str, time: VirtualTime | None = None) -> LeaseElector:
    leadership = Leadership(lease=KEY[2], identity=identity, logger=structlog.get_logger())
    return LeaseElector(
        api,
        leadership,
        namespace=KEY[1],
        settings=SETTINGS,
        clock=clock,
        rng=random.Random(1),
        sleep=time.sleep if time else asyncio.sleep,
    )


def held_by(holder: str, *, transitions: int = 3) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": KEY[2], "namespace": KEY[1], "resourceVersion": "100"},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 30,
            "acquireTime": "2026-12-05T21:00:00.000000Z",
            "renewTime": "2026-12-05T21:00:00.000000Z",
            "leaseTransitions": transitions,
        },
    }


def written_by_other(server: ConcurrentEmulator, holder: str, renewed: str) -> None:
    version = int(server.objects[KEY]["metadata"]["resourceVersion"]) + 1000
    server.objects[KEY].patch(
        {
            "metadata": {"resourceVersion": str(version)},
            "spec": {"holderIdentity": holder, "renewTime": renewed},
        }
    )


def parse_micro_time(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()


def spec(server: ConcurrentEmulator) -> dict[str, Any]:
    return dict(server.objects[KEY]["spec"])


async def attempt(candidate: LeaseElector) -> bool:
    return await asyncio.to_thread(candidate.try_acquire_or_renew)


async def test_an_absent_lease_is_created_held(
    server: ConcurrentEmulator, api: Any, clock: FakeClock
) -> None:
    a = elector(api, clock, "istiod-a_1")
    assert await attempt(a)
    assert spec(server) == {
        "holderIdentity": "istiod-a_1",
        "leaseDurationSeconds": 30,
        "acquireTime": "2027-01-15T08:00:00.000000Z",
        "renewTime": "2027-01-15T08:00:00.000000Z",
        "leaseTransitions": 0,
    }
    clock.advance(7.5)
    assert await attempt(a)  # a renewal: renewTime moves, acquireTime and transitions stay
    renewed = spec(server)
    assert renewed["renewTime"] == "2027-01-15T08:00:07.500000Z"
    assert (renewed["acquireTime"], renewed["leaseTransitions"]) == ("2027-01-15T08:00:00.000000Z", 0)


async def test_a_live_lease_of_another_holder_is_left_alone(
    server: ConcurrentEmulator, api: Any, clock: FakeClock
) -> None:
    server.objects[KEY] = held_by("istiod-b_2")
    a = elector(api, clock, "istiod-a_1")
    assert not await attempt(a)
    clock.advance(29.0)  # unchanged for less than leaseDurationSeconds: still live
    assert not await attempt(a)
    assert spec(server)["holderIdentity"] == "istiod-b_2"
    assert not a.leadership.is_leader


async def test_a_lease_unchanged_for_its_duration_is_taken_over(
    server: ConcurrentEmulator, api: Any, clock: FakeClock
) -> None:
    server.objects[KEY] = held_by("istiod-crashed_9", transitions=3)
    a = elector(api, clock, "istiod-a_1")
    assert not await attempt(a)  # first seen now: live for another 30 s on this replica's clock
    clock.advance(30.0)
    assert await attempt(a)
    taken = spec(server)
    assert (taken["holderIdentity"], taken["leaseTransitions"]) == ("istiod-a_1", 4)
    assert taken["acquireTime"] == taken["renewTime"] == "2027-01-15T08:00:30.000000Z"


async def test_a_renewal_seen_meanwhile_keeps_the_lease_live(
    server: ConcurrentEmulator, api: Any, clock: FakeClock
) -> None:
    server.objects[KEY] = held_by("istiod-b_2")
    a = elector(api, clock, "istiod-a_1")
    assert not await attempt(a)
    clock.advance(20.0)
    written_by_other(server, "istiod-b_2", "2026-12-05T21:00:20.000000Z")
    assert not await attempt(a)  # the holder renewed: the lease is live from this sighting on
    clock.advance(20.0)
    assert not await attempt(a)
    clock.advance(10.0)
    assert await attempt(a)


async def test_a_conflicting_update_loses_the_round_without_an_error(
    server: ConcurrentEmulator, api: Any, clock: FakeClock, time: VirtualTime
) -> None:
    server.objects[KEY] = held_by("")  # released: free for both
    b = elector(api, clock, "istiod-b_2", time)
    racing = Racing(api, before_put=b.try_acquire_or_renew)
    a = elector(racing, clock, "istiod-a_1", time)  # reads the free lease; b writes first; a: 409
    assert not await attempt(a)
    assert spec(server)["holderIdentity"] == "istiod-b_2"
    assert spec(server)["leaseTransitions"] == 4
    time.participants = 2
    tasks = [asyncio.create_task(b.run()), asyncio.create_task(a.run())]  # b leads, a campaigns on
    await wait_until(lambda: clock.monotonic() > 300, what="ten leases' worth of virtual time")
    assert b.leadership.is_leader and not a.leadership.is_leader
    assert not any(task.done() for task in tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_leader_that_cannot_renew_stops_writing_before_the_lease_runs_out(
    server: ConcurrentEmulator, api: Any, clock: FakeClock, time: VirtualTime
) -> None:
    a = elector(api, clock, "istiod-a_1", time)
    stepped_down: list[float] = []
    a.leadership.on_change(lambda leading: None if leading else stepped_down.append(clock.now()))
    writes: list[float] = []

    async def writer() -> None:
        while True:
            if a.leadership.is_leader:
                writes.append(clock.now())
            await asyncio.sleep(0.001)

    with capture_logs() as logs:
        tasks = [asyncio.create_task(a.run()), asyncio.create_task(run_while_leading(a.leadership, writer))]
        await wait_until(lambda: a.leadership.is_leader and writes, what="a leads and writes")
        server.outage = 503
        await wait_until(lambda: not a.leadership.is_leader, what="a steps down")
        count = len(writes)
        await asyncio.sleep(0.1)
        assert len(writes) == count  # the leader-only job was cancelled: no write after the term
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    last_renewal = parse_micro_time(spec(server)["renewTime"])
    assert SETTINGS.renew_deadline <= stepped_down[0] - last_renewal < SETTINGS.lease_duration
    assert max(writes) <= stepped_down[0]
    lost = [e for e in logs if e["event"] == "leader.lost"]
    assert lost and lost[0]["reason"] == "not renewed within 15 s"
    assert spec(server)["holderIdentity"] == "istiod-a_1"  # not released: the API refused writes


async def test_a_leader_that_sees_another_holder_steps_down_at_once(
    server: ConcurrentEmulator, api: Any, clock: FakeClock, time: VirtualTime
) -> None:
    a = elector(api, clock, "istiod-a_1", time)
    assert await attempt(a)
    a.leadership.acquired()
    task = asyncio.create_task(a._lead())
    written_by_other(server, "istiod-b_2", "2026-12-05T21:00:20.000000Z")  # e.g. edited by hand
    await asyncio.wait_for(task, timeout=5)
    assert not a.leadership.is_leader


async def test_a_stopping_leader_releases_the_lease_for_a_prompt_takeover(
    server: ConcurrentEmulator, api: Any, clock: FakeClock, time: VirtualTime
) -> None:
    a, b = elector(api, clock, "istiod-a_1", time), elector(api, clock, "istiod-b_2")
    task = asyncio.create_task(a.run())
    await wait_until(lambda: a.leadership.is_leader, what="a leads")
    assert not await attempt(b)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    released = spec(server)
    assert (released["holderIdentity"], released["leaseDurationSeconds"]) == ("", 1)
    assert await attempt(b)  # at once: no holder, nothing to wait out
    assert spec(server)["leaseTransitions"] == 1


async def test_two_replicas_elect_exactly_one_leader_and_fail_over(
    server: ConcurrentEmulator, api: Any, clock: FakeClock, time: VirtualTime
) -> None:
    a, b = elector(api, clock, "istiod-a_1", time), elector(api, clock, "istiod-b_2", time)
    time.participants = 2
    both: list[tuple[bool, bool]] = []

    async def watch() -> None:
        while True:
            both.append((a.leadership.is_leader, b.leadership.is_leader))
            await asyncio.sleep(0.001)

    tasks = {name: asyncio.create_task(e.run()) for name, e in (("a", a), ("b", b))}
    watcher = asyncio.create_task(watch())
    await wait_until(lambda: a.leadership.is_leader or b.leadership.is_leader, what="someone leads")
    await wait_until(lambda: clock.monotonic() > 300, what="ten leases' worth of virtual time")
    leader, follower = (a, b) if a.leadership.is_leader else (b, a)
    assert spec(server)["holderIdentity"] == leader.leadership.identity
    leader_task = tasks["a" if leader is a else "b"]
    leader_task.cancel()
    await asyncio.gather(leader_task, return_exceptions=True)
    time.participants = 1
    await wait_until(lambda: follower.leadership.is_leader, what="the follower takes over")
    watcher.cancel()
    for task in tasks.values():
        task.cancel()
    await asyncio.gather(watcher, *tasks.values(), return_exceptions=True)
    assert (True, True) not in both
    assert follower.leadership.terms == 1


class Racing:
    """An ApiClient that lets another replica write between this one's read and its write."""

    def __init__(self, api: Any, *, before_put: Callable[[], object]) -> None:
        self._api = api
        self._before_put: Callable[[], object] | None = before_put
        self.param_serialize = api.param_serialize

    def call_api(self, method: str, url: str, **kwargs: Any) -> Any:
        if method == "PUT" and self._before_put is not None:
            interleaved, self._before_put = self._before_put, None
            interleaved()
        return self._api.call_api(method, url, **kwargs)
