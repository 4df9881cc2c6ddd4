"""Leader election on a ``coordination.k8s.io/v1`` Lease, with client-go's semantics (as istiod's
``istio-gateway-deployment`` and status leaders use it).

One attempt (:meth:`LeaseElector.try_acquire_or_renew`) reads the Lease and:

- creates it, holding it, when it is absent;
- leaves it alone while another holder's lease is live: "live" is measured, as client-go does, on
  this process's monotonic clock from the moment it last saw the Lease change (``renewTime`` is
  another machine's wall clock, so comparing it with ours would make clock skew decide who leads);
- takes it over once it went unchanged for ``leaseDurationSeconds``, or was released (no holder),
  counting ``leaseTransitions``;
- renews it when it is ours (``renewTime`` moves, ``acquireTime`` stays).

Every write is an update carrying the ``resourceVersion`` read, so two replicas racing for the
same Lease cannot both win: the loser's write answers 409 Conflict, which is an ordinary lost
round, not an error. The leader renews every retry period; when it has not managed to for
``renew_deadline`` (shorter than the lease, so no one may have taken over yet), or it sees another
holder, it stops leading at once. Cancelled while leading, it releases the Lease (no holder,
``leaseDurationSeconds: 1``, client-go's ``ReleaseOnCancel``) so a follower takes over within one
retry period instead of a whole lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import structlog
import urllib3
from kubernetes.client import ApiException

from mesh.clock import Clock
from mesh.rt.election import JITTER, ElectionSettings, Leadership, Sleep
from mesh.rt.kube.rbac import ApiCall

__all__ = ["API_CALLS", "LeaseElector", "LeaseRecord"]

API_CALLS = (ApiCall("coordination.k8s.io", "leases", ("create", "get", "update"), own_namespace=True),)
"""The elector reads, creates and updates one Lease in the component's own namespace."""
_GROUP_VERSION = "coordination.k8s.io/v1"
_TIMEOUT = (3.0, 5.0)


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """What a Lease's spec says about its holder."""

    holder: str = ""
    lease_duration: int = 0
    acquire_time: str = ""
    renew_time: str = ""
    transitions: int = 0

    @classmethod
    def from_spec(cls, spec: Any) -> LeaseRecord:
        """Reads a Lease's spec; a missing or malformed field reads as client-go's zero value."""
        spec = spec if isinstance(spec, Mapping) else {}

        def number(key: str) -> int:
            value = spec.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else 0

        def text(key: str) -> str:
            value = spec.get(key)
            return value if isinstance(value, str) else ""

        return cls(
            holder=text("holderIdentity"),
            lease_duration=number("leaseDurationSeconds"),
            acquire_time=text("acquireTime"),
            renew_time=text("renewTime"),
            transitions=number("leaseTransitions"),
        )

    def spec(self) -> dict[str, Any]:
        """The Lease spec that says this."""
        return {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.lease_duration,
            "acquireTime": self.acquire_time,
            "renewTime": self.renew_time,
            "leaseTransitions": self.transitions,
        }


def _micro_time(now: float) -> str:
    """A ``MicroTime`` (RFC 3339 with microseconds), as the Lease's times are."""
    return dt.datetime.fromtimestamp(now, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    """Campaigns for, holds and releases one Lease; drives a :class:`Leadership`.

    ``api`` is a ``kubernetes.client.ApiClient``; its calls block, so attempts run in worker threads.
    """

    def __init__(
        self,
        api: Any,
        leadership: Leadership,
        *,
        namespace: str,
        settings: ElectionSettings,
        clock: Clock,
        rng: random.Random,
        sleep: Sleep = asyncio.sleep,
        logger: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        self.leadership = leadership
        self._api = api
        self._namespace = namespace
        self._path = f"/apis/{_GROUP_VERSION}/namespaces/{namespace}/leases/{leadership.lease}"
        self._settings = settings
        self._clock = clock
        self._rng = rng
        self._sleep = sleep
        self._log = logger or structlog.get_logger().bind(component="election")
        self._observed: tuple[LeaseRecord, str] | None = None
        """The Lease as last read or written (record, resourceVersion)."""
        self._observed_at = 0.0
        """When (monotonic) the record last changed, as far as this process saw."""
        self._rounds = threading.Lock()
        """One round at a time: a release waits for a renewal still in flight (cancelled or timed
        out on the loop, it goes on in its thread) instead of racing it."""

    @property
    def holder(self) -> str:
        """Who holds the Lease, as last seen ("" when free or not read yet)."""
        return self._observed[0].holder if self._observed else ""

    async def run(self) -> None:
        """Campaigns, leads until a term is lost, campaigns again; until cancelled, then releases."""
        try:
            while True:
                await self._campaign()
                self.leadership.acquired()
                await self._lead()
        finally:
            if self.leadership.is_leader:
                self.leadership.lost("stopping")  # the writers stop before the lease goes
                await asyncio.to_thread(self.release)

    async def _campaign(self) -> None:
        while not await asyncio.to_thread(self.try_acquire_or_renew):
            await self._sleep(self._settings.retry_period * (1 + self._rng.random() * JITTER))

    async def _lead(self) -> None:
        """Renews every retry period; returns when the term is lost."""
        renewed = self._clock.monotonic()
        while True:
            await self._sleep(self._settings.retry_period)
            deadline = renewed + self._settings.renew_deadline
            ok = False
            with contextlib.suppress(TimeoutError):  # a hung call must not outlive the deadline
                async with asyncio.timeout(max(deadline - self._clock.monotonic(), 0.0)):
                    ok = await asyncio.to_thread(self.try_acquire_or_renew)
            if ok:
                renewed = self._clock.monotonic()
            elif self.holder not in ("", self.leadership.identity):
                self.leadership.lost("another replica holds the lease", holder=self.holder)
                return
            elif self._clock.monotonic() >= deadline:
                self.leadership.lost(f"not renewed within {self._settings.renew_deadline:g} s")
                return

    def try_acquire_or_renew(self) -> bool:
        """One round (blocking): True when this process holds the Lease afterwards."""
        with self._rounds:
            return self._round()

    def _round(self) -> bool:
        now, mono = self._clock.now(), self._clock.monotonic()
        status, body = self._call("GET", self._path)
        if status == 404:
            mine = LeaseRecord(
                holder=self.leadership.identity,
                lease_duration=int(self._settings.lease_duration),
                acquire_time=_micro_time(now),
                renew_time=_micro_time(now),
            )
            return self._write("POST", self._path.rsplit("/", 1)[0], mine, "", mono)
        if status != 200:
            return False
        try:
            lease = json.loads(body)
            current = LeaseRecord.from_spec(lease.get("spec"))
            version = str(lease["metadata"]["resourceVersion"])
        except (ValueError, KeyError, TypeError, AttributeError):
            answer = body[:200].decode(errors="replace")
            self._log.warning("leader.unreadable_lease", path=self._path, answer=answer)
            return False
        if self._observed is None or self._observed[0] != current:
            self._observed_at = mono
        self._observed = (current, version)
        ours = current.holder == self.leadership.identity
        live = self._observed_at + current.lease_duration > mono
        if current.holder and live and not ours:
            return False
        mine = replace(
            current,
            holder=self.leadership.identity,
            lease_duration=int(self._settings.lease_duration),
            renew_time=_micro_time(now),
            acquire_time=current.acquire_time if ours else _micro_time(now),
            transitions=current.transitions if ours else current.transitions + 1,
        )
        return self._write("PUT", self._path, mine, version, mono)

    def release(self) -> bool:
        """Gives the Lease up if this process holds it (blocking); True when released."""
        with self._rounds:
            return self._release()

    def _release(self) -> bool:
        if self._observed is None or self._observed[0].holder != self.leadership.identity:
            return False
        record, version = self._observed
        now = _micro_time(self._clock.now())
        freed = replace(record, holder="", lease_duration=1, acquire_time=now, renew_time=now)
        released = self._write("PUT", self._path, freed, version, self._clock.monotonic())
        if released:
            self._log.info("leader.released", lease=self.leadership.lease, holder=self.leadership.identity)
        return released

    def _write(self, method: str, path: str, record: LeaseRecord, version: str, mono: float) -> bool:
        metadata: dict[str, Any] = {"name": self.leadership.lease, "namespace": self._namespace}
        if version:
            metadata["resourceVersion"] = version
        lease = {"apiVersion": _GROUP_VERSION, "kind": "Lease", "metadata": metadata, "spec": record.spec()}
        status, body = self._call(method, path, lease)
        if status not in (200, 201):  # 409: another replica wrote first and won this round
            return False
        try:
            version = str(json.loads(body)["metadata"]["resourceVersion"])
        except (ValueError, KeyError, TypeError):
            version = ""  # the next round reads it again
        self._observed, self._observed_at = (record, version), mono
        return True

    def _call(self, method: str, path: str, body: object = None) -> tuple[int, bytes]:
        """(status, body); 0 when the API could not be reached (logged)."""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            method, url, header_params, serialized, _ = self._api.param_serialize(
                method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
            )
            response = self._api.call_api(
                method, url, header_params=header_params, body=serialized, _request_timeout=_TIMEOUT
            ).response
            status, answer = int(response.status), bytes(response.data or b"")
        except (urllib3.exceptions.HTTPError, ApiException, OSError) as exc:
            self._log.warning("leader.api_unreachable", method=method, path=path, error=str(exc))
            return 0, b""
        if status not in (200, 201, 404, 409):
            self._log.warning("leader.api_error", method=method, path=path, status=status)
        return status, answer
