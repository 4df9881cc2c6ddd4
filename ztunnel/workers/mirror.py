"""The xDS resources ztunnel accepted, kept as istiod sent them, to hand to its worker processes.

The parent holds the one xDS stream. Its converters are wrapped so that each resource it accepts
is also kept in its serialized protobuf form; after each update :meth:`ResourceMirror.publish`
says what changed since the workers' last update, as ``DeltaDiscoveryResponse`` messages (the
resources with their names and versions, and the names removed). A worker applies them with the
same conversion code the parent uses (:func:`mesh.rt.xds.apply_response`), so both hold the
same state; a new worker gets :meth:`ResourceMirror.snapshot`. No internals are pickled.
"""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from mesh.rt.xds import Converter, XdsState

__all__ = ["ResourceMirror"]


class ResourceMirror:
    """Per type URL: the accepted resources' serialized bytes, and what the workers were given."""

    def __init__(self) -> None:
        self._latest: dict[str, dict[str, bytes]] = {}
        self._published: dict[str, dict[str, tuple[str, bytes]]] = {}

    def recording(self, type_url: str, convert: Converter) -> Converter:
        """``convert``, also keeping each resource it accepts (one that raises is not kept, so the
        last good value stays, as in the parent's own state)."""
        latest = self._latest.setdefault(type_url, {})

        def converter(name: str, packed: any_pb2.Any) -> object:
            value = convert(name, packed)
            latest[name] = packed.value
            return value

        return converter

    def publish(self, state: XdsState) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        """What changed in ``state`` since the last call, one response per type URL that changed."""
        changes = []
        for type_url, latest in self._latest.items():
            current = state.of_type(type_url)
            versions = state.versions.get(type_url, {})
            published = self._published.setdefault(type_url, {})
            response = discovery_pb2.DeltaDiscoveryResponse(type_url=type_url)
            for name in current:
                value = (versions.get(name, ""), latest[name])
                if published.get(name) != value:
                    published[name] = value
                    _add(response, type_url, name, value)
            gone = [name for name in published if name not in current]
            for name in gone:
                del published[name]
                latest.pop(name, None)
            response.removed_resources.extend(gone)
            if response.resources or response.removed_resources:
                changes.append(response)
        return changes

    def snapshot(self) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        """Everything published so far, one response per type URL (for a worker that just started)."""
        snapshot = []
        for type_url, published in self._published.items():
            response = discovery_pb2.DeltaDiscoveryResponse(type_url=type_url)
            for name, value in published.items():
                _add(response, type_url, name, value)
            snapshot.append(response)
        return snapshot


def _add(
    response: discovery_pb2.DeltaDiscoveryResponse, type_url: str, name: str, value: tuple[str, bytes]
) -> None:
    version, data = value
    resource = response.resources.add(name=name, version=version)
    resource.resource.type_url = type_url
    resource.resource.value = data
