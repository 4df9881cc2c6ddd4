"""Services -> istio.workload.Service, one rule per table."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from mesh.api.istio.workload import workload_pb2 as pb
from tests.unit.test_translate_scenarios import endpoint_slice, pod, service, translate


def svc_of(obj: dict[str, Any], **options: Any) -> pb.Service | None:
    res = translate([obj], **options)
    domain = options.get("cluster_domain", "cluster.local")
    meta = obj["metadata"]
    address = res.addresses.get(f"{meta['namespace']}/{meta['name']}.{meta['namespace']}.svc.{domain}")
    return address.service if address is not None else None


def test_name_hostname_and_vip() -> None:
    s = svc_of(service("reviews", "bookinfo", ip="10.96.3.4"))
    assert s is not None
    assert (s.name, s.namespace, s.hostname) == ("reviews", "bookinfo", "reviews.bookinfo.svc.cluster.local")
    assert [(a.network, a.address, a.HasField("length")) for a in s.addresses] == [
        ("", bytes([10, 96, 3, 4]), False)
    ]
    assert s.ip_families == pb.IPV4_ONLY


def test_cluster_domain_and_network_options() -> None:
    s = svc_of(service("web", ip="10.96.0.1"), cluster_domain="corp.example", network="net1")
    assert s is not None and s.hostname == "web.demo.svc.corp.example" and s.addresses[0].network == "net1"


@pytest.mark.parametrize(
    ("port", "expected"),
    [
        ({"port": 80, "targetPort": 8080}, (80, 8080, pb.UNKNOWN)),
        ({"port": 80, "targetPort": "8080"}, (80, 8080, pb.UNKNOWN)),
        ({"port": 80, "targetPort": "http"}, (80, 0, pb.UNKNOWN)),
        ({"port": 80}, (80, 80, pb.UNKNOWN)),
        ({"port": 80, "appProtocol": "http"}, (80, 80, pb.HTTP11)),
        ({"port": 80, "appProtocol": "kubernetes.io/h2c"}, (80, 80, pb.HTTP2)),
        ({"port": 80, "appProtocol": "grpc"}, (80, 80, pb.GRPC)),
    ],
)
def test_ports(port: dict[str, Any], expected: tuple[int, int, int]) -> None:
    s = svc_of(service("web", ports=[port]))
    assert s is not None
    assert [(p.service_port, p.target_port, p.app_protocol) for p in s.ports] == [expected]


@pytest.mark.parametrize(
    ("spec", "addresses", "families"),
    [
        ({"clusterIP": "None"}, [], pb.AUTOMATIC),
        (
            {"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1", "fd00::1"]},
            ["10.96.0.1", "fd00::1"],
            pb.DUAL,
        ),
        ({"clusterIPs": ["fd00::1"], "ipFamilies": ["IPv6"]}, ["fd00::1"], pb.IPV6_ONLY),
    ],
    ids=["headless", "dual-stack", "ipv6"],
)
def test_addresses_and_families(spec: dict[str, Any], addresses: list[str], families: int) -> None:
    obj = service("web")
    obj["spec"] = {**spec, "ports": [{"port": 80}]}
    s = svc_of(obj)
    assert s is not None
    assert [a.address for a in s.addresses] == [ipaddress.ip_address(a).packed for a in addresses]
    assert s.ip_families == families


def test_external_name_services_are_not_sent() -> None:
    obj = service("ext")
    obj["spec"] = {"type": "ExternalName", "externalName": "example.com"}
    assert svc_of(obj) is None


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"clusterIP": "10.96.0.1", "ports": [{"port": 0}]}, "spec.ports[0].port"),
        (
            {"clusterIP": "10.96.0.1", "ports": [{"port": 80, "targetPort": 70000}]},
            "spec.ports[0].targetPort",
        ),
        ({"clusterIP": "10.96.0.999", "ports": [{"port": 80}]}, "spec.clusterIP"),
        ({"clusterIP": "10.96.0.1", "ports": {"port": 80}}, "spec.ports"),
    ],
)
def test_invalid_service_skipped_with_warning_others_kept(spec: dict[str, Any], field: str) -> None:
    bad = service("bad")
    bad["spec"] = spec
    res = translate([bad, service("good", ip="10.96.0.2")])
    assert "demo/bad.demo.svc.cluster.local" not in res.addresses
    assert "demo/good.demo.svc.cluster.local" in res.addresses
    assert [(w.kind, w.namespace, w.name, w.field) for w in res.warnings] == [
        ("Service", "demo", "bad", field)
    ]


def test_malformed_endpoint_slice_skipped_with_warning() -> None:
    es = endpoint_slice("web", endpoints=[("web-1", "10.244.1.5", True)])
    es["endpoints"][0]["targetRef"] = {"kind": "Pod", "name": ""}
    res = translate([pod("web-1"), service("web"), es])
    assert [(w.kind, w.field) for w in res.warnings] == [("EndpointSlice", "endpoints[0].targetRef.name")]
    assert dict(res.addresses["Kubernetes//Pod/demo/web-1"].workload.services) == {}
