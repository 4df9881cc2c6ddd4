"""Leader election: which replica of a controller may write, and for how long.

Any replica serves; only the leader writes (status conditions, waypoint objects), or replicas race
each other. An elector (``mesh.rt.kube.lease.LeaseElector`` on Kubernetes, :class:`FileLockElector`
in the lab, :class:`AlwaysLeader` when election is off) drives a :class:`Leadership`:

- writers check ``leadership.is_leader`` before each write (it turns false the moment leadership
  is lost, also from a worker thread's point of view);
- :func:`run_while_leading` runs the leader-only jobs during each term and cancels them when the
  term ends; the next term starts them afresh, so a new leader never relies on what an earlier
  term (or another replica) remembered;
- it logs ``leader.acquired`` and ``leader.lost`` with the lease and the holder.

The timings are client-go's (and istiod's: a 30 s lease, renewed within 15 s, tried every 7.5 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from mesh.errors import ConfigError

__all__ = [
    "AlwaysLeader",
    "ElectionSettings",
    "Elector",
    "FileLockElector",
    "Leadership",
    "Sleep",
    "holder_identity",
    "run_while_leading",
]

Sleep = Callable[[float], Awaitable[None]]
JITTER = 1.2
"""client-go's ``JitterFactor``: a follower waits ``retry_period * (1 + rand * 1.2)`` between tries."""


@dataclass(frozen=True, slots=True)
class ElectionSettings:
    """How long a lease lasts, how long the leader keeps trying to renew it, and how often it tries."""

    lease_duration: float = 30.0
    """A follower takes the lease over after seeing it unchanged this long."""
    renew_deadline: float = 15.0
    """The leader stops leading when it could not renew for this long (before anyone may take over)."""
    retry_period: float = 7.5
    """Between renewals, and between a follower's attempts."""

    def __post_init__(self) -> None:
        if self.retry_period <= 0:
            raise ConfigError(f"leader election retry period {self.retry_period} s", hint="use > 0")
        if not self.lease_duration > self.renew_deadline > JITTER * self.retry_period:
            raise ConfigError(
                f"leader election timings {self.lease_duration}/{self.renew_deadline}/"
                f"{self.retry_period} s (lease/renew/retry)",
                hint="the lease must outlast the renew deadline, which must exceed 1.2 retry periods "
                "(e.g. 30/15/7.5, istiod's)",
            )

    @classmethod
    def from_lease_duration(cls, seconds: float) -> ElectionSettings:
        """istiod's proportions: renew within half the lease, try every quarter."""
        return cls(lease_duration=seconds, renew_deadline=seconds / 2, retry_period=seconds / 4)


def holder_identity(pod_name: str, rng: random.Random) -> str:
    """``<pod name>_<random>``: unique per process, so a restarted pod never mistakes its previous
    life's lease for its own."""
    return f"{pod_name or 'istiod'}_{rng.getrandbits(48):012x}"


class Leadership:
    """Whether this process leads right now; set by one elector, read by the writers."""

    def __init__(self, *, lease: str, identity: str, logger: structlog.typing.FilteringBoundLogger) -> None:
        self.lease = lease
        self.identity = identity
        self.log = logger
        self._leading = asyncio.Event()
        self._following = asyncio.Event()
        self._following.set()
        self._listeners: list[Callable[[bool], None]] = []
        self.terms = 0
        """How many times leadership was acquired."""

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Calls ``listener(leading)`` at the start and at the end of each term."""
        self._listeners.append(listener)

    @property
    def is_leader(self) -> bool:
        """True during a term. Writers check it before each write."""
        return self._leading.is_set()

    def acquired(self) -> None:
        """The elector holds the lease: a term starts."""
        if self.is_leader:
            return
        self.terms += 1
        self._following.clear()
        self._leading.set()
        self.log.info("leader.acquired", lease=self.lease, holder=self.identity, term=self.terms)
        for listener in self._listeners:
            listener(True)

    def lost(self, reason: str, *, holder: str = "") -> None:
        """The term ends: writers stop at once; ``holder`` is who holds the lease now, if known."""
        if not self.is_leader:
            return
        self._leading.clear()
        self._following.set()
        self.log.warning("leader.lost", lease=self.lease, holder=holder, reason=reason, me=self.identity)
        for listener in self._listeners:
            listener(False)

    async def wait_leading(self) -> None:
        """Returns when a term starts (at once during one)."""
        await self._leading.wait()

    async def wait_following(self) -> None:
        """Returns when the term ends (at once outside one)."""
        await self._following.wait()


class Elector(Protocol):
    """Runs an election until cancelled, driving its :class:`Leadership`; releases what it holds
    when cancelled."""

    leadership: Leadership

    async def run(self) -> None:
        """Campaigns, leads, and campaigns again after a lost term; until cancelled."""
        ...


async def run_while_leading(
    leadership: Leadership,
    *jobs: Callable[[], Awaitable[None]],
    restart_after: float = 1.0,
    sleep: Sleep = asyncio.sleep,
) -> None:
    """Runs ``jobs`` during each term, cancelled when it ends; until cancelled itself. A job that
    fails is logged and started again after ``restart_after`` seconds (a leader whose writer died
    would otherwise hold the lease and write nothing)."""
    while True:
        await leadership.wait_leading()
        tasks = [asyncio.ensure_future(_supervised(job, leadership, restart_after, sleep)) for job in jobs]
        try:
            await leadership.wait_following()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _supervised(
    job: Callable[[], Awaitable[None]], leadership: Leadership, restart_after: float, sleep: Sleep
) -> None:
    while True:
        try:
            await job()
            return
        except Exception as exc:  # any failure: logged, the job restarted
            leadership.log.error(
                "leader.job_failed",
                lease=leadership.lease,
                job=getattr(job, "__qualname__", repr(job)),
                error=repr(exc),
            )
        await sleep(restart_after)


class AlwaysLeader:
    """No election (one replica, or ``--no-leader-election``): leads from start to cancel."""

    def __init__(self, leadership: Leadership) -> None:
        self.leadership = leadership

    async def run(self) -> None:
        """Leads until cancelled."""
        self.leadership.acquired()
        try:
            await asyncio.Event().wait()
        finally:
            self.leadership.lost("stopping")


class FileLockElector:
    """The lab's election: an exclusive ``flock`` on a file in the lab's state directory.

    The kernel holds the lock for the leader's lifetime and drops it when the process dies, however
    it dies, so a follower (trying every ``retry_period``) takes over within one period and there is
    no lease to expire. The holder's identity is written into the file for whoever wonders. If the
    file is replaced (the state directory was recreated), the lock guards nothing any more: the
    leader notices within one period, steps down and campaigns on the new file.
    """

    def __init__(
        self,
        path: Path,
        leadership: Leadership,
        *,
        retry_period: float = 1.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.leadership = leadership
        self._path = path
        self._retry = retry_period
        self._sleep = sleep

    async def run(self) -> None:
        """Campaigns and leads until cancelled; unlocks on the way out."""
        while True:
            fd = await self._lock()
            try:
                self.leadership.acquired()
                while self._still_ours(fd):
                    await self._sleep(self._retry)
                self.leadership.lost("the lock file was replaced")
            finally:
                self.leadership.lost("stopping")
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                os.close(fd)  # closing the last descriptor releases the lock

    async def _lock(self) -> int:
        while True:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                await self._sleep(self._retry)
                continue
            except BaseException:
                os.close(fd)
                raise
            if not self._still_ours(fd):  # replaced between open and lock: lock the new one
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{self.leadership.identity}\n".encode(), 0)
            return fd

    def _still_ours(self, fd: int) -> bool:
        try:
            on_disk = os.stat(self._path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)
