"""xDS resource conversion: valid resources convert, bad ones are rejected naming the field."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest
from google.protobuf import empty_pb2

from mesh.api.istio.security import authorization_pb2 as authz_pb
from mesh.api.istio.workload import workload_pb2 as wl_pb
from mesh.convert import ResourceError, address_from_proto, authorization_from_proto
from mesh.model import Action, Scope, Service, StringMatch, TunnelProtocol, Workload

UID = "Kubernetes//Pod/demo/server-v1-abc"


def workload(**overrides: object) -> wl_pb.Address:
    w = wl_pb.Workload(
        uid=UID,
        name="server-v1-abc",
        namespace="demo",
        addresses=[bytes([10, 244, 2, 7])],
        service_account="server",
        node="node2",
        tunnel_protocol=wl_pb.HBONE,
        canonical_name="server",
        canonical_revision="v1",
        workload_name="server-v1",
    )
    w.services["demo/server.demo.svc.cluster.local"].ports.add(service_port=80, target_port=8080)
    for key, value in overrides.items():
        if isinstance(value, list):
            w.ClearField(key)  # type: ignore[arg-type]
            getattr(w, key).extend(value)
        else:
            setattr(w, key, value)
    return wl_pb.Address(workload=w)


def test_workload_converts() -> None:
    converted = address_from_proto(UID, workload())
    assert isinstance(converted, Workload)
    assert converted.addresses == (ip_address("10.244.2.7"),)
    assert converted.protocol is TunnelProtocol.HBONE
    assert converted.trust_domain == "cluster.local"
    assert converted.spiffe_uri == "spiffe://cluster.local/ns/demo/sa/server"
    assert converted.target_port("demo/server.demo.svc.cluster.local", 80) == 8080
    assert converted.target_port("demo/server.demo.svc.cluster.local", 81) is None


def test_defaults_left_out_on_the_wire() -> None:
    converted = address_from_proto(UID, workload(service_account="", trust_domain=""))
    assert isinstance(converted, Workload)
    assert converted.service_account == "default"
    assert converted.spiffe_uri == "spiffe://cluster.local/ns/demo/sa/default"


def test_service_converts() -> None:
    s = wl_pb.Service(name="server", namespace="demo", hostname="server.demo.svc.cluster.local")
    s.addresses.add(network="", address=bytes([10, 96, 0, 10]))
    s.ports.add(service_port=80, target_port=8080)
    converted = address_from_proto("demo/server.demo.svc.cluster.local", wl_pb.Address(service=s))
    assert isinstance(converted, Service)
    assert converted.vips == (("", ip_address("10.96.0.10")),)
    assert converted.key == "demo/server.demo.svc.cluster.local"


@pytest.mark.parametrize(
    ("address", "field"),
    [
        (wl_pb.Address(), "type"),
        (workload(uid=""), "workload.uid"),
        (workload(addresses=[b"\x01\x02\x03"]), "workload.addresses"),
        (workload(tunnel_protocol=7), "workload.tunnel_protocol"),
        (workload(workload_type=9), "workload.workload_type"),
        (wl_pb.Address(service=wl_pb.Service(namespace="demo")), "service.hostname/namespace"),
    ],
)
def test_bad_addresses_name_the_field(address: wl_pb.Address, field: str) -> None:
    with pytest.raises(ResourceError) as info:
        address_from_proto("r", address)
    assert info.value.field == field
    assert "resource 'r'" in str(info.value)


def authorization(**match: object) -> authz_pb.Authorization:
    policy = authz_pb.Authorization(
        name="deny", namespace="demo", scope=authz_pb.NAMESPACE, action=authz_pb.DENY
    )
    policy.rules.add().clauses.add().matches.add(**match)
    return policy


def test_authorization_converts() -> None:
    policy = authorization(
        principals=[authz_pb.StringMatch(exact="cluster.local/ns/demo/sa/client")],
        not_principals=[authz_pb.StringMatch(presence=empty_pb2.Empty())],
        source_ips=[authz_pb.Address(address=bytes([10, 244, 1, 0]), length=24)],
        destination_ports=[8080],
    )
    converted = authorization_from_proto("demo/deny", policy)
    assert converted.scope is Scope.NAMESPACE and converted.action is Action.DENY
    (match,) = converted.rules[0][0]
    assert match.principals == (StringMatch.exact("cluster.local/ns/demo/sa/client"),)
    assert match.not_principals == (StringMatch.presence(),)
    assert match.source_ips == (ip_network("10.244.1.0/24"),)
    assert match.destination_ports == (8080,)


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        (authz_pb.Authorization(name="x", namespace="demo", scope=authz_pb.Scope.ValueType(5)), "scope"),
        (authz_pb.Authorization(name="x", namespace="demo", action=authz_pb.Action.ValueType(3)), "action"),
        (authz_pb.Authorization(namespace="demo"), "name/namespace"),
        (
            authorization(source_ips=[authz_pb.Address(address=b"\x0a\x00\x00\x00", length=33)]),
            "rules[0].clauses[0].matches[0].source_ips",
        ),
        (authorization(destination_ports=[70000]), "rules[0].clauses[0].matches[0].destination_ports"),
        (authorization(principals=[authz_pb.StringMatch()]), "rules[0].clauses[0].matches[0].principals"),
    ],
)
def test_bad_authorizations_name_the_field(policy: authz_pb.Authorization, field: str) -> None:
    with pytest.raises(ResourceError) as info:
        authorization_from_proto("demo/x", policy)
    assert info.value.field == field
