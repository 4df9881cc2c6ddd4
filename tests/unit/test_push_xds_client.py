"""The agent-side pieces of mesh.rt.xds that decide without I/O: apply a response, ACK/NACK, backoff."""

from __future__ import annotations

import random

import pytest
from envoy.service.discovery.v3 import discovery_pb2

from istiod_lite.push.errors import SubscriberRejectedError
from istiod_lite.push.projection import parse_node_id, select_projection
from mesh.api.istio.security import authorization_pb2
from mesh.rt.xds import (
    AUTHORIZATION_TYPE_URL,
    ResourceRejectedError,
    XdsBackoff,
    XdsNode,
    XdsState,
    apply_response,
    reply_for,
    unpacking,
)


def to_action(name: str, policy: authorization_pb2.Authorization) -> str:
    if policy.action == authorization_pb2.DENY and not policy.rules:
        raise ResourceRejectedError(f"{name}: a DENY without rules is not allowed here")
    return authorization_pb2.Action.Name(policy.action)


CONVERT = unpacking(authorization_pb2.Authorization, to_action)


def response(
    nonce: str, *, removed: tuple[str, ...] = (), **policies: str
) -> discovery_pb2.DeltaDiscoveryResponse:
    """Policies by name: "allow", "deny" (one rule) or "bad" (a DENY without rules, which CONVERT rejects)."""
    out = discovery_pb2.DeltaDiscoveryResponse(
        type_url=AUTHORIZATION_TYPE_URL, nonce=nonce, system_version_info=f"v{nonce}"
    )
    out.removed_resources.extend(removed)
    for name, kind in policies.items():
        entry = out.resources.add(name=name, version=f"{name}-{kind}")
        policy = authorization_pb2.Authorization(name=name)
        if kind != "allow":
            policy.action = authorization_pb2.DENY
        if kind == "deny":
            policy.rules.add()
        entry.resource.Pack(policy)
    return out


def test_good_resources_apply_and_the_reply_is_an_ack() -> None:
    state, event = apply_response(XdsState(), response("1", a="allow", b="allow"), CONVERT)
    assert dict(state.of_type(AUTHORIZATION_TYPE_URL)) == {"a": "ALLOW", "b": "ALLOW"}
    assert state.versions[AUTHORIZATION_TYPE_URL] == {"a": "a-allow", "b": "b-allow"}
    reply = reply_for(event)
    assert (reply.response_nonce, reply.HasField("error_detail")) == ("1", False)


def test_a_bad_resource_keeps_its_last_good_value_and_is_named_in_the_nack() -> None:
    state, _ = apply_response(XdsState(), response("1", a="allow", b="allow"), CONVERT)
    state, event = apply_response(state, response("2", a="bad", b="deny", c="allow"), CONVERT)
    assert dict(state.of_type(AUTHORIZATION_TYPE_URL)) == {"a": "ALLOW", "b": "DENY", "c": "ALLOW"}
    assert state.versions[AUTHORIZATION_TYPE_URL]["a"] == "a-allow"  # reconnect reports the good version
    reply = reply_for(event)
    assert reply.response_nonce == "2"
    assert reply.error_detail.code == 3
    assert reply.error_detail.message.startswith("a: ")
    assert "DENY without rules" in reply.error_detail.message


def test_every_rejected_resource_is_named() -> None:
    _, event = apply_response(XdsState(), response("1", x="bad", y="bad", z="allow"), CONVERT)
    message = reply_for(event).error_detail.message
    assert message.index("x:") < message.index("y:")
    assert "z:" not in message


def test_removals_drop_values_and_versions() -> None:
    state, _ = apply_response(XdsState(), response("1", a="allow", b="allow"), CONVERT)
    state, event = apply_response(state, response("2", removed=("a", "never-had")), CONVERT)
    assert dict(state.of_type(AUTHORIZATION_TYPE_URL)) == {"b": "ALLOW"}
    assert event.removed == ("a", "never-had")


def test_a_resource_of_the_wrong_type_or_bytes_is_rejected() -> None:
    bad = discovery_pb2.DeltaDiscoveryResponse(type_url=AUTHORIZATION_TYPE_URL, nonce="1")
    wrong = bad.resources.add(name="wrong", version="1")
    wrong.resource.Pack(discovery_pb2.Resource(name="not a policy"))
    garbage = bad.resources.add(name="garbage", version="1")
    garbage.resource.type_url = AUTHORIZATION_TYPE_URL
    garbage.resource.value = b"\xff\xff\xff"
    state, event = apply_response(XdsState(), bad, CONVERT)
    assert not state.of_type(AUTHORIZATION_TYPE_URL)
    assert set(event.rejected) == {"wrong", "garbage"}


def test_states_are_immutable_values() -> None:
    state, _ = apply_response(XdsState(), response("1", a="allow"), CONVERT)
    with pytest.raises(TypeError):
        state.of_type(AUTHORIZATION_TYPE_URL)["a"] = "x"  # type: ignore[index]


@pytest.mark.parametrize(
    ("attempt", "low", "high"),
    [(0, 0.005, 0.01), (1, 0.01, 0.02), (2, 0.02, 0.04), (10, 5.12, 10.24), (11, 7.5, 15.0), (60, 7.5, 15.0)],
)
def test_backoff_doubles_from_10ms_to_15s_with_jitter(attempt: int, low: float, high: float) -> None:
    rng = random.Random(1)
    delays = [XdsBackoff().delay(attempt, rng) for _ in range(50)]
    assert all(low <= d <= high for d in delays)
    assert len(set(delays)) > 1  # jittered


def test_node_carries_id_and_metadata() -> None:
    node = XdsNode(
        id="ztunnel~1.2.3.4~z.istio-system~istio-system.svc.cluster.local", metadata={"NODE_NAME": "n1"}
    )
    proto = node.to_proto()
    assert proto.id == node.id
    assert proto.metadata.fields["NODE_NAME"].string_value == "n1"


@pytest.mark.parametrize(
    ("node_id", "ok"),
    [
        ("ztunnel~10.244.1.2~ztunnel-x.istio-system~istio-system.svc.cluster.local", True),
        ("waypoint~10.244.1.2~wp.default~default.svc.cluster.local", False),  # no projection yet
        ("ztunnel~10.244.1.2", False),
        ("", False),
    ],
)
def test_node_ids(node_id: str, ok: bool) -> None:
    try:
        subscriber = parse_node_id(node_id, metadata={"NODE_NAME": "n1"})
        select_projection(subscriber)
    except SubscriberRejectedError:
        assert not ok
    else:
        assert ok
        assert (subscriber.pod, subscriber.namespace, subscriber.node_name) == (
            "ztunnel-x",
            "istio-system",
            "n1",
        )
