"""The certificate manager's asyncio driver on virtual time: no sleeps, a fake CA, a seeded RNG."""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import itertools
import random

import pytest

from mesh.certs import BACKOFF_CAP, CertPhase, IssuedCertificate
from mesh.errors import MeshError
from mesh.identity import WorkloadIdentity
from mesh.rt.certs import CertificateManager, NoValidCertificate
from mesh.testing.clock import FakeClock
from mesh.testing.pki import TestPki, cert_pem

_SERVER = WorkloadIdentity("cluster.local", "demo", "server")
_CLIENT = WorkloadIdentity("cluster.local", "demo", "client")


class VirtualTime:
    """Sleeps that end only when the test advances the fake clock past them."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.clock.monotonic() + seconds, next(self._seq), future))
        await future

    async def settle(self) -> None:
        for _ in range(30):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        target = self.clock.monotonic() + seconds
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            when, _, future = heapq.heappop(self._sleepers)
            if future.done():
                continue
            self.clock.advance(max(0.0, when - self.clock.monotonic()))
            future.set_result(None)
            await self.settle()
        self.clock.advance(target - self.clock.monotonic())
        await self.settle()


class CaDownError(MeshError):
    """The fake CA is down."""


class FakeCa:
    """Issues real leaves from a test PKI at the fake clock's time; can be taken down or gated."""

    def __init__(self, clock: FakeClock, *, ttl: float) -> None:
        self.clock = clock
        self.ttl = ttl
        self.pki = TestPki.create(now=dt.datetime.fromtimestamp(clock.now(), tz=dt.UTC))
        self.up = True
        self.gate: asyncio.Event | None = None
        self.calls: list[tuple[float, str]] = []
        self.wrong_identity = False

    async def fetch(self, identity: WorkloadIdentity) -> IssuedCertificate:
        self.calls.append((self.clock.now(), identity.uri))
        if self.gate is not None:
            await self.gate.wait()
        if not self.up:
            raise CaDownError("the fake CA is down", hint="bring it up")
        issued_for = _CLIENT if self.wrong_identity else identity
        start = dt.datetime.fromtimestamp(self.clock.now(), tz=dt.UTC)
        leaf = self.pki.issue_leaf(
            issued_for.uri, not_before=start, not_after=start + dt.timedelta(seconds=self.ttl)
        )
        return IssuedCertificate(
            identity=issued_for,
            key_pem=leaf.key_pem,
            chain_pem=cert_pem(leaf.cert),
            roots_pem=cert_pem(self.pki.root.cert),
            serial=leaf.cert.serial_number,
            not_before=leaf.cert.not_valid_before_utc.timestamp(),
            not_after=leaf.cert.not_valid_after_utc.timestamp(),
        )

    def call_times(self, identity: WorkloadIdentity = _SERVER) -> list[float]:
        return [t for t, uri in self.calls if uri == identity.uri]


def _setup(
    ttl: float = 120.0, *, max_concurrent_fetches: int = 8
) -> tuple[FakeClock, VirtualTime, FakeCa, CertificateManager]:
    clock = FakeClock(start=1_800_000_000.0)
    vt = VirtualTime(clock)
    ca = FakeCa(clock, ttl=ttl)
    manager = CertificateManager(
        fetcher=ca.fetch,
        clock=clock,
        rng=random.Random(24),
        sleep=vt.sleep,
        max_concurrent_fetches=max_concurrent_fetches,
    )
    return clock, vt, ca, manager


async def test_concurrent_callers_share_one_fetch() -> None:
    _, vt, ca, manager = _setup()
    ca.gate = asyncio.Event()
    waiters = [asyncio.create_task(manager.get(_SERVER)) for _ in range(5)]
    await vt.settle()
    assert len(ca.calls) == 1
    ca.gate.set()
    certs = await asyncio.gather(*waiters)
    assert len({c.serial for c in certs}) == 1
    assert certs[0].identity == _SERVER
    assert await manager.get(_SERVER) is certs[0]
    assert len(ca.calls) == 1
    await manager.close()


async def test_refresh_at_half_life_replaces_the_certificate() -> None:
    clock, vt, ca, manager = _setup(ttl=120.0)
    t0 = clock.now()
    first = await manager.get(_SERVER)
    await vt.advance(53.0)  # half of 120 s, give or take 5 % of it (6 s): not before 54 s
    assert ca.call_times() == [t0]
    await vt.advance(14.0)
    assert len(ca.call_times()) == 2 and 54.0 <= ca.call_times()[1] - t0 <= 66.0
    second = await manager.get(_SERVER)
    assert second.serial != first.serial
    assert second.not_after > first.not_after
    await manager.close()


async def test_catalogue_24_ca_outage_across_expiry() -> None:
    """TTL 120 s; the CA goes down at t=1 s for 180 s. Probed once a second, as new connections would."""
    clock, vt, ca, manager = _setup(ttl=120.0)
    t0 = clock.now()
    first = await manager.get(_SERVER)
    served: dict[int, int | None] = {}
    for second in range(1, 400):
        ca.up = not 1 <= second < 181
        await vt.advance(1.0)
        try:
            served[second] = (await manager.get(_SERVER)).serial
        except NoValidCertificate:
            served[second] = None
    times = [t - t0 for t in ca.call_times()]
    assert 54.0 <= times[1] <= 66.0, "refresh attempted at half of the lifetime (+/- 5 % of it)"
    assert all(b - a <= BACKOFF_CAP for a, b in itertools.pairwise(times))
    assert all(served[s] == first.serial for s in range(1, 120)), "old cert served, 0 failures before expiry"
    assert all(served[s] is None for s in range(120, 181)), "an expired certificate is never returned"
    recovered = min(s for s in served if s >= 181 and served[s] is not None)
    assert recovered <= 181 + BACKOFF_CAP + 1
    assert all(served[s] not in (None, first.serial) for s in range(recovered, 400))
    assert manager.snapshot()[0].state is CertPhase.VALID
    await manager.close()


async def test_failed_first_fetch_fails_closed_fast_then_retries_in_background() -> None:
    _, vt, ca, manager = _setup()
    ca.up = False
    with pytest.raises(NoValidCertificate, match="fake CA is down"):
        await manager.get(_SERVER)
    with pytest.raises(NoValidCertificate, match="next attempt is in"):
        await manager.get(_SERVER)
    assert len(ca.calls) == 1, "callers during the backoff do not hammer the CA"
    assert manager.snapshot()[0].state is CertPhase.UNAVAILABLE
    await vt.advance(0.7)
    assert len(ca.calls) == 2, "retried after ~0.5 s (+/-20 %)"
    ca.up = True
    await vt.advance(1.5)
    assert len(ca.calls) == 3
    assert (await manager.get(_SERVER)).identity == _SERVER
    assert len(ca.calls) == 3
    await manager.close()


async def test_backoff_is_per_identity() -> None:
    clock, vt, ca, manager = _setup()
    ca.up = False
    manager.prefetch([_SERVER])
    await vt.advance(30.0)  # many failures for the server identity
    ca.up = True
    cert = await manager.get(_CLIENT)
    assert cert.identity == _CLIENT
    assert ca.call_times(_CLIENT) == [clock.now()], (
        "a new identity is fetched at once, not after the server's backoff"
    )
    await manager.close()


async def test_prefetch_forget_and_snapshot() -> None:
    _, vt, ca, manager = _setup(ttl=100.0)
    manager.prefetch([_SERVER, _CLIENT, _SERVER])
    await vt.settle()
    rows = manager.snapshot()
    assert [r.identity for r in rows] == [_CLIENT.uri, _SERVER.uri]
    assert all(r.state is CertPhase.VALID and r.serial for r in rows)
    dumped = rows[1].as_dict()
    assert dumped["state"] == "valid"
    assert str(dumped["not_after"]).startswith("2027-01-15T08:")
    manager.forget(_CLIENT)
    await vt.advance(56.0)  # past half life (50 s) and its 5 s of jitter
    assert len(ca.call_times(_CLIENT)) == 1, "a forgotten identity is not renewed"
    assert len(ca.call_times(_SERVER)) == 2
    assert [r.identity for r in manager.snapshot()] == [_SERVER.uri]
    await manager.close()


async def test_close_stops_waiters_and_later_calls() -> None:
    _, vt, ca, manager = _setup()
    ca.gate = asyncio.Event()
    waiter = asyncio.create_task(manager.get(_SERVER))
    await vt.settle()
    await manager.close()
    with pytest.raises(NoValidCertificate, match="fetch was stopped"):
        await waiter
    with pytest.raises(NoValidCertificate, match="manager is closed"):
        await manager.get(_SERVER)


async def test_a_certificate_for_another_identity_is_refused() -> None:
    _, _, ca, manager = _setup()
    ca.wrong_identity = True
    with pytest.raises(NoValidCertificate, match=r"when asked for spiffe://cluster\.local/ns/demo/sa/server"):
        await manager.get(_SERVER)
    assert manager.snapshot()[0].serial is None
    await manager.close()


async def test_fetches_are_limited_in_concurrency() -> None:
    _, vt, ca, manager = _setup(max_concurrent_fetches=3)
    ca.gate = asyncio.Event()
    manager.prefetch(WorkloadIdentity("cluster.local", "demo", f"sa{i}") for i in range(10))
    await vt.settle()
    assert len(ca.calls) == 3
    ca.gate.set()
    await vt.settle()
    assert len(ca.calls) == 10
    assert all(r.state is CertPhase.VALID for r in manager.snapshot())
    await manager.close()


async def test_current_never_waits_and_starts_a_fetch() -> None:
    clock, vt, _, manager = _setup(ttl=120.0)
    with pytest.raises(NoValidCertificate):
        manager.current(_SERVER)
    await vt.settle()
    assert manager.current(_SERVER).identity == _SERVER
    await vt.advance(200.0)
    assert manager.current(_SERVER).not_after > clock.now()
    await manager.close()


async def test_110_pods_over_30_service_accounts_fetch_30_certificates() -> None:
    _, vt, ca, manager = _setup(ttl=3600.0)
    pods = [WorkloadIdentity("cluster.local", f"ns{i % 3}", f"sa{i % 30}") for i in range(110)]
    manager.prefetch(pods)
    await asyncio.gather(*(manager.get(identity) for identity in pods))
    await vt.settle()
    assert len(ca.calls) == 30 and len({uri for _, uri in ca.calls}) == 30  # once per identity, not per pod
    await manager.close()
