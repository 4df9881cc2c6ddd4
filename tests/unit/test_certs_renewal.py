"""The pure renewal state machine: half-life refresh, capped jittered backoff, fail closed at expiry."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from mesh.certs import (
    BACKOFF_CAP,
    CertPhase,
    RenewalState,
    Validity,
    fetch_failed,
    fetch_started,
    fetch_succeeded,
    is_usable,
    next_backoff,
    phase,
    refresh_at,
    start,
)
from mesh.testing.clock import FakeClock


@pytest.mark.parametrize(
    ("not_before", "not_after", "expected"),
    [
        (0.0, 120.0, 60.0),
        (1000.0, 1000.0 + 86400.0, 1000.0 + 43200.0),
        (50.0, 51.0, 50.5),
        (10.0, 10.0, 10.0),
    ],
)
def test_refresh_at_is_half_life(not_before: float, not_after: float, expected: float) -> None:
    assert refresh_at(not_before, not_after) == expected


def test_refresh_at_rejects_inverted_window() -> None:
    with pytest.raises(ValueError, match="before not_before"):
        refresh_at(100.0, 99.0)


@pytest.mark.parametrize(
    ("failures", "low", "high"),
    [
        (1, 0.4, 0.6),
        (2, 0.8, 1.2),
        (3, 1.6, 2.4),
        (5, 6.4, 9.6),
        (8, 51.2, 76.8),
        (9, 102.4, 150.0),  # 128 s +/- 20 %, capped
        (10, 120.0, 150.0),  # at the cap: 150 s - 20 %, never above 150 s
        (40, 120.0, 150.0),
        (10_000, 120.0, 150.0),  # no float overflow after a very long outage
    ],
)
def test_next_backoff_doubles_with_jitter_and_cap(failures: int, low: float, high: float) -> None:
    rng = random.Random(failures)
    delays = [next_backoff(failures, rng) for _ in range(200)]
    assert all(low <= d <= high for d in delays), (min(delays), max(delays))
    assert max(delays) - min(delays) > (high - low) * 0.5, "jitter must spread the delays"


def test_next_backoff_never_exceeds_cap_even_with_max_jitter() -> None:
    class MaxRandom(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    assert next_backoff(30, MaxRandom()) == BACKOFF_CAP
    assert next_backoff(1, MaxRandom()) == pytest.approx(0.6)


def test_next_backoff_is_deterministic_for_a_seed() -> None:
    a = [next_backoff(n, random.Random(7)) for n in range(1, 12)]
    b = [next_backoff(n, random.Random(7)) for n in range(1, 12)]
    assert a == b


def test_next_backoff_rejects_zero_failures() -> None:
    with pytest.raises(ValueError, match="failures must be >= 1"):
        next_backoff(0, random.Random(1))


_V = Validity(not_before=1000.0, not_after=1120.0)


@pytest.mark.parametrize(
    ("state", "now", "expected"),
    [
        (RenewalState(next_attempt=0.0), 0.0, CertPhase.PENDING),
        (RenewalState(next_attempt=0.0, fetching=True), 0.0, CertPhase.PENDING),
        (RenewalState(next_attempt=5.0, failures=1, last_error="x"), 1.0, CertPhase.UNAVAILABLE),
        (RenewalState(next_attempt=5.0, failures=1, fetching=True), 5.0, CertPhase.PENDING),
        (RenewalState(next_attempt=1060.0, validity=_V), 1000.0, CertPhase.VALID),
        (RenewalState(next_attempt=1060.0, validity=_V, fetching=True), 1060.0, CertPhase.REFRESHING),
        (RenewalState(next_attempt=1080.0, validity=_V, failures=2), 1070.0, CertPhase.RENEWAL_FAILING),
        (RenewalState(next_attempt=1200.0, validity=_V, failures=5), 1119.999, CertPhase.RENEWAL_FAILING),
        (RenewalState(next_attempt=1200.0, validity=_V, failures=5), 1120.0, CertPhase.EXPIRED),
        (RenewalState(next_attempt=1200.0, validity=_V, fetching=True), 1130.0, CertPhase.EXPIRED),
    ],
)
def test_phase(state: RenewalState, now: float, expected: CertPhase) -> None:
    assert phase(state, now=now) is expected


@pytest.mark.parametrize(
    ("now", "usable"),
    [(999.0, True), (1000.0, True), (1119.9, True), (1120.0, False), (5000.0, False)],
)
def test_usable_until_not_after(now: float, usable: bool) -> None:
    assert is_usable(RenewalState(next_attempt=0.0, validity=_V), now=now) is usable
    assert not is_usable(RenewalState(next_attempt=0.0), now=now)


def test_success_schedules_half_life_and_clears_failures() -> None:
    failed = RenewalState(next_attempt=0.0, failures=4, fetching=True, last_error="CA down")
    ok = fetch_succeeded(failed, _V, now=1000.0)
    assert ok == RenewalState(next_attempt=1060.0, validity=_V)


def test_success_with_a_tiny_lifetime_does_not_busy_loop() -> None:
    ok = fetch_succeeded(start(now=0.0), Validity(not_before=100.0, not_after=100.5), now=100.0)
    assert ok.next_attempt == 101.0


def test_failure_keeps_the_old_certificate() -> None:
    held = fetch_started(RenewalState(next_attempt=1060.0, validity=_V))
    failed = fetch_failed(held, now=1060.0, rng=random.Random(3), error="CaUnavailable: connection refused")
    assert failed.validity == _V
    assert failed.failures == 1
    assert not failed.fetching
    assert 1060.4 <= failed.next_attempt <= 1060.6
    assert failed.last_error.startswith("CaUnavailable")


@dataclass
class _Simulation:
    """Drives one identity's state machine on a fake clock (starting at 0) against a CA that may be down."""

    clock: FakeClock
    ttl: float
    ca_up: Callable[[float], bool]
    rng: random.Random = field(default_factory=lambda: random.Random(24))
    attempts: list[tuple[float, bool]] = field(default_factory=list)
    usable_at: dict[float, bool] = field(default_factory=dict)

    def run(self, *, until: float, probe_every: float = 1.0) -> RenewalState:
        origin = self.clock.now()
        state = start(now=origin)
        probe = origin
        for _ in range(100_000):  # bounded: the loop ends long before this
            now = self.clock.now()
            if now >= origin + until:
                return state
            if now >= state.next_attempt:
                state = self._attempt(fetch_started(state), now)
                continue
            while probe <= now:
                self.usable_at[probe - origin] = is_usable(state, now=probe)
                probe += probe_every
            step = min(state.next_attempt, probe, origin + until) - now
            self.clock.advance(max(step, 0.0))
        raise AssertionError("simulation did not finish")

    def _attempt(self, state: RenewalState, now: float) -> RenewalState:
        up = self.ca_up(now)
        self.attempts.append((now, up))
        if up:
            return fetch_succeeded(state, Validity(now, now + self.ttl), now=now)
        return fetch_failed(state, now=now, rng=self.rng, error="CaUnavailable: CA down")


def test_catalogue_24_ca_outage_across_expiry() -> None:
    """TTL 120 s, the CA goes down right after the first issue and stays down 180 s (catalogue test 24)."""
    clock = FakeClock(start=0.0)
    sim = _Simulation(clock=clock, ttl=120.0, ca_up=lambda t: t < 1.0 or t >= 181.0)
    final = sim.run(until=600.0)
    times = [t for t, _ in sim.attempts]

    assert sim.attempts[0] == (0.0, True)
    assert times[1] == 60.0, "the first refresh is attempted at half of the 120 s lifetime"
    gaps = [b - a for a, b in itertools.pairwise(times[1:])]
    assert all(gap <= BACKOFF_CAP for gap in gaps)
    failing_gaps = [
        b - a for (a, ok), (b, _) in zip(sim.attempts[1:], sim.attempts[2:], strict=False) if not ok
    ]
    assert failing_gaps == sorted(failing_gaps), "backoff grows while the CA stays down"

    assert all(sim.usable_at[t] for t in sim.usable_at if t < 120.0), "old cert served until expiry"
    assert not any(sim.usable_at[t] for t in sim.usable_at if 120.0 <= t < 181.0), "expired is never served"
    recovered = next(t for t, ok in sim.attempts if ok and t >= 181.0)
    assert recovered <= 181.0 + BACKOFF_CAP, "recovery within the backoff cap of the CA's return"
    assert all(sim.usable_at[t] for t in sim.usable_at if t >= recovered + 1.0)
    assert final.failures == 0
    assert phase(final, now=clock.now()) is CertPhase.VALID


def test_long_outage_retries_settle_at_the_cap() -> None:
    clock = FakeClock(start=0.0)
    sim = _Simulation(clock=clock, ttl=3600.0, ca_up=lambda t: t < 1.0)
    sim.run(until=3 * 3600.0)
    times = [t for t, _ in sim.attempts]
    assert times[1] == 1800.0
    late_gaps = [b - a for a, b in itertools.pairwise(times[-10:])]
    assert all(120.0 <= g <= BACKOFF_CAP for g in late_gaps)
    assert len(times) < 150, "no retry storm"


def test_renewals_of_many_identities_issued_together_are_spread() -> None:
    rng = random.Random(3)
    lifetime = Validity(not_before=0.0, not_after=1000.0)
    dues = [fetch_succeeded(start(now=0.0), lifetime, now=0.0, rng=rng).next_attempt for _ in range(30)]
    assert all(450.0 <= due <= 550.0 for due in dues)  # half life, give or take 5 % of the lifetime
    assert max(dues) - min(dues) > 50.0  # not one burst
    assert fetch_succeeded(start(now=0.0), lifetime, now=0.0).next_attempt == 500.0  # no rng: exactly half
