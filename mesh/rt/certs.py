"""The certificate manager: one current certificate per workload identity, renewed in the background.

A thin asyncio driver around the pure state machine in :mod:`mesh.certs`: it starts fetches, records
their results, and sleeps (on an injected ``sleep`` and ``clock``) until the time the machine names.
Concurrent callers of :meth:`CertificateManager.get` share one fetch; a certificate is refreshed at half
life (+/- 5 % of it at random); failed fetches back off per identity (x2, +/-20 % jitter, capped at
150 s); the old certificate is served until it expires and never after: no certificate means no
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import structlog

from mesh.certs import (
    CertPhase,
    IssuedCertificate,
    RenewalState,
    fetch_failed,
    fetch_started,
    fetch_succeeded,
    is_usable,
    phase,
    start,
)
from mesh.clock import Clock
from mesh.errors import MeshError
from mesh.identity.spiffe import WorkloadIdentity
from mesh.rt.logs import get_logger

__all__ = [
    "DEFAULT_MAX_CONCURRENT_FETCHES",
    "CertificateManager",
    "CertificateStatus",
    "Fetcher",
    "NoValidCertificate",
]

Fetcher = Callable[[WorkloadIdentity], Awaitable[IssuedCertificate]]
"""Fetches a fresh, verified certificate for an identity (e.g. ``CaClient.fetch`` bound to a TTL)."""

DEFAULT_MAX_CONCURRENT_FETCHES = 8
_MAX_SLEEP = 60.0  # a long wait is cut into slices so a wall-clock jump is noticed within a minute


class NoValidCertificate(MeshError):  # noqa: N818 (name of the API)
    """There is no unexpired certificate for an identity: the connection must not be made (fail closed)."""


@dataclass(frozen=True, slots=True)
class CertificateStatus:
    """One identity's row in the admin dump. Times are Unix seconds; ``serial`` is lower-case hex."""

    identity: str
    state: CertPhase
    serial: str | None
    not_before: float | None
    not_after: float | None
    next_attempt: float
    failures: int
    last_error: str
    chain_pem: str = ""
    """The leaf and intermediates, PEM (public only: Istio's ztunnel dumps its chains too)."""

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form with RFC 3339 times, for ``/config_dump``-style admin output."""
        return {
            "identity": self.identity,
            "state": self.state.value,
            "serial": self.serial,
            "not_before": _rfc3339(self.not_before),
            "not_after": _rfc3339(self.not_after),
            "next_attempt": _rfc3339(self.next_attempt),
            "failures": self.failures,
            "last_error": self.last_error,
            "cert_chain": self.chain_pem,
        }


def _rfc3339(when: float | None) -> str | None:
    return None if when is None else dt.datetime.fromtimestamp(when, tz=dt.UTC).isoformat()


class _Entry:
    __slots__ = ("cert", "identity", "inflight", "state", "timer")

    def __init__(self, identity: WorkloadIdentity, state: RenewalState) -> None:
        self.identity = identity
        self.state = state
        self.cert: IssuedCertificate | None = None
        self.inflight: asyncio.Task[IssuedCertificate] | None = None
        self.timer: asyncio.Task[None] | None = None


class CertificateManager:
    """Keeps one current certificate per identity; see the module docstring for the rules."""

    def __init__(
        self,
        *,
        fetcher: Fetcher,
        clock: Clock,
        rng: random.Random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_concurrent_fetches: int = DEFAULT_MAX_CONCURRENT_FETCHES,
        log: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        self._fetcher = fetcher
        self._clock = clock
        self._rng = rng
        self._sleep = sleep
        self._limit = asyncio.Semaphore(max_concurrent_fetches)
        self._log = log or get_logger("certs")
        self._entries: dict[WorkloadIdentity, _Entry] = {}
        self._closed = False

    async def get(self, identity: WorkloadIdentity) -> IssuedCertificate:
        """The current certificate of ``identity``, fetching it first if needed.

        Raises :class:`NoValidCertificate` when none is valid: the fetch failed, or the identity is
        backing off after failures and its last certificate expired.
        """
        self._check_open(identity)
        entry = self._entries.get(identity) or self._track(identity)
        now = self._clock.now()
        if entry.cert is not None and is_usable(entry.state, now=now):
            return entry.cert
        if entry.inflight is None:
            if entry.state.failures and now < entry.state.next_attempt:
                raise self._unavailable(entry, now)
            self._start_fetch(entry)
        assert entry.inflight is not None
        return await self._wait(entry, entry.inflight)

    def current(self, identity: WorkloadIdentity) -> IssuedCertificate:
        """The usable certificate of ``identity`` right now, without waiting (for TLS servers that
        pick credentials per handshake). Raises :class:`NoValidCertificate` when there is none yet."""
        entry = self._entries.get(identity)
        now = self._clock.now()
        if entry is not None and entry.cert is not None and is_usable(entry.state, now=now):
            return entry.cert
        if entry is None and not self._closed:
            self.prefetch([identity])
        raise NoValidCertificate(
            f"no valid certificate for {identity.uri} yet",
            hint="it is being fetched from the CA; check the CA address and this node's token if it persists",
        )

    def usable(self, identity: WorkloadIdentity) -> bool:
        """Whether ``identity`` has a certificate that may be presented now. Only reads (no fetch is
        started), so another thread may ask (the readiness page does)."""
        entry = self._entries.get(identity)
        return entry is not None and entry.cert is not None and is_usable(entry.state, now=self._clock.now())

    def prefetch(self, identities: Iterable[WorkloadIdentity]) -> None:
        """Starts fetching certificates for identities not tracked yet (e.g. this node's pods)."""
        for identity in identities:
            self._check_open(identity)
            if identity not in self._entries:
                self._start_fetch(self._track(identity))

    def forget(self, identity: WorkloadIdentity) -> None:
        """Stops renewing ``identity`` and drops its certificate (its last pod left this node)."""
        entry = self._entries.pop(identity, None)
        if entry is not None:
            self._cancel(entry)
            self._log.info("certs.forgotten", identity=identity.uri)

    def snapshot(self) -> tuple[CertificateStatus, ...]:
        """Every tracked identity's certificate state, sorted by identity, for the admin dump."""
        now = self._clock.now()
        return tuple(self._status(e, now) for _, e in sorted(self._entries.items(), key=lambda kv: kv[0].uri))

    async def close(self) -> None:
        """Stops all renewals and pending fetches (idempotent); later calls raise NoValidCertificate."""
        self._closed = True
        tasks: list[asyncio.Task[object]] = []
        for entry in self._entries.values():
            tasks.extend(t for t in (entry.inflight, entry.timer) if t is not None)
            self._cancel(entry)
        self._entries.clear()
        if tasks:
            await asyncio.wait(tasks)

    def _track(self, identity: WorkloadIdentity) -> _Entry:
        entry = _Entry(identity, start(now=self._clock.now()))
        self._entries[identity] = entry
        return entry

    def _check_open(self, identity: WorkloadIdentity) -> None:
        if self._closed:
            raise NoValidCertificate(
                f"no certificate for {identity.uri}: the certificate manager is closed",
                hint="the process is shutting down; do not start new connections",
            )

    def _start_fetch(self, entry: _Entry) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        entry.state = fetch_started(entry.state)
        entry.inflight = asyncio.get_running_loop().create_task(self._fetch(entry))
        entry.inflight.add_done_callback(_consume_outcome)

    async def _fetch(self, entry: _Entry) -> IssuedCertificate:
        uri = entry.identity.uri
        started = time.perf_counter()  # the fetch's own duration, for the log (not the mesh clock)
        try:
            async with self._limit:
                cert = await self._fetcher(entry.identity)
            if cert.identity != entry.identity:
                raise NoValidCertificate(
                    f"the fetcher returned a certificate for {cert.identity.uri} when asked for {uri}",
                    hint="this is a bug in the fetcher; the certificate was refused",
                )
        except Exception as err:
            entry.state = fetch_failed(entry.state, now=self._clock.now(), rng=self._rng, error=str(err))
            delay = entry.state.next_attempt - self._clock.now()
            self._log.warning("certs.fetch_failed", identity=uri, error=str(err), retry_in=round(delay, 3))
            raise
        else:
            entry.state = fetch_succeeded(entry.state, cert.validity, now=self._clock.now(), rng=self._rng)
            entry.cert = cert
            self._log.info(
                "certs.issued",
                identity=uri,
                serial=f"{cert.serial:x}",
                not_after=cert.not_after,
                took_ms=round((time.perf_counter() - started) * 1e3, 3),
            )
            return cert
        finally:
            entry.inflight = None
            if not self._closed and self._entries.get(entry.identity) is entry:
                entry.timer = asyncio.get_running_loop().create_task(self._timer(entry))

    async def _timer(self, entry: _Entry) -> None:
        delay = entry.state.next_attempt - self._clock.now()
        while delay > 0:
            await self._sleep(min(delay, _MAX_SLEEP))
            delay = entry.state.next_attempt - self._clock.now()
        entry.timer = None
        self._start_fetch(entry)

    async def _wait(self, entry: _Entry, task: asyncio.Task[IssuedCertificate]) -> IssuedCertificate:
        uri = entry.identity.uri
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # our caller was cancelled
            raise NoValidCertificate(
                f"no certificate for {uri}: its fetch was stopped (identity forgotten or manager closed)",
                hint="retry if the workload still runs on this node",
            ) from None
        except Exception as err:
            raise NoValidCertificate(
                f"no certificate for {uri}: {err}", hint="the fetch is retried with backoff; see the CA error"
            ) from err

    def _unavailable(self, entry: _Entry, now: float) -> NoValidCertificate:
        expired = entry.cert is not None
        what = "its certificate expired and renewal failed" if expired else "fetching it failed"
        return NoValidCertificate(
            f"no valid certificate for {entry.identity.uri}: {what}: {entry.state.last_error}",
            hint=f"the next attempt is in {entry.state.next_attempt - now:.1f} s; check the CA is reachable",
        )

    def _cancel(self, entry: _Entry) -> None:
        for task in (entry.inflight, entry.timer):
            if task is not None:
                task.cancel()
        entry.timer = None

    def _status(self, entry: _Entry, now: float) -> CertificateStatus:
        cert = entry.cert
        return CertificateStatus(
            identity=entry.identity.uri,
            state=phase(entry.state, now=now),
            serial=None if cert is None else f"{cert.serial:x}",
            not_before=None if cert is None else cert.not_before,
            not_after=None if cert is None else cert.not_after,
            next_attempt=entry.state.next_attempt,
            failures=entry.state.failures,
            last_error=entry.state.last_error,
            chain_pem="" if cert is None else cert.chain_pem.decode(),
        )


def _consume_outcome(task: asyncio.Task[IssuedCertificate]) -> None:
    """Marks a fetch's exception as seen: it is recorded in the state and logged already."""
    if not task.cancelled():
        with contextlib.suppress(Exception):
            task.exception()
