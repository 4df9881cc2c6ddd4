"""Which pods the node agent enrols, table-driven."""

from __future__ import annotations

import pytest

from ztunnel.cni.enroll import PodFacts, should_enroll

AMBIENT = {"istio.io/dataplane-mode": "ambient"}
NONE = {"istio.io/dataplane-mode": "none"}


@pytest.mark.parametrize(
    ("pod", "enrolled"),
    [
        (PodFacts(AMBIENT, {}, {}), True),
        (PodFacts({}, AMBIENT, {}), True),
        (PodFacts({}, {}, {}), False),
        (PodFacts(AMBIENT, NONE, {}), False),
        (PodFacts(AMBIENT, {}, {"sidecar.istio.io/status": "{}"}), False),
        (PodFacts(AMBIENT, {}, {}, host_network=True), False),
        (PodFacts(AMBIENT, {"app": "ztunnel"}, {}), False),
        (PodFacts(AMBIENT, {}, {}, deleted=True), False),
        (PodFacts({"istio.io/dataplane-mode": "sidecar"}, {}, {}), False),
    ],
)
def test_should_enroll(pod: PodFacts, enrolled: bool) -> None:
    decision, reason = should_enroll(pod)
    assert decision is enrolled
    assert reason
