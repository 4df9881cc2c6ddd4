"""The pure parts of ``ztunnel --workers``: the xDS mirror handed to workers, summed metrics, and
the channel's message encoding."""

from __future__ import annotations

import ipaddress

import pytest
from envoy.service.discovery.v3 import discovery_pb2

from mesh.api.istio.workload import workload_pb2
from mesh.rt.metrics import Counter, Gauge, Histogram, Registry, render
from mesh.rt.xds import ADDRESS_TYPE_URL, XdsState, apply_response
from ztunnel.workers.channel import Message, WorkerChannelError
from ztunnel.workers.mirror import ResourceMirror
from ztunnel.workers.pool import worker_command, worker_share
from ztunnel.workers.stats import families_as_json, families_from_json, sum_families
from ztunnel.xds_config import converters, state_from_xds


def _address(name: str, ip: str) -> workload_pb2.Address:
    workload = workload_pb2.Workload(uid=name, name=name, namespace="demo")
    workload.addresses.append(ipaddress.ip_address(ip).packed)
    return workload_pb2.Address(workload=workload)


def _response(
    put: dict[str, tuple[str, str]], removed: tuple[str, ...] = ()
) -> discovery_pb2.DeltaDiscoveryResponse:
    response = discovery_pb2.DeltaDiscoveryResponse(type_url=ADDRESS_TYPE_URL)
    for name, (version, ip) in put.items():
        resource = response.resources.add(name=name, version=version)
        resource.resource.Pack(_address(name, ip))
    response.removed_resources.extend(removed)
    return response


class _Parent:
    """The parent's side: its converters wrapped by the mirror, and its accepted state."""

    def __init__(self) -> None:
        self.mirror = ResourceMirror()
        convert = converters(None)[ADDRESS_TYPE_URL]
        self.convert = self.mirror.recording(ADDRESS_TYPE_URL, convert)
        self.state = XdsState()

    def receive(
        self, response: discovery_pb2.DeltaDiscoveryResponse
    ) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        self.state, _ = apply_response(self.state, response, self.convert)
        return self.mirror.publish(self.state)


def _worker_apply(state: XdsState, responses: list[discovery_pb2.DeltaDiscoveryResponse]) -> XdsState:
    convert = converters(None)[ADDRESS_TYPE_URL]
    for response in responses:
        state, event = apply_response(state, response, convert)
        assert not event.rejected
    return state


@pytest.mark.parametrize(
    ("updates", "published"),
    [
        ([{"a": ("1", "10.0.0.1")}], [(["a"], [])]),
        ([{"a": ("1", "10.0.0.1")}, {"a": ("1", "10.0.0.1")}], [(["a"], []), None]),  # nothing changed
        ([{"a": ("1", "10.0.0.1")}, {"a": ("2", "10.0.0.9")}], [(["a"], []), (["a"], [])]),
        (
            [{"a": ("1", "10.0.0.1"), "b": ("1", "10.0.0.2")}, {"b": ("2", "10.0.0.3")}],
            [(["a", "b"], []), (["b"], [])],
        ),
        ([{"a": ("1", "10.0.0.1"), "b": ("1", "10.0.0.2")}, "remove b"], [(["a", "b"], []), ([], ["b"])]),
    ],
)
def test_the_mirror_publishes_what_changed_and_a_worker_ends_with_the_parents_state(
    updates: list[dict[str, tuple[str, str]] | str], published: list[tuple[list[str], list[str]] | None]
) -> None:
    parent = _Parent()
    worker = XdsState()
    for update, expected in zip(updates, published, strict=True):
        response = _response({}, ("b",)) if update == "remove b" else _response(update)  # type: ignore[arg-type]
        changes = parent.receive(response)
        if expected is None:
            assert changes == []
        else:
            (change,) = changes
            assert sorted(r.name for r in change.resources) == expected[0]
            assert list(change.removed_resources) == expected[1]
        worker = _worker_apply(worker, changes)
        assert state_from_xds(worker) == state_from_xds(parent.state)
    late = _worker_apply(XdsState(), parent.mirror.snapshot())  # a worker that starts now
    assert state_from_xds(late) == state_from_xds(parent.state)


def test_a_rejected_resource_keeps_its_last_good_value_for_the_workers_too() -> None:
    parent = _Parent()
    parent.receive(_response({"a": ("1", "10.0.0.1")}))
    bad = discovery_pb2.DeltaDiscoveryResponse(type_url=ADDRESS_TYPE_URL)
    bad.resources.add(name="a", version="2").resource.Pack(workload_pb2.Address())  # neither kind
    assert parent.receive(bad) == []
    (snapshot,) = parent.mirror.snapshot()
    assert [(r.name, r.version) for r in snapshot.resources] == [("a", "1")]


def _registry(opened: float, active: float, observed: list[float]) -> Registry:
    registry = Registry()
    Counter("conns_opened", "opened", ("reporter",), registry=registry).labels("source").inc(opened)
    Gauge("conns_active", "active", registry=registry).set(active)
    histogram = Histogram("conn_ms", "duration", buckets=(1.0, 10.0), registry=registry)
    for value in observed:
        histogram.observe(value)
    return registry


def test_summed_metrics_add_every_series_across_processes() -> None:
    parts = [_registry(3, 1, [0.5, 5.0]), _registry(4, 2, [20.0])]
    through_json = [families_from_json(families_as_json(part)) for part in parts]
    summed = Registry()
    families = sum_families(through_json)
    summed.register(type("C", (), {"collect": lambda self: families})())
    text = render(summed).decode()
    assert 'conns_opened_total{reporter="source"} 7.0' in text
    assert "conns_active 3.0" in text
    assert 'conn_ms_bucket{le="1.0"} 1.0' in text
    assert 'conn_ms_bucket{le="10.0"} 2.0' in text
    assert 'conn_ms_bucket{le="+Inf"} 3.0' in text
    assert "conn_ms_count 3.0" in text and "conn_ms_sum 25.5" in text
    assert text.count("# TYPE conns_opened_total counter") == 1


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x00\x00", "has no header"),
        (b"\x00\x00\x00\x03abc", "undecodable"),
        (b"\x00\x00\x00\x02[]", "not an object with a kind"),
    ],
)
def test_a_malformed_message_is_refused(data: bytes, problem: str) -> None:
    with pytest.raises(WorkerChannelError, match=problem):
        Message.decode(data, None)


def test_a_message_survives_encoding() -> None:
    message = Message("pod", {"id": 3, "error": ""}, b"\x00\x01binary")
    assert Message.decode(message.encode(), None) == message


def test_malformed_worker_metrics_are_refused() -> None:
    with pytest.raises(WorkerChannelError, match="metrics are malformed"):
        families_from_json([{"kind": "summary", "name": "x", "help": "", "labels": [], "samples": []}])


@pytest.mark.parametrize(
    ("limit", "workers", "share"), [(1000, 1, 1000), (1000, 2, 500), (1001, 2, 501), (1, 3, 1), (10, 4, 3)]
)
def test_a_node_connection_limit_is_shared_by_the_workers(limit: int, workers: int, share: int) -> None:
    assert worker_share(limit, workers) == share
    assert limit <= workers * share < limit + workers
    command = worker_command(
        node="n1", trust_domain="cluster.local", log_format="json", log_level="info", drain_deadline=5.0,
        max_connections=limit, workers=workers, local_config=None, crl_file=None,
    )  # fmt: skip
    assert command[command.index("--max-connections") + 1] == str(share)


def test_without_a_limit_each_worker_takes_its_own_default() -> None:
    command = worker_command(
        node="n1", trust_domain="cluster.local", log_format="json", log_level="info", drain_deadline=5.0,
        max_connections=None, workers=2, local_config=None, crl_file=None,
    )  # fmt: skip
    assert "--max-connections" not in command
