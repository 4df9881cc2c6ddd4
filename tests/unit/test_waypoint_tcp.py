"""How a waypoint serves a tunnelled Service port: HTTP, TCP passthrough, or sniffed (both clusters
exist); and what counts as HTTP's first bytes."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Mapping
from types import MappingProxyType

import pytest

from mesh.l7.balancing import Endpoint, EndpointPicker
from mesh.model import Service, Workload
from mesh.rt.metrics import build_registry
from mesh.rt.tcp_metrics import TcpMetrics
from waypoint.config import WaypointConfig
from waypoint.tcp import PortRoute, TcpPassthrough, looks_like_http
from waypoint.telemetry import AddressBook

HOST = "db.shop.svc.cluster.local"
SERVICE = Service("db", "shop", HOST, vips=(("", ipaddress.ip_address("10.96.0.50")),), ports=())


@pytest.mark.parametrize(
    ("first", "http"),
    [
        (b"GET / HTTP/1.1\r\n", True),
        (b"POST /x HTTP/1.1\r\n", True),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", True),
        (b"*1\r\n$4\r\nPING\r\n", False),  # redis
        (b"\x16\x03\x01\x02\x00", False),  # a TLS client hello
        (b"", False),  # nothing (a server-first protocol)
        (b"GETX", False),
    ],
)
def test_the_first_bytes_of_http(first: bytes, http: bool) -> None:
    assert looks_like_http(first) is http


@pytest.mark.parametrize(
    ("clusters", "authority", "expected"),
    [
        ({f"inbound-vip|6379|tcp|{HOST}"}, "10.96.0.50:6379",
         PortRoute("tcp", f"inbound-vip|6379|tcp|{HOST}", HOST)),
        ({f"inbound-vip|80|http|{HOST}"}, "10.96.0.50:80", PortRoute("http")),
        ({f"inbound-vip|9000|http|{HOST}", f"inbound-vip|9000|tcp|{HOST}"}, "10.96.0.50:9000",
         PortRoute("sniff", f"inbound-vip|9000|tcp|{HOST}", HOST)),
        ({f"inbound-vip|6379|tcp|{HOST}"}, "10.96.0.99:6379", PortRoute("http")),  # not a known VIP
    ],
)  # fmt: skip
def test_a_port_is_served_by_its_clusters(clusters: set[str], authority: str, expected: PortRoute) -> None:
    config = WaypointConfig(
        clusters={name: EndpointPicker(endpoints=[Endpoint("10.244.1.5", 1)]) for name in clusters}
    )
    addresses: Mapping[str, Workload | Service] = MappingProxyType({"svc": SERVICE})
    tcp = TcpPassthrough(
        lambda: config, AddressBook(lambda: addresses), TcpMetrics(build_registry(component="t")), _never
    )
    assert tcp.route(authority) == expected


async def _never(_: Endpoint) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    raise AssertionError("not opened in this test")
