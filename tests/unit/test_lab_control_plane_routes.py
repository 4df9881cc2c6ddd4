"""The control plane's address on the lab bridge comes with a route back to every node's pods, so a
pod that is not captured (a waypoint) reaches istiod_lite and gets its answers."""

from __future__ import annotations

from meshctl.lab.settings import build_settings
from meshctl.lab.topology import control_plane_lines


def test_a_route_to_each_nodes_pod_range_via_that_node() -> None:
    settings = build_settings(lab_id="cp", node_count=3)
    assert control_plane_lines(settings, ["10.240.0.2"]) == [
        "addr add 10.240.0.2/24 dev br0",
        "route add 10.244.1.0/24 via 10.240.0.11 dev br0",
        "route add 10.244.2.0/24 via 10.240.0.12 dev br0",
        "route add 10.244.3.0/24 via 10.240.0.13 dev br0",
    ]
