"""Leader election's decisions and values: the timings' invariants (client-go's), reading a Lease
record defensively (client-go's zero values), and holder identities unique per process."""

from __future__ import annotations

import random
from typing import Any

import pytest

from mesh.errors import ConfigError
from mesh.rt.election import ElectionSettings, holder_identity
from mesh.rt.kube.lease import LeaseRecord


@pytest.mark.parametrize(
    ("lease", "renew", "retry", "valid"),
    [
        (30.0, 15.0, 7.5, True),  # istiod's
        (15.0, 10.0, 2.0, True),  # client-go's defaults
        (15.0, 15.0, 2.0, False),  # the lease must outlast the renew deadline
        (30.0, 15.0, 12.5, False),  # renew deadline <= 1.2 retry periods: one failed try loses
        (30.0, 15.0, 0.0, False),
        (30.0, 15.0, -1.0, False),
    ],
)
def test_timings_keep_client_gos_invariants(lease: float, renew: float, retry: float, valid: bool) -> None:
    if valid:
        assert ElectionSettings(lease, renew, retry).lease_duration == lease
    else:
        with pytest.raises(ConfigError, match="leader election"):
            ElectionSettings(lease, renew, retry)


def test_a_lease_duration_implies_istiods_proportions() -> None:
    assert ElectionSettings.from_lease_duration(30) == ElectionSettings(30.0, 15.0, 7.5)
    with pytest.raises(ConfigError):
        ElectionSettings.from_lease_duration(0)


FULL: dict[str, Any] = {
    "holderIdentity": "istiod-7d9f_0a1b",
    "leaseDurationSeconds": 30,
    "acquireTime": "2026-12-05T21:00:00.000000Z",
    "renewTime": "2026-12-05T21:00:07.500000Z",
    "leaseTransitions": 2,
}
TIMES = {"acquire_time": FULL["acquireTime"], "renew_time": FULL["renewTime"]}
HOLDER = "istiod-7d9f_0a1b"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (FULL, LeaseRecord(HOLDER, 30, transitions=2, **TIMES)),
        (None, LeaseRecord()),  # a Lease without a spec: free
        ({}, LeaseRecord()),
        ({**FULL, "leaseDurationSeconds": "30"}, LeaseRecord(HOLDER, 0, transitions=2, **TIMES)),
        ({**FULL, "leaseTransitions": True}, LeaseRecord(HOLDER, 30, transitions=0, **TIMES)),
        ({**FULL, "holderIdentity": 7}, LeaseRecord("", 30, transitions=2, **TIMES)),
        ("garbage", LeaseRecord()),
    ],
)
def test_a_lease_spec_reads_malformed_fields_as_zero_values(spec: Any, expected: LeaseRecord) -> None:
    record = LeaseRecord.from_spec(spec)
    assert record == expected
    if spec is FULL:
        assert record.spec() == FULL


def test_holder_identities_are_the_pod_name_and_differ_per_process() -> None:
    rng = random.Random(3)
    first, second = holder_identity("istiod-7d9f", rng), holder_identity("istiod-7d9f", rng)
    assert first.startswith("istiod-7d9f_") and second.startswith("istiod-7d9f_")
    assert first != second
    assert holder_identity("", rng).startswith("istiod_")
