"""ztunnel's view of the mesh: an immutable, indexed snapshot of the xDS state.

A new ``ProxyState`` is built whole on every config update and swapped in with one reference;
a connection reads the state once when it is accepted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from mesh.model import Authorization, IpAddress, Service, Workload

__all__ = ["ProxyState"]


@dataclass(frozen=True, slots=True)
class ProxyState:
    """Workloads, services and policies with the lookups the data path needs."""

    workloads: Mapping[str, Workload] = field(default_factory=dict)
    services: Mapping[str, Service] = field(default_factory=dict)
    policies: Mapping[str, Authorization] = field(default_factory=dict)
    _by_address: Mapping[tuple[str, IpAddress], Workload] = field(default_factory=dict)
    _by_vip: Mapping[tuple[str, IpAddress], Service] = field(default_factory=dict)
    _endpoints: Mapping[str, tuple[Workload, ...]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        *,
        workloads: Iterable[Workload] = (),
        services: Iterable[Service] = (),
        policies: Iterable[Authorization] = (),
    ) -> ProxyState:
        """Indexes the given resources."""
        by_uid = {w.uid: w for w in workloads}
        by_key = {s.key: s for s in services}
        by_address = {(w.network, ip): w for w in by_uid.values() for ip in w.addresses}
        by_vip = {(network, ip): s for s in by_key.values() for network, ip in s.vips}
        endpoints: dict[str, list[Workload]] = {}
        for workload in sorted(by_uid.values(), key=lambda w: w.uid):
            for service_key, _ in workload.services:
                endpoints.setdefault(service_key, []).append(workload)
        return cls(
            workloads=MappingProxyType(by_uid),
            services=MappingProxyType(by_key),
            policies=MappingProxyType({p.key: p for p in policies}),
            _by_address=MappingProxyType(by_address),
            _by_vip=MappingProxyType(by_vip),
            _endpoints=MappingProxyType({k: tuple(v) for k, v in endpoints.items()}),
        )

    def workload_at(self, ip: IpAddress, *, network: str = "") -> Workload | None:
        """The workload that owns ``ip`` on ``network``."""
        return self._by_address.get((network, ip))

    def service_at(self, ip: IpAddress, *, network: str = "") -> Service | None:
        """The service whose VIP is ``ip``."""
        return self._by_vip.get((network, ip)) or self._by_vip.get(("", ip))

    def service_by_host(self, hostname: str) -> Service | None:
        """The service with this FQDN (e.g. from the ``forwarded`` header's ``host=``)."""
        for service in self.services.values():
            if service.hostname == hostname:
                return service
        return None

    def endpoints(self, service_key: str) -> tuple[Workload, ...]:
        """The workloads that back a service, sorted by uid."""
        return self._endpoints.get(service_key, ())

    def workloads_on_node(self, node: str) -> list[Workload]:
        """The workloads scheduled on ``node`` (for certificate prefetch)."""
        return [w for w in self.workloads.values() if w.node == node]
