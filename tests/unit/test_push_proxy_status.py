"""meshctl proxy-status: the status rule and the table, from syncz documents."""

from __future__ import annotations

import argparse

import pytest

from meshctl.proxy_status import merge_syncz, register, render, xds_status

ADDR = "type.googleapis.com/istio.workload.Address"
AUTHZ = "type.googleapis.com/istio.security.Authorization"


@pytest.mark.parametrize(
    ("sent", "acked", "status"),
    [
        ("", "", "NOT SENT"),
        ("v/2", "v/2", "SYNCED"),
        ("v/2", "", "STALE (Never Acknowledged)"),
        ("v/3", "v/2", "STALE"),
    ],
)
def test_status_rule(sent: str, acked: str, status: str) -> None:
    assert xds_status(sent, acked) == status


def entry(type_url: str, sent: str, acked: str | None, nack: str | None = None) -> dict[str, object]:
    return {
        "type_url": type_url,
        "sent": {"version": sent, "nonce": "1", "at": None, "resources": 3},
        "acked": {"version": acked} if acked else None,
        "nacked": {"version": sent, "error": nack} if nack else None,
    }


def test_table_has_a_row_per_proxy_and_lists_nacks() -> None:
    doc = {
        "version": "2027-01-15T08:00:00Z/3",
        "subscribers": [
            {
                "pod": "ztunnel-a.istio-system",
                "node": "n1",
                "types": [entry(ADDR, "v3", "v3"), entry(AUTHZ, "v3", "v3")],
            },
            {
                "pod": "ztunnel-b.istio-system",
                "node": "n2",
                "types": [entry(ADDR, "v3", "v2", nack="w1: bad CIDR"), entry(AUTHZ, "", None)],
            },
        ],
    }
    lines = render(doc).splitlines()
    assert lines[0].split() == ["NAME", "NODE", "AUTHORIZATION", "ADDRESS", "VERSION"]
    assert lines[1].split() == ["ztunnel-a.istio-system", "n1", "SYNCED", "SYNCED", "v3"]
    assert lines[2].split() == ["ztunnel-b.istio-system", "n2", "NOT", "SENT", "STALE", "v3"]
    assert "istiod_lite version: 2027-01-15T08:00:00Z/3" in lines
    assert lines[-1].strip() == "ztunnel-b.istio-system ADDRESS v3: w1: bad CIDR"


def test_register_adds_the_subcommand() -> None:
    parser = argparse.ArgumentParser(prog="meshctl")
    register(parser.add_subparsers())
    args = parser.parse_args(["proxy-status", "--istiod", "http://10.0.0.1:15014"])
    assert args.istiod == "http://10.0.0.1:15014"
    assert args.func.__name__ == "run"


def test_replicas_documents_merge_with_the_replica_of_each_proxy() -> None:
    """Two istiod_lite replicas: every proxy appears once, with the replica it is connected to."""
    first = {
        "version": "v/3",
        "subscribers": [{"pod": "ztunnel-a", "node": "n1", "types": [entry(ADDR, "v3", "v3")]}],
    }
    second = {
        "version": "v/3",
        "subscribers": [{"pod": "ztunnel-b", "node": "n2", "types": [entry(ADDR, "v3", "v3")]}],
    }
    merged = merge_syncz({"http://10.240.0.2:15014": first, "http://10.240.0.3:15014": second})
    assert [(s["pod"], s["istiod"]) for s in merged["subscribers"]] == [
        ("ztunnel-a", "10.240.0.2"),
        ("ztunnel-b", "10.240.0.3"),
    ]
    lines = render(merged).splitlines()
    assert lines[0].split() == ["NAME", "NODE", "ISTIOD", "ADDRESS", "VERSION"]
    assert lines[2].split() == ["ztunnel-b", "n2", "10.240.0.3", "SYNCED", "v3"]
    assert merge_syncz({"http://10.240.0.2:15014": first}) == first  # one replica: as it is
