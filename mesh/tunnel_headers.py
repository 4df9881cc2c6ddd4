"""The HBONE request headers ztunnel sends and reads: ``baggage``, ``forwarded``, ``traceparent``."""

from __future__ import annotations

import ipaddress
import random

from mesh.model import IpAddress, Workload

__all__ = [
    "baggage_for",
    "forwarded_for",
    "parse_baggage",
    "parse_forwarded_for",
    "parse_forwarded_host",
    "traceparent",
]

_BAGGAGE_MAX = 8192


def baggage_for(workload: Workload) -> str:
    """The source workload as OpenTelemetry-style baggage, as Istio's ztunnel sends it."""
    items = [
        ("k8s.cluster.name", workload.cluster_id),
        ("k8s.namespace.name", workload.namespace),
        (f"k8s.{workload.workload_type}.name", workload.workload_name or workload.name),
        ("service.name", workload.canonical_name),
        ("service.version", workload.canonical_revision),
    ]
    return ",".join(f"{key}={value}" for key, value in items if value)


def parse_baggage(header: str) -> dict[str, str]:
    """Key-value pairs of a baggage header; malformed members are skipped, size is capped."""
    pairs: dict[str, str] = {}
    for member in header[:_BAGGAGE_MAX].split(","):
        key, sep, value = member.split(";", 1)[0].partition("=")
        key, value = key.strip(), value.strip()
        if sep and key and value and key.isascii() and value.isascii():
            pairs[key] = value
    return pairs


def forwarded_for(client: IpAddress, client_port: int, *, service_host: str = "") -> str:
    """``for="ip:port"`` plus ``;host=<fqdn>`` when the client addressed a service."""
    host = f"[{client}]" if client.version == 6 else str(client)
    value = f'for="{host}:{client_port}"'
    return f"{value};host={service_host}" if service_host else value


def parse_forwarded_host(header: str) -> str:
    """The ``host=`` parameter of the first Forwarded element, or empty."""
    return _forwarded_parameter(header, "host")


def parse_forwarded_for(header: str) -> tuple[str, int] | None:
    """The client ``(ip, port)`` of the first Forwarded element's ``for="ip:port"`` (IPv6 in
    brackets), or None when it is absent or malformed (an obfuscated or port-less ``for``)."""
    value = _forwarded_parameter(header, "for")
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    host = host.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return host, int(port)


def _forwarded_parameter(header: str, name: str) -> str:
    first = header[:_BAGGAGE_MAX].split(",", 1)[0]
    for pair in first.split(";"):
        key, sep, value = pair.strip().partition("=")
        if sep and key.lower() == name:
            return value.strip().strip('"')
    return ""


def traceparent(rng: random.Random) -> str:
    """A fresh W3C trace context (version 00, not sampled) to correlate both ends' logs."""
    trace_id = rng.getrandbits(128) or 1
    parent_id = rng.getrandbits(64) or 1
    return f"00-{trace_id:032x}-{parent_id:016x}-00"
