"""HBONE request headers: what ztunnel sends, and parsing what peers send (bad input included)."""

from __future__ import annotations

import random
import re
from ipaddress import ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.model import Workload
from mesh.tunnel_headers import (
    baggage_for,
    forwarded_for,
    parse_baggage,
    parse_forwarded_for,
    parse_forwarded_host,
    traceparent,
)

CLIENT = Workload(
    uid="Kubernetes//Pod/demo/client-1",
    name="client-1",
    namespace="demo",
    addresses=(ip_address("10.244.1.5"),),
    canonical_name="client",
    canonical_revision="v1",
    workload_name="client",
)


def test_baggage_describes_the_source() -> None:
    header = baggage_for(CLIENT)
    assert header == (
        "k8s.cluster.name=Kubernetes,k8s.namespace.name=demo,k8s.deployment.name=client,"
        "service.name=client,service.version=v1"
    )
    assert parse_baggage(header)["service.version"] == "v1"


def test_forwarded() -> None:
    assert forwarded_for(ip_address("10.244.1.5"), 4242) == 'for="10.244.1.5:4242"'
    value = forwarded_for(ip_address("fd00::1"), 1, service_host="server.demo.svc.cluster.local")
    assert value == 'for="[fd00::1]:1";host=server.demo.svc.cluster.local'
    assert parse_forwarded_host(value) == "server.demo.svc.cluster.local"


@pytest.mark.parametrize(
    ("header", "host"),
    [("", ""), ("for=x", ""), ('host="a.b"', "a.b"), ("for=x;HOST=a, host=b", "a"), (";;;=", "")],
)
def test_parse_forwarded_host(header: str, host: str) -> None:
    assert parse_forwarded_host(header) == host


@pytest.mark.parametrize(
    ("header", "client"),
    [
        ('for="10.244.1.5:4242"', ("10.244.1.5", 4242)),
        ('for="[fd00::1]:1";host=server.demo.svc.cluster.local', ("fd00::1", 1)),
        ('FOR="10.244.1.5:80", for="10.0.0.1:1"', ("10.244.1.5", 80)),
        ("for=10.244.1.5:4242", ("10.244.1.5", 4242)),
        ('for="10.244.1.5"', None),  # no port
        ('for="_hidden:4242"', None),  # obfuscated identifier
        ('for="10.244.1.5:0"', None),
        ('for="10.244.1.5:70000"', None),
        ('host="a.b"', None),
        ("", None),
    ],
)
def test_parse_forwarded_for(header: str, client: tuple[str, int] | None) -> None:
    assert parse_forwarded_for(header) == client


def test_traceparent_is_w3c() -> None:
    value = traceparent(random.Random(7))
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-00", value)
    assert value != traceparent(random.Random(8))


@given(st.text(max_size=300))
def test_parsers_never_fail(header: str) -> None:
    parse_baggage(header)
    parse_forwarded_host(header)
    parse_forwarded_for(header)
