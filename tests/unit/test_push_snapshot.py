"""Snapshot versioning and the hand-encoded DeltaDiscoveryResponse."""

from __future__ import annotations

import ipaddress
from typing import cast

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st

from istiod_lite.push._wire import encode_response
from istiod_lite.push.delta import Delta
from istiod_lite.push.errors import PushError
from istiod_lite.push.snapshot import build_snapshot, resource_version, version_resources
from istiod_lite.push.stream import Response
from mesh.api.istio.security import authorization_pb2
from mesh.api.istio.workload import workload_pb2
from mesh.rt.xds import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL

NOW = 1_800_000_000.0


def workload(name: str, ip: str = "10.244.1.5", sa: str = "default") -> workload_pb2.Address:
    uid = f"Kubernetes//Pod/default/{name}"
    w = workload_pb2.Workload(uid=uid, name=name, namespace="default", service_account=sa)
    w.addresses.append(ipaddress.ip_address(ip).packed)
    return workload_pb2.Address(workload=w)


def test_equal_content_gets_equal_version_across_snapshots() -> None:
    a = build_snapshot({ADDRESS_TYPE_URL: {"w": workload("w")}}, counter=1, now=NOW)
    b = build_snapshot({ADDRESS_TYPE_URL: {"w": workload("w")}}, counter=2, now=NOW + 5)
    assert a.of_type(ADDRESS_TYPE_URL)["w"].version == b.of_type(ADDRESS_TYPE_URL)["w"].version
    assert a.version != b.version


def test_changed_content_gets_a_new_version() -> None:
    a = version_resources(ADDRESS_TYPE_URL, {"w": workload("w", sa="a")})
    b = version_resources(ADDRESS_TYPE_URL, {"w": workload("w", sa="b")})
    assert a["w"].version != b["w"].version
    assert a["w"].version == resource_version(a["w"].payload)


def test_unchanged_entries_of_the_previous_snapshot_are_reused_as_objects() -> None:
    first = build_snapshot(
        {ADDRESS_TYPE_URL: {"w1": workload("w1"), "w2": workload("w2", ip="10.244.1.6")}}, counter=1, now=NOW
    )
    second = build_snapshot(
        {ADDRESS_TYPE_URL: {"w1": workload("w1"), "w2": workload("w2", ip="10.244.1.7")}},
        counter=2,
        now=NOW,
        previous=first,
    )
    assert second.of_type(ADDRESS_TYPE_URL)["w1"] is first.of_type(ADDRESS_TYPE_URL)["w1"]
    assert second.of_type(ADDRESS_TYPE_URL)["w2"] is not first.of_type(ADDRESS_TYPE_URL)["w2"]


class _CountingMessage:
    """Wraps an Address and counts its serializations (the snapshot must not redo unchanged ones)."""

    DESCRIPTOR = workload_pb2.Address.DESCRIPTOR

    def __init__(self, message: workload_pb2.Address) -> None:
        self.message = message
        self.serialized = 0

    def SerializeToString(self, **kwargs: bool) -> bytes:
        self.serialized += 1
        return self.message.SerializeToString(**kwargs)


def test_the_same_message_object_is_not_serialized_again() -> None:
    same = _CountingMessage(workload("w1"))
    first = build_snapshot({ADDRESS_TYPE_URL: {"w1": cast(Message, same)}}, counter=1, now=NOW)
    second = build_snapshot(
        {ADDRESS_TYPE_URL: {"w1": cast(Message, same)}}, counter=2, now=NOW, previous=first
    )
    assert same.serialized == 1
    assert second.of_type(ADDRESS_TYPE_URL)["w1"] is first.of_type(ADDRESS_TYPE_URL)["w1"]


def test_snapshot_version_is_time_and_counter() -> None:
    snap = build_snapshot({}, counter=7, now=1_800_000_000.0)
    assert snap.version == "2027-01-15T08:00:00Z/7"


@pytest.mark.parametrize(
    ("type_url", "name", "message", "problem"),
    [
        (AUTHORIZATION_TYPE_URL, "default/p", workload("w"), "not the istio.security.Authorization"),
        (ADDRESS_TYPE_URL, "", workload("w"), "empty name"),
    ],
)
def test_bad_input_is_a_push_error(
    type_url: str, name: str, message: workload_pb2.Address, problem: str
) -> None:
    with pytest.raises(PushError, match=problem):
        version_resources(type_url, {name: message})


def test_response_encoding_matches_protobuf() -> None:
    policy = authorization_pb2.Authorization(name="p", namespace="default", action=authorization_pb2.DENY)
    resources = version_resources(AUTHORIZATION_TYPE_URL, {"default/p": policy, "default/é": policy})
    response = Response(
        type_url=AUTHORIZATION_TYPE_URL,
        nonce="42",
        version="v/1",
        delta=Delta(upserts=tuple(resources.values()), removed=("default/gone", "x/y")),
    )
    expected = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info="v/1",
        type_url=AUTHORIZATION_TYPE_URL,
        nonce="42",
        removed_resources=["default/gone", "x/y"],
    )
    for r in resources.values():
        entry = expected.resources.add(name=r.name, version=r.version)
        entry.resource.Pack(policy)
    assert response.encode() == expected.SerializeToString(deterministic=True)
    decoded = discovery_pb2.DeltaDiscoveryResponse.FromString(response.encode())
    unpacked = authorization_pb2.Authorization()
    assert decoded.resources[1].resource.Unpack(unpacked)
    assert unpacked == policy


@given(
    names=st.lists(st.text(min_size=1, max_size=300), max_size=5, unique=True),
    removed=st.lists(st.text(min_size=1, max_size=20), max_size=3),
    nonce=st.text(max_size=10),
)
def test_encoding_matches_protobuf_for_any_names(names: list[str], removed: list[str], nonce: str) -> None:
    messages = {n: workload(f"w{i}") for i, n in enumerate(names)}
    resources = version_resources(ADDRESS_TYPE_URL, messages)
    ours = encode_response(
        system_version_info="v",
        resource_entries=(r.wire for r in resources.values()),
        type_url=ADDRESS_TYPE_URL,
        nonce=nonce,
        removed_resources=removed,
    )
    theirs = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info="v", type_url=ADDRESS_TYPE_URL, nonce=nonce, removed_resources=removed
    )
    for r in resources.values():
        entry = theirs.resources.add(name=r.name, version=r.version)
        entry.resource.Pack(messages[r.name])
    assert ours == theirs.SerializeToString(deterministic=True)
