"""Immutable, versioned config snapshots.

A snapshot holds, per type URL, every resource by name with a content version: the first
16 hex digits of the SHA-256 of the resource's deterministic serialization. Equal content
gives an equal version across snapshots and restarts, which is what lets a reconnecting agent
(``initial_resource_versions``) skip what it already has. The snapshot version is a counter
plus the build time, like istiod's push versions.

A resource set meant for one subscriber only (a waypoint's routes and clusters) is kept under a
*scoped* key, ``<type URL>@<scope>`` (``scoped_type``); its resources go on the wire with the
type URL before the ``@``, and a projection picks the scope that belongs to its subscriber.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf.message import Message

from istiod_lite.push._wire import encode_resource_entry
from istiod_lite.push.errors import PushError

__all__ = [
    "SCOPE_SEPARATOR",
    "ResourceSet",
    "Snapshot",
    "VersionedResource",
    "build_snapshot",
    "empty_snapshot",
    "resource_version",
    "scoped_type",
    "version_resources",
]

SCOPE_SEPARATOR = "@"


def scoped_type(type_url: str, scope: str) -> str:
    """The snapshot key of ``type_url`` resources for one scope, e.g. a waypoint ``<ns>/<name>``."""
    return f"{type_url}{SCOPE_SEPARATOR}{scope}"


@dataclass(frozen=True, slots=True)
class VersionedResource:
    """One resource ready to send: its name, content version and serialized message bytes."""

    name: str
    version: str
    type_url: str
    payload: bytes
    wire: bytes  # the encoded ``resources`` entry of a DeltaDiscoveryResponse, built once
    source: Message | None = field(default=None, compare=False, repr=False)
    """The message it was built from: handed in again (the same object), it is not re-serialized."""


ResourceSet = Mapping[str, VersionedResource]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the controller would send, per type URL, at one point in time."""

    counter: int
    created_at: float
    resources: Mapping[str, ResourceSet]

    @property
    def version(self) -> str:
        """``<UTC time>/<counter>``, e.g. ``2027-01-15T08:00:00Z/7`` (istiod's style)."""
        stamp = datetime.datetime.fromtimestamp(self.created_at, tz=datetime.UTC)
        return f"{stamp.strftime('%Y-%m-%dT%H:%M:%SZ')}/{self.counter}"

    def of_type(self, type_url: str) -> ResourceSet:
        """The resources of ``type_url`` (empty when the snapshot has none)."""
        return self.resources.get(type_url, _EMPTY)


_EMPTY: ResourceSet = MappingProxyType({})


def resource_version(payload: bytes) -> str:
    """The content version of a serialized resource."""
    return hashlib.sha256(payload).hexdigest()[:16]


def _versioned(name: str, type_url: str, payload: bytes, source: Message) -> VersionedResource:
    version = resource_version(payload)
    wire = encode_resource_entry(name=name, version=version, type_url=type_url, payload=payload)
    return VersionedResource(
        name=name, version=version, type_url=type_url, payload=payload, wire=wire, source=source
    )


def version_resources(
    type_url: str,
    messages: Mapping[str, Message],
    *,
    previous: ResourceSet = _EMPTY,
) -> ResourceSet:
    """Serializes and versions ``messages``; unchanged entries of ``previous`` are reused as they are.

    A message that is the very object of the previous snapshot is reused without serializing it
    (the translator hands unchanged resources back as the same objects; messages are never
    mutated once built). A scoped ``type_url`` (``scoped_type``) is sent as its plain type URL."""
    type_url = type_url.partition(SCOPE_SEPARATOR)[0]
    expected = type_url.rpartition("/")[2]
    out: dict[str, VersionedResource] = {}
    for name, message in messages.items():
        if not name:
            raise PushError(f"a {type_url} resource has an empty name", hint="give every resource a name")
        full_name = message.DESCRIPTOR.full_name
        if full_name != expected:
            raise PushError(
                f"resource {name!r} is a {full_name}, not the {expected} its type URL {type_url} says",
                hint="put each message under its own type URL",
            )
        old = previous.get(name)
        if old is not None and old.source is message:
            out[name] = old
            continue
        payload = message.SerializeToString(deterministic=True)
        if old is not None and old.payload == payload:
            out[name] = old
        else:
            out[name] = _versioned(name, type_url, payload, message)
    return MappingProxyType(out)


def build_snapshot(
    messages: Mapping[str, Mapping[str, Message]],
    *,
    counter: int,
    now: float,
    previous: Snapshot | None = None,
) -> Snapshot:
    """A new snapshot from ``type URL -> name -> message``, reusing unchanged entries of ``previous``."""
    resources = {
        type_url: version_resources(
            type_url, by_name, previous=previous.of_type(type_url) if previous else _EMPTY
        )
        for type_url, by_name in messages.items()
    }
    return Snapshot(counter=counter, created_at=now, resources=MappingProxyType(resources))


def empty_snapshot(*, now: float) -> Snapshot:
    """The snapshot before the first build (counter 0, no resources)."""
    return Snapshot(counter=0, created_at=now, resources=MappingProxyType({}))
