"""ztunnel's xDS types: how each resource is converted, and the proxy state built from them.

Shared by the ztunnel process (which holds the xDS stream) and its worker processes (which apply
the same resources the parent accepted, see :mod:`ztunnel.workers.mirror`).
"""

from __future__ import annotations

import functools

from mesh.api.istio.security import authorization_pb2
from mesh.api.istio.workload import workload_pb2
from mesh.convert import IgnoredFieldReporter, address_from_proto, authorization_from_proto
from mesh.model import Authorization, Service, Workload
from mesh.rt.xds import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, Converter, XdsState, unpacking
from ztunnel.state import ProxyState

__all__ = ["converters", "state_from_xds"]


def converters(on_ignored: IgnoredFieldReporter | None) -> dict[str, Converter]:
    """The converter of each type URL ztunnel subscribes to; ignored fields go to ``on_ignored``."""
    return {
        ADDRESS_TYPE_URL: unpacking(
            workload_pb2.Address, functools.partial(address_from_proto, on_ignored=on_ignored)
        ),
        AUTHORIZATION_TYPE_URL: unpacking(
            authorization_pb2.Authorization,
            functools.partial(authorization_from_proto, on_ignored=on_ignored),
        ),
    }


def state_from_xds(xds: XdsState) -> ProxyState:
    """The proxy state from the converted xDS resources."""
    addresses = xds.of_type(ADDRESS_TYPE_URL).values()
    return ProxyState.build(
        workloads=[a for a in addresses if isinstance(a, Workload)],
        services=[a for a in addresses if isinstance(a, Service)],
        policies=[p for p in xds.of_type(AUTHORIZATION_TYPE_URL).values() if isinstance(p, Authorization)],
    )
