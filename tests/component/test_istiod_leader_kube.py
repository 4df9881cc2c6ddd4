"""Two istiod_lite replicas against one Kubernetes API: only the leader writes status conditions,
and the replica that takes over writes the current statuses itself (it never wrote before, and the
stored ones were changed meanwhile). The API server is ``kmock``, a test double of the Kubernetes
API server, with the API server's optimistic concurrency added (kmock_concurrency.py); the
elections run on virtual time."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
import structlog
from kubernetes import client

from istiod_lite.sources.kube_status import KubeStatusWriter
from istiod_lite.status import StatusReporter
from istiod_lite.view import view_from_objects
from mesh.rt.election import ElectionSettings, Leadership, run_while_leading
from mesh.rt.kube.lease import LeaseElector
from mesh.testing.clock import FakeClock, VirtualTime
from mesh.testing.polling import wait_until
from tests.component.kmock_concurrency import ConcurrentEmulator

pytestmark = [pytest.mark.kmock(cls=ConcurrentEmulator), pytest.mark.timeout(30)]

PA = "security.istio.io/v1/peerauthentications"
STRICT = {
    "apiVersion": "security.istio.io/v1",
    "kind": "PeerAuthentication",
    "metadata": {"name": "strict", "namespace": "shop", "generation": 1},
    "spec": {"mtls": {"mode": "STRICT"}},
}


@dataclass
class Replica:
    """One istiod_lite's writing side: its API client, election, and status reporter."""

    name: str
    api: client.ApiClient
    elector: LeaseElector
    reporter: StatusReporter
    tasks: list[asyncio.Task[None]]

    @property
    def leads(self) -> bool:
        return self.elector.leadership.is_leader

    async def stop(self) -> None:
        for task in self.tasks:  # the writes first, then the election (which releases the lease)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
def server(kmock: ConcurrentEmulator) -> ConcurrentEmulator:
    kmock.resources["coordination.k8s.io/v1/leases"] = kmock.ResourceInfo(kind="Lease", namespaced=True)
    kmock.resources[PA] = kmock.ResourceInfo(kind="PeerAuthentication", namespaced=True)
    kmock.objects[PA, "shop", "strict"] = STRICT
    return kmock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def time(clock: FakeClock) -> AsyncIterator[VirtualTime]:
    virtual = VirtualTime(clock, participants=2)
    driver = asyncio.create_task(virtual.run())
    yield virtual
    driver.cancel()
    await asyncio.gather(driver, return_exceptions=True)


@pytest.fixture
def replicas(server: ConcurrentEmulator, clock: FakeClock, time: VirtualTime) -> Iterator[list[Replica]]:
    made: list[Replica] = []
    for name in ("istiod-a", "istiod-b"):
        api = client.ApiClient(client.Configuration(host=str(server.url).rstrip("/")))
        api.user_agent = name
        leadership = Leadership(
            lease="istiod-lite-leader", identity=f"{name}_1", logger=structlog.get_logger()
        )
        elector = LeaseElector(
            api,
            leadership,
            namespace="istio-system",
            settings=ElectionSettings(),
            clock=clock,
            rng=random.Random(name),
            sleep=time.sleep,
        )
        writer = KubeStatusWriter(api, may_write=functools.partial(is_leader, leadership))
        made.append(Replica(name, api, elector, StatusReporter(writer, now=clock.now), []))
    yield made
    for replica in made:
        replica.api.close()  # type: ignore[no-untyped-call]


def is_leader(leadership: Leadership) -> bool:
    return leadership.is_leader


def start(replica: Replica) -> None:
    leadership = replica.elector.leadership
    replica.tasks = [
        asyncio.create_task(run_while_leading(leadership, replica.reporter.run)),
        asyncio.create_task(replica.elector.run()),
    ]


def status_writers(server: ConcurrentEmulator) -> list[str]:
    """The user agent of each status write the API server saw, in order."""
    return [str(r.headers.get("User-Agent")) for r in server if r.subresource == "status"]


def accepted(server: ConcurrentEmulator) -> bool:
    conditions = (dict(server.objects[PA, "shop", "strict"]).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Accepted" and c.get("status") == "True" for c in conditions)


async def test_only_the_leader_writes_and_the_next_one_writes_the_current_statuses(
    server: ConcurrentEmulator, replicas: list[Replica], clock: FakeClock, time: VirtualTime
) -> None:
    view = view_from_objects([STRICT])
    for replica in replicas:
        start(replica)
        replica.reporter.submit(view, [])  # every replica translates every build
    await wait_until(lambda: accepted(server), what="the status is written")
    await wait_until(lambda: clock.monotonic() > 120, what="four leases' worth of virtual time")
    leader, follower = replicas if replicas[0].leads else replicas[::-1]
    assert not follower.leads
    assert set(status_writers(server)) == {leader.name}

    await leader.stop()  # a rolling restart takes the leader away
    time.participants = 1
    server.objects[PA, "shop", "strict"] = STRICT  # meanwhile the status is gone (or stale)
    assert not accepted(server)
    await wait_until(lambda: follower.leads, what="the follower takes over")
    await wait_until(lambda: accepted(server), what="the new leader writes the current status")
    assert status_writers(server)[-1] == follower.name
    await follower.stop()


async def test_a_replica_that_lost_its_term_writes_nothing_more(
    server: ConcurrentEmulator, replicas: list[Replica], time: VirtualTime
) -> None:
    a = replicas[0]
    time.participants = 1
    start(a)
    a.reporter.submit(view_from_objects([STRICT]), [])
    await wait_until(lambda: accepted(server), what="the status is written")
    server.outage = 503  # the API refuses writes: no renewal, the term ends within 15 s
    await wait_until(lambda: not a.leads, what="a steps down")
    writes = len(status_writers(server))
    server.objects[PA, "shop", "strict"] = STRICT  # the status needs writing again...
    a.reporter.submit(view_from_objects([STRICT]), [])
    await asyncio.sleep(0.2)
    assert not a.leads
    assert len(status_writers(server)) == writes  # ...but a follower does not even try
    await a.stop()
