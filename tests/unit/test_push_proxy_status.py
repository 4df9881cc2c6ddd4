"""meshctl proxy-status: the status rule and the table, from syncz documents."""

from __future__ import annotations

import argparse

import pytest

from meshctl.proxy_status import register, render, xds_status

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
