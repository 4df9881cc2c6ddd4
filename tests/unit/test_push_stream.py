"""The Delta ADS protocol state of one stream, request by request (pure, no sockets)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from istiod_lite.push.delta import DiffCache
from istiod_lite.push.projection import parse_node_id, ztunnel_projection
from istiod_lite.push.snapshot import Snapshot, build_snapshot, empty_snapshot
from istiod_lite.push.stream import DeltaRequest, Response, StreamState
from mesh.api.istio.security import authorization_pb2
from mesh.api.istio.workload import workload_pb2
from mesh.rt.xds import ADDRESS_TYPE_URL as ADDR
from mesh.rt.xds import AUTHORIZATION_TYPE_URL as AUTHZ

NODE = "ztunnel~10.244.1.2~ztunnel-a.istio-system~istio-system.svc.cluster.local"


def snap(counter: int, addresses: Mapping[str, str], policies: Mapping[str, bool] | None = None) -> Snapshot:
    """Addresses by name -> service account; policies by name -> dry_run."""
    return build_snapshot(
        {
            ADDR: {
                n: workload_pb2.Address(workload=workload_pb2.Workload(uid=n, service_account=sa))
                for n, sa in addresses.items()
            },
            AUTHZ: {
                n: authorization_pb2.Authorization(name=n, dry_run=d) for n, d in (policies or {}).items()
            },
        },
        counter=counter,
        now=1_800_000_000.0 + counter,
    )


def stream() -> StreamState:
    subscriber = parse_node_id(NODE, metadata={"NODE_NAME": "node-1"})
    return StreamState(subscriber, ztunnel_projection, diffs=DiffCache())


def names(response: Response) -> list[str]:
    return sorted(r.name for r in response.delta.upserts)


def ack(response: Response) -> DeltaRequest:
    return DeltaRequest(type_url=response.type_url, response_nonce=response.nonce)


def test_wildcard_subscription_gets_the_full_state_for_each_type() -> None:
    s, snapshot = stream(), snap(1, {"w1": "a", "w2": "b"}, {"ns/p": False})
    (addr,) = s.on_request(DeltaRequest(type_url=ADDR), snapshot, now=1.0)
    (authz,) = s.on_request(DeltaRequest(type_url=AUTHZ, subscribe=("*",)), snapshot, now=1.0)
    assert (names(addr), names(authz)) == (["w1", "w2"], ["ns/p"])
    assert addr.nonce != authz.nonce
    assert addr.version == snapshot.version


def test_initial_request_is_answered_even_when_empty_and_waits_for_the_first_snapshot() -> None:
    s = stream()
    assert s.on_request(DeltaRequest(type_url=AUTHZ), empty_snapshot(now=0.0), now=1.0) == ()
    (first,) = s.on_snapshot(snap(1, {"w1": "a"}), now=2.0)
    assert first.delta.empty  # an empty answer still tells the agent it has the full state
    assert first.type_url == AUTHZ


def test_ack_and_nack_are_recorded_per_type() -> None:
    s = stream()
    (r1,) = s.on_request(DeltaRequest(type_url=ADDR), snap(1, {"w1": "a"}), now=1.0)
    assert s.on_request(ack(r1), snap(1, {"w1": "a"}), now=2.0) == ()
    (status,) = s.status()
    assert status.acked is not None and status.acked.version == r1.version
    (r2,) = s.on_snapshot(snap(2, {"w1": "b"}), now=3.0)
    nack = DeltaRequest(type_url=ADDR, response_nonce=r2.nonce, error="w1: bad service account")
    assert s.on_request(nack, snap(2, {"w1": "b"}), now=4.0) == ()
    (status,) = s.status()
    assert status.nacked is not None
    assert (status.nacked.version, status.nacked.error) == (r2.version, "w1: bad service account")
    assert status.acked.version == r1.version  # type: ignore[union-attr]
    assert status.sent_version == r2.version


def test_a_nacked_version_is_not_resent_only_changed_resources_go_out() -> None:
    s = stream()
    (r1,) = s.on_request(DeltaRequest(type_url=ADDR), snap(1, {"w1": "a", "w2": "a"}), now=1.0)
    s.on_request(ack(r1), snap(1, {"w1": "a", "w2": "a"}), now=1.0)
    (r2,) = s.on_snapshot(snap(2, {"w1": "BAD", "w2": "a"}), now=2.0)
    s.on_request(DeltaRequest(type_url=ADDR, response_nonce=r2.nonce, error="w1 bad"), snap(2, {}), now=2.0)
    assert s.on_snapshot(snap(3, {"w1": "BAD", "w2": "a"}), now=3.0) == ()  # same content: nothing
    (r4,) = s.on_snapshot(snap(4, {"w1": "BAD", "w2": "b"}), now=4.0)
    assert names(r4) == ["w2"]  # only the changed one, not the rejected w1 again
    (r5,) = s.on_snapshot(snap(5, {"w1": "fixed", "w2": "b"}), now=5.0)
    assert names(r5) == ["w1"]


def test_reconnect_with_initial_versions_sends_only_the_difference_and_removals() -> None:
    first_life = stream()
    old = snap(1, {"w1": "a", "w2": "a", "w3": "a"})
    (r1,) = first_life.on_request(DeltaRequest(type_url=ADDR), old, now=1.0)
    held = {r.name: r.version for r in r1.delta.upserts}
    new = snap(2, {"w1": "a", "w2": "changed", "w4": "a"})
    (r2,) = stream().on_request(DeltaRequest(type_url=ADDR, initial_versions=held), new, now=2.0)
    assert names(r2) == ["w2", "w4"]
    assert r2.delta.removed == ("w3",)


def test_removed_resources_are_sent_as_removals() -> None:
    s = stream()
    s.on_request(DeltaRequest(type_url=ADDR), snap(1, {"w1": "a", "w2": "a"}), now=1.0)
    (r2,) = s.on_snapshot(snap(2, {"w1": "a"}), now=2.0)
    assert (names(r2), r2.delta.removed) == ([], ("w2",))


def test_explicit_subscription_and_later_changes() -> None:
    s = stream()
    snapshot = snap(1, {"w1": "a", "w2": "a"})
    (r1,) = s.on_request(DeltaRequest(type_url=ADDR, subscribe=("w1", "nope")), snapshot, now=1.0)
    assert names(r1) == ["w1"]
    (r2,) = s.on_request(DeltaRequest(type_url=ADDR, subscribe=("w2", "gone")), snapshot, now=2.0)
    assert (names(r2), r2.delta.removed) == (["w2"], ("gone",))  # absent names are reported removed
    assert s.on_request(DeltaRequest(type_url=ADDR, unsubscribe=("w1",)), snapshot, now=3.0) == ()
    (r3,) = s.on_snapshot(snap(2, {"w1": "b", "w2": "b"}), now=4.0)
    assert names(r3) == ["w2"]  # w1 is no longer subscribed


def test_replies_to_unknown_nonces_change_nothing() -> None:
    s = stream()
    s.on_request(DeltaRequest(type_url=ADDR), snap(1, {"w1": "a"}), now=1.0)
    s.on_request(DeltaRequest(type_url=ADDR, response_nonce="999", error="x"), snap(1, {}), now=2.0)
    (status,) = s.status()
    assert status.nacked is None and status.acked is None


@pytest.mark.parametrize("subscribers", [2, 5])
def test_subscribers_in_sync_share_one_diff(subscribers: int) -> None:
    diffs = DiffCache()
    subscriber = parse_node_id(NODE, metadata={})
    streams = [StreamState(subscriber, ztunnel_projection, diffs=diffs) for _ in range(subscribers)]
    first, second = snap(1, {"w1": "a"}), snap(2, {"w1": "b"})
    for s in streams:
        s.on_request(DeltaRequest(type_url=ADDR), first, now=1.0)
    deltas = [s.on_snapshot(second, now=2.0)[0].delta for s in streams]
    assert all(d is deltas[0] for d in deltas)
