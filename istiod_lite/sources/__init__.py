"""Where istiod_lite learns about the cluster: the interface every source writes through.

A source (``file.FileSource`` over the lab's state directory, ``kube.KubeSource`` over the
Kubernetes API) lists every kind once, calls ``CacheSink.replace`` per kind and then
``CacheSink.mark_synced``, and from then on sends single changes with ``upsert``/``delete``.
After a re-list (a watch that expired) it calls ``replace`` again, which also removes what
disappeared while it was not watching. Sinks are called on the event loop thread only.

``istiod_lite.view.Informers.sink(name)`` is the implementation. The heavy sources are not
imported here: ``istiod_lite.sources.kube`` pulls in the kubernetes client.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from istiod_lite.sources.objects import KubeObject

__all__ = ["CacheSink", "Source"]


class CacheSink(Protocol):
    """The write side of the informer caches, bound to one source."""

    def upsert(self, obj: KubeObject) -> None:
        """Adds or replaces one object."""
        ...

    def delete(self, kind: str, namespace: str, name: str) -> None:
        """Removes one object; a no-op when it is unknown."""
        ...

    def replace(self, kind: str, objects: Iterable[KubeObject]) -> None:
        """Makes ``objects`` everything of ``kind`` that this source provides."""
        ...

    def mark_synced(self) -> None:
        """Says the initial list of every kind is in the caches."""
        ...


class Source(Protocol):
    """A long-running feeder of one ``CacheSink``."""

    async def run(self) -> None:
        """Lists, then follows changes until cancelled."""
        ...
