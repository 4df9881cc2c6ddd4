"""Pure delta computation: which resources a client lacks or has stale, and which it must drop."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from istiod_lite.push.snapshot import ResourceSet, VersionedResource

__all__ = ["Delta", "DiffCache", "Subscription", "delta_from_versions", "diff_sets"]

WILDCARD = "*"


@dataclass(frozen=True, slots=True)
class Subscription:
    """A client's subscription for one type URL: wildcard and/or explicit names."""

    wildcard: bool
    names: frozenset[str] = frozenset()

    @classmethod
    def initial(cls, subscribe: Iterable[str]) -> Subscription:
        """The first request's subscription: empty or ``*`` means wildcard (xDS protocol)."""
        names = frozenset(subscribe)
        return cls(wildcard=not names or WILDCARD in names, names=names - {WILDCARD})

    def changed(self, *, subscribe: Iterable[str], unsubscribe: Iterable[str]) -> Subscription:
        """The subscription after a later request's subscribe/unsubscribe lists."""
        add, drop = frozenset(subscribe), frozenset(unsubscribe)
        wildcard = (self.wildcard or WILDCARD in add) and WILDCARD not in drop
        return Subscription(wildcard=wildcard, names=(self.names | add) - drop - {WILDCARD})

    def select(self, resources: ResourceSet) -> ResourceSet:
        """The part of ``resources`` this subscription covers (the same object when wildcard)."""
        if self.wildcard:
            return resources
        return MappingProxyType({n: resources[n] for n in self.names if n in resources})


@dataclass(frozen=True, slots=True)
class Delta:
    """What to send: resources to add or update, and names to remove.

    ``upserts_wire`` is the encoded ``resources`` entries, joined once: a delta shared by many
    subscribers (see ``DiffCache``) is encoded once, not once per subscriber.
    """

    upserts: tuple[VersionedResource, ...]
    removed: tuple[str, ...]
    upserts_wire: bytes = field(default=b"", compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "upserts_wire", b"".join(r.wire for r in self.upserts))

    @property
    def empty(self) -> bool:
        """True when there is nothing to send."""
        return not self.upserts and not self.removed


def _stale(held: VersionedResource | None, wanted: VersionedResource) -> bool:
    return held is not wanted and (held is None or held.version != wanted.version)


def diff_sets(old: ResourceSet, new: ResourceSet) -> Delta:
    """The delta that turns a client holding exactly ``old`` into one holding ``new``."""
    upserts = tuple(r for name, r in new.items() if _stale(old.get(name), r))
    removed = tuple(name for name in old if name not in new)
    return Delta(upserts=upserts, removed=removed)


def delta_from_versions(known: Mapping[str, str], new: ResourceSet) -> Delta:
    """The delta for a client that reported ``known`` (``initial_resource_versions``) on reconnect."""
    upserts = tuple(r for name, r in new.items() if known.get(name) != r.version)
    removed = tuple(name for name in known if name not in new)
    return Delta(upserts=upserts, removed=removed)


class DiffCache:
    """Shares ``diff_sets`` results between subscribers that hold the same set (the common case).

    Keys are object identities; entries keep both sets alive, so an id is never reused while cached.
    """

    def __init__(self, *, size: int = 16) -> None:
        self._size = size
        self._entries: OrderedDict[tuple[int, int], tuple[ResourceSet, ResourceSet, Delta]] = OrderedDict()

    def diff(self, old: ResourceSet, new: ResourceSet) -> Delta:
        """``diff_sets(old, new)``, computed once per pair of sets."""
        key = (id(old), id(new))
        entry = self._entries.get(key)
        if entry is not None and entry[0] is old and entry[1] is new:
            self._entries.move_to_end(key)
            return entry[2]
        delta = diff_sets(old, new)
        self._entries[key] = (old, new, delta)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return delta
