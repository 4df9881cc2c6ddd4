"""Pod and Service address allocation, and pod placement, as pure functions."""

from __future__ import annotations

import pytest

from meshctl.lab.errors import LabError
from meshctl.lab.ipam import allocate_pod_ip, allocate_service_ip, place_pod


@pytest.mark.parametrize(
    ("used", "last", "expected"),
    [
        ((), None, "10.244.1.2"),  # .1 is the node's gateway
        (("10.244.1.2",), None, "10.244.1.3"),
        ((), "10.244.1.7", "10.244.1.8"),  # host-local style: continue after the last one
        (("10.244.1.8",), "10.244.1.7", "10.244.1.9"),
        ((), "10.244.1.254", "10.244.1.2"),  # wraps, skipping the gateway
        ((), "10.9.9.9", "10.244.1.2"),  # a last address outside the range is ignored
    ],
)
def test_pod_ip(used: tuple[str, ...], last: str | None, expected: str) -> None:
    assert allocate_pod_ip("10.244.1.0/24", used, last=last) == expected


def test_pod_range_full() -> None:
    used = [f"10.244.1.{i}" for i in range(2, 7)]
    assert allocate_pod_ip("10.244.1.0/29", used[:4]) == "10.244.1.6"
    with pytest.raises(LabError, match="is full"):
        allocate_pod_ip("10.244.1.0/29", used)


def test_service_ip_lowest_free_from_offset() -> None:
    assert allocate_service_ip("10.96.0.0/16", []) == "10.96.0.100"
    assert allocate_service_ip("10.96.0.0/16", ["10.96.0.100", "10.96.0.102"]) == "10.96.0.101"


@pytest.mark.parametrize(
    ("owner", "total", "expected"),
    [
        ({}, {}, "node1"),
        ({"node1": 1}, {"node1": 1}, "node2"),  # replicas spread round-robin
        ({}, {"node1": 3, "node2": 1}, "node2"),  # then the emptier node
        ({"node1": 1, "node2": 1}, {"node1": 2, "node2": 1}, "node2"),
        ({"node1": 1, "node2": 1}, {"node1": 1, "node2": 1}, "node1"),  # ties go to node order
    ],
)
def test_place_pod(owner: dict[str, int], total: dict[str, int], expected: str) -> None:
    assert place_pod(["node1", "node2"], owner_counts=owner, total_counts=total) == expected
