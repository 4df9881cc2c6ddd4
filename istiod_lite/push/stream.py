"""The Delta ADS protocol for one stream, as a pure state machine (no I/O, time passed in).

Requests in (already decoded into ``DeltaRequest``), ``Response`` plans out. Per type URL it
keeps the subscription, what the client holds (optimistically: what was last sent to it, or
the versions it reported on reconnect), the nonces in flight, and the last ACK and NACK.
A NACK is recorded and nothing is resent for it: a rejected resource goes out again only when
its content (hence its version) changes in a later snapshot.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from istiod_lite.push._wire import encode_response
from istiod_lite.push.delta import Delta, DiffCache, Subscription, delta_from_versions, diff_sets
from istiod_lite.push.projection import Projection, Subscriber
from istiod_lite.push.snapshot import ResourceSet, Snapshot

__all__ = ["Ack", "DeltaRequest", "Nack", "Response", "StreamState", "TypeStatus"]

_MAX_IN_FLIGHT = 32


@dataclass(frozen=True, slots=True)
class DeltaRequest:
    """The fields of a DeltaDiscoveryRequest the server acts on."""

    type_url: str
    subscribe: tuple[str, ...] = ()
    unsubscribe: tuple[str, ...] = ()
    initial_versions: Mapping[str, str] = field(default_factory=dict)
    response_nonce: str = ""
    error: str | None = None  # error_detail.message when the request is a NACK


@dataclass(frozen=True, slots=True)
class Response:
    """A response to write: one type URL, a nonce, and the delta against the client's state."""

    type_url: str
    nonce: str
    version: str
    delta: Delta

    def encode(self) -> bytes:
        """The serialized DeltaDiscoveryResponse."""
        return encode_response(
            system_version_info=self.version,
            resource_entries=(self.delta.upserts_wire,),
            type_url=self.type_url,
            nonce=self.nonce,
            removed_resources=self.delta.removed,
        )


@dataclass(frozen=True, slots=True)
class Ack:
    """A version the client accepted."""

    version: str
    nonce: str
    at: float


@dataclass(frozen=True, slots=True)
class Nack:
    """A version the client rejected, with its error_detail message."""

    version: str
    nonce: str
    at: float
    error: str


@dataclass(frozen=True, slots=True)
class TypeStatus:
    """What /debug/syncz shows for one type URL of one stream."""

    type_url: str
    wildcard: bool
    names: tuple[str, ...]
    sent_version: str
    sent_nonce: str
    sent_at: float | None
    resources: int
    acked: Ack | None
    nacked: Nack | None


@dataclass(slots=True)
class _TypeState:
    subscription: Subscription
    initial_versions: Mapping[str, str]
    holds: ResourceSet | None = None  # what the client has, once anything was sent
    in_flight: OrderedDict[str, str] = field(default_factory=OrderedDict)  # nonce -> version
    sent_version: str = ""
    sent_nonce: str = ""
    sent_at: float | None = None
    acked: Ack | None = None
    nacked: Nack | None = None


class StreamState:
    """Protocol state of one Delta ADS stream."""

    def __init__(self, subscriber: Subscriber, projection: Projection, *, diffs: DiffCache) -> None:
        self.subscriber = subscriber
        self._projection = projection
        self._diffs = diffs
        self._types: dict[str, _TypeState] = {}
        self._nonces = itertools.count(1)

    def on_request(self, request: DeltaRequest, snapshot: Snapshot, *, now: float) -> tuple[Response, ...]:
        """Applies an ACK/NACK and subscription changes; returns what to send now."""
        state = self._types.get(request.type_url)
        if request.response_nonce and state is not None:
            self._record_reply(state, request, now)
        if state is None:
            state = _TypeState(
                subscription=Subscription.initial(request.subscribe),
                initial_versions=dict(request.initial_versions),
            )
            self._types[request.type_url] = state
            return self._respond(request.type_url, state, snapshot, now=now, initial=True)
        if not request.subscribe and not request.unsubscribe:
            return ()
        return self._resubscribe(request, state, snapshot, now=now)

    def on_snapshot(self, snapshot: Snapshot, *, now: float) -> tuple[Response, ...]:
        """The responses that bring every subscribed type up to ``snapshot``."""
        out: list[Response] = []
        for type_url, state in self._types.items():
            out.extend(self._respond(type_url, state, snapshot, now=now, initial=state.holds is None))
        return tuple(out)

    def last_nack(self, type_url: str) -> Nack | None:
        """The last NACK for ``type_url`` on this stream."""
        state = self._types.get(type_url)
        return state.nacked if state else None

    def status(self) -> tuple[TypeStatus, ...]:
        """Per type URL: subscription, last sent, last ACK, last NACK."""
        return tuple(
            TypeStatus(
                type_url=type_url,
                wildcard=s.subscription.wildcard,
                names=tuple(sorted(s.subscription.names)),
                sent_version=s.sent_version,
                sent_nonce=s.sent_nonce,
                sent_at=s.sent_at,
                resources=len(s.holds) if s.holds is not None else 0,
                acked=s.acked,
                nacked=s.nacked,
            )
            for type_url, s in sorted(self._types.items())
        )

    def _record_reply(self, state: _TypeState, request: DeltaRequest, now: float) -> None:
        version = state.in_flight.pop(request.response_nonce, None)
        if version is None:
            return  # a reply to a nonce we no longer track (superseded); nothing to record
        if request.error is None:
            state.acked = Ack(version=version, nonce=request.response_nonce, at=now)
        else:
            state.nacked = Nack(version=version, nonce=request.response_nonce, at=now, error=request.error)

    def _target(self, type_url: str, state: _TypeState, snapshot: Snapshot) -> ResourceSet:
        projected = self._projection(self.subscriber, snapshot)
        return state.subscription.select(projected.get(type_url, _EMPTY))

    def _respond(
        self, type_url: str, state: _TypeState, snapshot: Snapshot, *, now: float, initial: bool
    ) -> tuple[Response, ...]:
        if snapshot.counter == 0:
            return ()  # nothing built yet: the first snapshot answers the initial request
        target = self._target(type_url, state, snapshot)
        if state.holds is None and not state.initial_versions and state.subscription.wildcard:
            delta = self._diffs.diff(_EMPTY, target)  # a new agent: the full state, shared
        elif state.holds is None:
            delta = delta_from_versions(state.initial_versions, target)
        elif state.subscription.wildcard:
            delta = self._diffs.diff(state.holds, target)
        else:
            delta = diff_sets(state.holds, target)
        if delta.empty and not initial:
            return ()
        return (self._sent(type_url, state, target, delta, version=snapshot.version, now=now),)

    def _resubscribe(
        self, request: DeltaRequest, state: _TypeState, snapshot: Snapshot, *, now: float
    ) -> tuple[Response, ...]:
        before = state.subscription
        state.subscription = before.changed(subscribe=request.subscribe, unsubscribe=request.unsubscribe)
        if state.holds is not None and not state.subscription.wildcard:
            kept = {n: r for n, r in state.holds.items() if n in state.subscription.names}
            state.holds = kept  # unsubscribed names are forgotten, not removed (xDS protocol)
        if state.holds is None or snapshot.counter == 0:
            return ()
        target = self._target(type_url := request.type_url, state, snapshot)
        delta = diff_sets(state.holds, target)
        missing = tuple(
            n for n in request.subscribe if n not in target and n not in delta.removed and n != "*"
        )
        delta = Delta(upserts=delta.upserts, removed=delta.removed + missing)
        if delta.empty:
            return ()
        return (self._sent(type_url, state, target, delta, version=snapshot.version, now=now),)

    def _sent(
        self, type_url: str, state: _TypeState, target: ResourceSet, delta: Delta, *, version: str, now: float
    ) -> Response:
        nonce = f"{next(self._nonces)}"
        state.holds = target
        state.in_flight[nonce] = version
        while len(state.in_flight) > _MAX_IN_FLIGHT:
            state.in_flight.popitem(last=False)
        state.sent_version, state.sent_nonce, state.sent_at = version, nonce, now
        return Response(type_url=type_url, nonce=nonce, version=version, delta=delta)


_EMPTY: ResourceSet = {}
